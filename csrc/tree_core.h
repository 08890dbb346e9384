// The CPU tree builder's framework-free core (docs/ops.md, build_tree steps 1-4):
// top-K + log-sum-exp of one logit row, best-first expansion over the lattice, the cut, and
// the tree's links and ancestor rows. Raw pointers and sizes only; the torch adapter
// (build_tree_cpu.cpp) checks arguments and loops over requests.
#pragma once

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "tree_limits.h"

namespace bastion {

// One draft position's candidates: the `count` largest logits (ties to the smaller token id)
// as fp32 log-probabilities, non-increasing.
struct RowCandidates {
  int64_t tokens[kMaxK];
  float logq[kMaxK];
  int32_t count;
};

// What a row scan can find wrong; the adapter turns it into an error naming draft_logits.
enum class RowStatus { kOk, kNonFinite, kAllNegInf };

// sum_i exp(x[i] - m) in fp64, for m >= max(x) (every exponent <= 0; -inf entries add 0).
// The exp is a branch-free polynomial that vectorises (AVX2 where the CPU has it), accurate to
// a few ulp of fp64: docs/ops.md rounds lse to fp32, which makes the result independent of the
// exp implementation and summation order (as for the GPU and the oracle).
double sum_exp_shifted(const float* x, int64_t n, double m);

// Top-k of one logit row and its fp32 log-probabilities. `row`: (vocab,) of T (float, at::Half
// or at::BFloat16, each widened exactly to fp32). Never sorts: one pass keeps a k-entry
// insertion buffer; a second pass sums exp in fp64 so the rounded lse does not depend on
// summation order (docs/ops.md step 1).
template <typename T>
RowStatus topk_logprobs(const T* row, int64_t vocab, int k, RowCandidates* out) {
  float best_val[kMaxK];
  int64_t best_tok[kMaxK];
  int filled = 0;
  float row_max = -std::numeric_limits<float>::infinity();
  for (int64_t v = 0; v < vocab; ++v) {
    const float x = static_cast<float>(row[v]);
    // NaN fails every comparison, so test for "not (finite or -inf)" explicitly.
    if (!(x < std::numeric_limits<float>::infinity())) return RowStatus::kNonFinite;
    if (x > row_max) row_max = x;
    // Scanning in id order, an equal logit has the larger id and so ranks after: strict >.
    if (filled < k || x > best_val[filled - 1]) {
      int slot = filled < k ? filled++ : k - 1;
      while (slot > 0 && best_val[slot - 1] < x) {
        best_val[slot] = best_val[slot - 1];
        best_tok[slot] = best_tok[slot - 1];
        --slot;
      }
      best_val[slot] = x;
      best_tok[slot] = v;
    }
  }
  if (row_max == -std::numeric_limits<float>::infinity()) return RowStatus::kAllNegInf;
  const double m = row_max;
  double sum = 0.0;
  if constexpr (std::is_same_v<T, float>) {
    sum = sum_exp_shifted(row, vocab, m);
  } else {
    float chunk[1024];  // widened to fp32 in chunks so one vectorised kernel serves every dtype
    for (int64_t start = 0; start < vocab; start += 1024) {
      const int64_t len = std::min<int64_t>(1024, vocab - start);
      for (int64_t i = 0; i < len; ++i) chunk[i] = static_cast<float>(row[start + i]);
      sum += sum_exp_shifted(chunk, len, m);
    }
  }
  const float lse = static_cast<float>(m + std::log(sum));
  out->count = 0;
  for (int r = 0; r < filled; ++r) {
    const float lq = best_val[r] - lse;
    if (lq == -std::numeric_limits<float>::infinity()) break;  // probability 0: no candidate
    out->tokens[r] = best_tok[r];
    out->logq[r] = lq;
    out->count = r + 1;
  }
  return RowStatus::kOk;
}

// A pending lattice node: ordered by larger score, then smaller push sequence number.
struct HeapEntry {
  float score;
  int32_t seq;
  int32_t parent;
  int32_t depth;
  int32_t rank;
};

// Best-first expansion (docs/ops.md step 2) of `cap` pops at most over `num_pos` positions.
// Writes node i's token, parent, depth and score at index i of the four arrays (each of at
// least `cap` entries); `heap` is scratch of at least cap + 1 entries. Returns `avail`.
int expand_lattice(const RowCandidates* cands, int num_pos, int cap, HeapEntry* heap,
                   int64_t* tokens, int32_t* parents, int32_t* depth, float* scores);

// The cut n in [1, avail] (docs/ops.md step 3). `latency`: T(n) at [n - 1], read only for
// non-fixed policies, at least `avail` entries.
int cut_pop_sequence(const float* scores, int avail, Policy policy, const float* latency,
                     float accept_scale);

// Links and ancestor rows of the first n nodes, padding for the rest (docs/ops.md step 4).
// parents: (n,) ; ancestor_bits: (max_nodes, words); first_child: (max_nodes + 1,);
// next_sibling: (max_nodes,). `last_child` is scratch of max_nodes + 1 entries.
void write_links_and_ancestors(const int32_t* parents, int n, int max_nodes, int words,
                               int32_t* ancestor_bits, int32_t* first_child,
                               int32_t* next_sibling, int32_t* last_child);

}  // namespace bastion
