#include "tree_core.h"

#include <algorithm>
#include <cstring>

namespace bastion {
namespace {

inline bool pops_before(const HeapEntry& a, const HeapEntry& b) {
  return a.score > b.score || (a.score == b.score && a.seq < b.seq);
}

// A binary max-heap over pops_before; std::push_heap would do, but its ordering on equal keys
// is not ours to rely on, and the seq tie-break makes every key distinct anyway.
class PopHeap {
 public:
  explicit PopHeap(HeapEntry* storage) : data_(storage) {}
  bool empty() const { return size_ == 0; }

  void push(const HeapEntry& e) {
    int i = size_++;
    while (i > 0) {
      const int up = (i - 1) / 2;
      if (!pops_before(e, data_[up])) break;
      data_[i] = data_[up];
      i = up;
    }
    data_[i] = e;
  }

  HeapEntry pop() {
    const HeapEntry top = data_[0];
    const HeapEntry last = data_[--size_];
    int i = 0;
    while (true) {
      int child = 2 * i + 1;
      if (child >= size_) break;
      if (child + 1 < size_ && pops_before(data_[child + 1], data_[child])) ++child;
      if (!pops_before(data_[child], last)) break;
      data_[i] = data_[child];
      i = child;
    }
    if (size_ > 0) data_[i] = last;
    return top;
  }

 private:
  HeapEntry* data_;
  int size_ = 0;
};

// exp(t) for t <= 0 (or -inf): e^t = 2^k * e^r, k = round(t / ln 2), |r| <= ln2 / 2, e^r by its
// Taylor series to r^13 (truncation < 1e-17 relative). Exponents below -708 give 0: such a term
// is under half an ulp of a sum that contains exp(0) = 1, so dropping it changes nothing.
inline double exp_nonpositive(double t) {
  constexpr double kRoundShift = 0x1.8p52;  // adding it rounds to an integer held in the low bits
  constexpr double kLn2Hi = 6.93147180369123816490e-01;  // ln 2 split so that k * hi is exact
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  const double clamped = t < -708.0 ? -708.0 : t;
  const double shifted = clamped * 1.4426950408889634 + kRoundShift;
  const double k = shifted - kRoundShift;
  const double r = (clamped - k * kLn2Hi) - k * kLn2Lo;
  double p = 1.0 / 6227020800.0;  // 1 / 13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  int64_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  const int64_t scale_bits = (bits - 0x4338000000000000LL + 1023) << 52;  // 2^k, k in [-1021, 0]
  double scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return t < -708.0 ? 0.0 : p * scale;
}

}  // namespace

__attribute__((target_clones("avx2", "default")))
double sum_exp_shifted(const float* x, int64_t n, double m) {
  // Independent lanes (not one running sum) so the loop vectorises without reassociation.
  constexpr int kLanes = 8;
  double lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] += exp_nonpositive(static_cast<double>(x[i + j]) - m);
  }
  double total = 0.0;
  for (; i < n; ++i) total += exp_nonpositive(static_cast<double>(x[i]) - m);
  for (int j = 0; j < kLanes; ++j) total += lanes[j];
  return total;
}

int expand_lattice(const RowCandidates* cands, int num_pos, int cap, HeapEntry* heap_storage,
                   int64_t* tokens, int32_t* parents, int32_t* depth, float* scores) {
  PopHeap heap(heap_storage);
  int32_t seq = 0;
  auto push = [&](int32_t parent, int32_t d, int32_t rank) {
    if (rank >= cands[d - 1].count) return;
    const float base = parent < 0 ? 0.0f : scores[parent];
    heap.push({base + cands[d - 1].logq[rank], seq++, parent, d, rank});
  };
  push(-1, 1, 0);
  int n = 0;
  while (!heap.empty() && n < cap) {
    const HeapEntry e = heap.pop();
    tokens[n] = cands[e.depth - 1].tokens[e.rank];
    parents[n] = e.parent;
    depth[n] = e.depth;
    scores[n] = e.score;
    if (e.depth < num_pos) push(n, e.depth + 1, 0);
    push(e.parent, e.depth, e.rank + 1);
    ++n;
  }
  return n;
}

int cut_pop_sequence(const float* scores, int avail, Policy policy, const float* latency,
                     float accept_scale) {
  if (policy == Policy::kFixed) return avail;
  float accepted = 0.0f;  // A(n), accumulated in fp32 in pop order
  float prev_speedup = 0.0f;
  float best_speedup = 0.0f;
  int best_n = 0;
  for (int n = 1; n <= avail; ++n) {
    accepted += static_cast<float>(std::exp(static_cast<double>(scores[n - 1])));
    const float gain = 1.0f + accept_scale * accepted;
    const float speedup = gain / latency[n - 1];
    if (policy == Policy::kGreedyStop) {
      if (n > 1 && speedup < prev_speedup) return n - 1;
    } else if (n == 1 || speedup > best_speedup) {
      best_speedup = speedup;
      best_n = n;
    }
    prev_speedup = speedup;
  }
  return policy == Policy::kGreedyStop ? avail : best_n;
}

void write_links_and_ancestors(const int32_t* parents, int n, int max_nodes, int words,
                               int32_t* ancestor_bits, int32_t* first_child,
                               int32_t* next_sibling, int32_t* last_child) {
  std::fill(first_child, first_child + max_nodes + 1, -1);
  std::fill(next_sibling, next_sibling + max_nodes, -1);
  std::fill(last_child, last_child + max_nodes + 1, -1);
  for (int i = 0; i < n; ++i) {
    const int32_t parent = parents[i];
    int32_t* row = ancestor_bits + static_cast<int64_t>(i) * words;
    // A parent pops before its child, so its row is final: row(i) = row(parent) | bit i.
    if (parent < 0) {
      std::memset(row, 0, sizeof(int32_t) * words);
    } else {
      std::memcpy(row, ancestor_bits + static_cast<int64_t>(parent) * words, sizeof(int32_t) * words);
    }
    row[i / 32] = static_cast<int32_t>(static_cast<uint32_t>(row[i / 32]) | (1u << (i % 32)));
    const int32_t prev = last_child[parent + 1];
    if (prev < 0) {
      first_child[parent + 1] = i;
    } else {
      next_sibling[prev] = i;
    }
    last_child[parent + 1] = i;
  }
  std::memset(ancestor_bits + static_cast<int64_t>(n) * words, 0,
              sizeof(int32_t) * static_cast<size_t>(max_nodes - n) * words);
}

}  // namespace bastion
