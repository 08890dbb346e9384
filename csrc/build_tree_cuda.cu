// CUDA kernels of build_tree; see build_tree_cuda.cuh for the plan and docs/ops.md for the
// semantics every line here reproduces bit for bit. Floating-point steps that must round like
// the CPU op use the explicit _rn intrinsics (the build also passes --fmad=false).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "build_tree_cuda.cuh"
#include "tree_limits.h"
#include "sort_keys.cuh"

namespace bastion {
namespace {

constexpr int kScanThreads = 256;
constexpr int kScanPerThread = 4;
constexpr int kScanTile = kScanThreads * kScanPerThread;
// Candidate buffer of the scan: room for the kept top-k plus one whole tile of newcomers.
constexpr int kScanBuffer = 2048;
static_assert(kScanBuffer >= kMaxK + kScanTile, "scan buffer must hold k keys plus a tile");
constexpr int kMaxSplits = 8;
constexpr int kMinSliceLogits = 4096;

constexpr int kExpandThreads = 512;
constexpr int kWarps = kExpandThreads / 32;
// Ancestor words a lane keeps in registers: ceil(kMaxNodes / 32) words over 32 lanes.
constexpr int kWordsPerLane = (kMaxNodes / 32 + 31) / 32;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// (max, sum exp(x - max)) pairs in fp64; combining rescales the smaller side's sum.
struct LseAcc {
  float max;
  double sum;
};

__device__ __forceinline__ LseAcc combine(LseAcc a, LseAcc b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.0};
  const double sa = a.max == -INFINITY ? 0.0 : a.sum * exp(static_cast<double>(a.max) - m);
  const double sb = b.max == -INFINITY ? 0.0 : b.sum * exp(static_cast<double>(b.max) - m);
  return {m, sa + sb};
}

// Workspace views: per (row, split) the slice's sorted top-k keys, its lse pair and whether
// it saw NaN / +inf. row = b * positions + p.
struct ScanWorkspace {
  double* sum;
  uint64_t* keys;
  float* max;
  int32_t* bad;
};

__host__ __device__ inline size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

__host__ __device__ inline ScanWorkspace scan_workspace(void* base, int rows, int splits) {
  const size_t slots = static_cast<size_t>(rows) * splits;
  char* p = static_cast<char*>(base);
  ScanWorkspace ws;
  ws.sum = reinterpret_cast<double*>(p);
  p += align16(slots * sizeof(double));
  ws.keys = reinterpret_cast<uint64_t*>(p);
  p += align16(slots * kMaxK * sizeof(uint64_t));
  ws.max = reinterpret_cast<float*>(p);
  p += align16(slots * sizeof(float));
  ws.bad = reinterpret_cast<int32_t*>(p);
  return ws;
}

// Keeps the k largest of keys[0, *count) sorted at the front and raises the admission
// threshold to the k-th of them. Called by the whole block.
__device__ void compact_candidates(uint64_t* keys, int* count, uint64_t* threshold, int k) {
  __syncthreads();
  const int n = *count;
  int size = 1;
  while (size < n) size <<= 1;
  for (int i = n + threadIdx.x; i < size; i += blockDim.x) keys[i] = 0;
  bitonic_sort_desc(keys, size);
  if (threadIdx.x == 0) {
    *count = min(n, k);
    if (n >= k) *threshold = keys[k - 1];
  }
  __syncthreads();
}

// One slice of one logit row: fp64 lse pair, top-k keys, NaN / +inf flag.
// grid: (rows, splits); block: kScanThreads.
template <typename T>
__global__ void __launch_bounds__(kScanThreads) topk_scan_kernel(const T* __restrict__ logits,
                                                                int64_t vocab, int k, int splits,
                                                                ScanWorkspace ws) {
  __shared__ uint64_t keys[kScanBuffer];
  __shared__ int count;
  __shared__ uint64_t threshold;
  __shared__ LseAcc warp_acc[kScanThreads / 32];
  __shared__ int any_bad;

  const int64_t row = blockIdx.x;
  const int split = blockIdx.y;
  const int64_t slice = (vocab + splits - 1) / splits;
  const int64_t lo = split * slice;
  const int64_t hi = min(vocab, lo + slice);
  const T* x = logits + row * vocab;
  if (threadIdx.x == 0) {
    count = 0;
    threshold = 0;
    any_bad = 0;
  }
  __syncthreads();

  LseAcc acc{-INFINITY, 0.0};
  bool bad = false;
  for (int64_t base = lo; base < hi; base += kScanTile) {
    // Every thread must see the same fill level before any adds to it: read, then barrier.
    const int filled = count;
    __syncthreads();
    if (filled > kScanBuffer - kScanTile) compact_candidates(keys, &count, &threshold, k);
    const uint64_t admit_above = threshold;
#pragma unroll
    for (int j = 0; j < kScanPerThread; ++j) {
      const int64_t v = base + j * kScanThreads + threadIdx.x;
      if (v >= hi) break;
      const float xv = to_float(x[v]);
      // NaN fails every comparison: "not below +inf" catches NaN and +inf together.
      if (!(xv < INFINITY)) {
        bad = true;
        continue;
      }
      if (xv == -INFINITY) continue;  // probability 0: neither in the sum nor a candidate
      if (xv > acc.max) {
        acc.sum = acc.sum * exp(static_cast<double>(acc.max) - xv) + 1.0;
        acc.max = xv;
      } else {
        acc.sum += exp(static_cast<double>(xv) - acc.max);
      }
      const uint64_t key = make_key(xv, static_cast<uint32_t>(v));
      if (key > admit_above) keys[atomicAdd(&count, 1)] = key;
    }
    __syncthreads();
  }
  compact_candidates(keys, &count, &threshold, k);

  for (int off = 16; off > 0; off >>= 1) {
    LseAcc other;
    other.max = __shfl_down_sync(0xffffffffu, acc.max, off);
    other.sum = __shfl_down_sync(0xffffffffu, acc.sum, off);
    acc = combine(acc, other);
  }
  if ((threadIdx.x & 31) == 0) warp_acc[threadIdx.x / 32] = acc;
  if (bad) atomicOr(&any_bad, 1);
  __syncthreads();

  const size_t slot = static_cast<size_t>(row) * splits + split;
  if (threadIdx.x == 0) {
    LseAcc total = warp_acc[0];
    for (int w = 1; w < kScanThreads / 32; ++w) total = combine(total, warp_acc[w]);
    ws.max[slot] = total.max;
    ws.sum[slot] = total.sum;
    ws.bad[slot] = any_bad;
  }
  for (int r = threadIdx.x; r < k; r += blockDim.x) {
    ws.keys[slot * kMaxK + r] = r < count ? keys[r] : 0;
  }
}

// Dynamic shared memory of expand_kernel. Phases reuse one region: first the merge buffers;
// then the pending entries (heap + payload) next to the node arrays; after the expansion the
// same front part holds the cut's scratch, then the ancestor chains of write_outputs.
struct ExpandShared {
  uint64_t* merge_keys;  // (positions, splits, k) copies of the slices' keys
  uint64_t* heap;        // (N + 1,) keys; after the expansion: (2N,) fp32 for the cut
  uint32_t* payload;     // (2N + 1,) per push sequence number: parent + 1, depth, rank
  int16_t* chains;       // (warps, 32, positions): parent chains of 32 rows per warp
  float* node_score;     // (N,)
  int16_t* node_parent;  // (N,)
  int16_t* node_slot;    // (N,) depth << 8 | rank
  int16_t* first_child;  // (N + 1,)
  int16_t* next_sibling; // (N,)
  int16_t* last_child;   // (N + 1,)
};

// Bytes of the front part: pending entries, or the ancestor chains if larger.
__host__ __device__ inline size_t front_bytes(int n, int positions) {
  const size_t pending = align16(sizeof(uint64_t) * (n + 1)) + align16(sizeof(uint32_t) * (2 * n + 1));
  const size_t chains = align16(sizeof(int16_t) * kWarps * 32 * positions);
  return pending > chains ? pending : chains;
}

__host__ __device__ inline size_t tree_region_bytes(int n, int positions) {
  return front_bytes(n, positions) + align16(sizeof(float) * n) + 5 * align16(sizeof(int16_t) * (n + 1));
}

__device__ inline ExpandShared expand_shared(char* base, int n, int positions) {
  ExpandShared s;
  s.merge_keys = reinterpret_cast<uint64_t*>(base);
  s.heap = reinterpret_cast<uint64_t*>(base);
  s.payload = reinterpret_cast<uint32_t*>(base + align16(sizeof(uint64_t) * (n + 1)));
  s.chains = reinterpret_cast<int16_t*>(base);
  base += front_bytes(n, positions);
  s.node_score = reinterpret_cast<float*>(base);
  base += align16(sizeof(float) * n);
  int16_t** shorts[] = {&s.node_parent, &s.node_slot, &s.first_child, &s.next_sibling,
                        &s.last_child};
  for (int16_t** arr : shorts) {
    *arr = reinterpret_cast<int16_t*>(base);
    base += align16(sizeof(int16_t) * (n + 1));
  }
  return s;
}

// Number of keys in list[0, k) (sorted descending) greater than `key`.
__device__ __forceinline__ int count_greater(const uint64_t* list, int k, uint64_t key) {
  int lo = 0;
  int hi = k;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (list[mid] > key) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// Step 1's merge: each position's top-k over all slices (a key's rank is its index in its
// slice plus the keys above it in the other slices), lse from the slices' pairs, logq.
// Writes cand_key / logq / cand_count; returns through *bad whether the request is invalid.
__device__ void topk_logprobs(const BuildTreeParams& prm, const ScanWorkspace& ws, int b,
                                uint64_t* merge_keys, uint64_t (*cand_key)[kMaxK],
                                float (*logq)[kMaxK], int* cand_count, int* bad) {
  const int k = prm.k;
  const int splits = prm.splits;
  const int per_pos = splits * k;
  const size_t first_slot = static_cast<size_t>(b) * prm.positions * splits;
  for (int i = threadIdx.x; i < prm.positions * per_pos; i += blockDim.x) {
    const int slot = i / k;
    merge_keys[i] = ws.keys[(first_slot + slot) * kMaxK + i % k];
  }
  for (int i = threadIdx.x; i < prm.positions * kMaxK; i += blockDim.x) {
    cand_key[i / kMaxK][i % kMaxK] = 0;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < prm.positions * per_pos; i += blockDim.x) {
    const uint64_t key = merge_keys[i];
    if (key == 0) continue;
    const int p = i / per_pos;
    const int split = (i % per_pos) / k;
    int rank = i % k;
    for (int t = 0; t < splits && rank < k; ++t) {
      if (t != split) rank += count_greater(merge_keys + p * per_pos + t * k, k, key);
    }
    if (rank < k) cand_key[p][rank] = key;
  }
  __syncthreads();
  for (int p = threadIdx.x; p < prm.positions; p += blockDim.x) {
    LseAcc acc{-INFINITY, 0.0};
    int row_bad = 0;
    for (int t = 0; t < splits; ++t) {
      const size_t slot = first_slot + static_cast<size_t>(p) * splits + t;
      acc = combine(acc, LseAcc{ws.max[slot], ws.sum[slot]});
      row_bad |= ws.bad[slot];
    }
    if (row_bad || acc.max == -INFINITY) atomicOr(bad, 1);
    const float lse = __double2float_rn(static_cast<double>(acc.max) + log(acc.sum));
    int count = 0;
    for (int r = 0; r < k && cand_key[p][r] != 0; ++r) {
      const float lq = __fsub_rn(key_value(cand_key[p][r]), lse);
      if (lq == -INFINITY) break;
      logq[p][r] = lq;
      count = r + 1;
    }
    cand_count[p] = count;
  }
  __syncthreads();
}

// 4-ary max-heap of distinct 64-bit keys in shared memory, driven by one thread. Four
// children per node halve the levels a pop walks down, and their four loads are independent,
// so a level costs about one shared-memory latency.
struct KeyHeap {
  uint64_t* keys;
  int size;

  __device__ void push(uint64_t key) {
    int i = size++;
    while (i > 0) {
      const int up = (i - 1) >> 2;
      if (keys[up] > key) break;
      keys[i] = keys[up];
      i = up;
    }
    keys[i] = key;
  }

  __device__ uint64_t pop() {
    const uint64_t top = keys[0];
    const uint64_t last = keys[--size];
    int i = 0;
    while (true) {
      const int first = 4 * i + 1;
      if (first >= size) break;
      int best = first;
      uint64_t best_key = keys[first];
#pragma unroll
      for (int c = first + 1; c < first + 4; ++c) {
        if (c < size && keys[c] > best_key) {
          best_key = keys[c];
          best = c;
        }
      }
      if (best_key < last) break;
      keys[i] = best_key;
      i = best;
    }
    if (size > 0) keys[i] = last;
    return top;
  }
};

// Step 2, one thread: best-first expansion. Pending entries are 64-bit keys (score, ~seq)
// with (parent, depth, rank) in payload[seq]; they sit in a heap plus one slot in a register
// that keeps the larger of the latest pushes. The next pop is the larger of that slot and the
// heap's top, which is exact (keys are distinct) and skips the heap whenever a fresh child
// or sibling is the best entry, as it often is along a confident draft. Records each node
// and its first-child / next-sibling links; returns avail.
__device__ int expand_lattice(const ExpandShared& s, const float (*logq)[kMaxK],
                              const int* cand_count, int positions, int cap) {
  KeyHeap heap{s.heap, 0};
  uint64_t slot = 0;  // 0: empty (no real key is 0)
  uint32_t seq = 0;
  auto push = [&](int parent, int d, int rank, float base) {
    if (rank >= cand_count[d - 1]) return;
    const uint64_t key = make_key(__fadd_rn(base, logq[d - 1][rank]), seq);
    s.payload[seq] = static_cast<uint32_t>(parent + 1) | (static_cast<uint32_t>(d) << 13) |
                     (static_cast<uint32_t>(rank) << 19);
    ++seq;
    if (slot == 0) {
      slot = key;
    } else {
      heap.push(min(slot, key));
      slot = max(slot, key);
    }
  };
  push(-1, 1, 0, 0.0f);
  int n = 0;
  while ((slot != 0 || heap.size > 0) && n < cap) {
    uint64_t top;
    if (heap.size == 0 || slot > heap.keys[0]) {
      top = slot;
      slot = 0;
    } else {
      top = heap.pop();
    }
    const uint32_t info = s.payload[key_id(top)];
    const int parent = static_cast<int>(info & 0x1fffu) - 1;
    const int d = (info >> 13) & 0x3f;
    const int rank = (info >> 19) & 0x3f;
    const float score = key_value(top);
    s.node_score[n] = score;
    s.node_parent[n] = static_cast<int16_t>(parent);
    s.node_slot[n] = static_cast<int16_t>((d << 8) | rank);
    const int prev = s.last_child[parent + 1];
    if (prev < 0) s.first_child[parent + 1] = static_cast<int16_t>(n); else s.next_sibling[prev] = static_cast<int16_t>(n);
    s.last_child[parent + 1] = static_cast<int16_t>(n);
    // Pushes after the last pop could never be popped: skip them.
    if (n + 1 < cap) {
      if (d < positions) push(n, d + 1, 0, score);
      push(parent, d, rank + 1, parent < 0 ? 0.0f : s.node_score[parent]);
    }
    ++n;
  }
  return n;
}

// Step 3: the cut for the greedy_stop / argmax policies. `gain` and `speedup` are scratch of
// avail floats each. Called by the whole block; returns n in [1, avail].
__device__ int cut_pop_sequence(const BuildTreeParams& prm, int b, const float* node_score, int avail,
                              float* gain, float* speedup, int* shared_int, float* shared_float) {
  for (int i = threadIdx.x; i < avail; i += blockDim.x) {
    gain[i] = __double2float_rn(exp(static_cast<double>(node_score[i])));
  }
  __syncthreads();
  // A(n) is an fp32 sum in pop order: sequential on purpose, parallel sums round differently.
  if (threadIdx.x == 0) {
    float acc = 0.0f;
    for (int i = 0; i < avail; ++i) {
      acc = __fadd_rn(acc, gain[i]);
      gain[i] = acc;
    }
    *shared_int = avail;
    *shared_float = -INFINITY;
  }
  __syncthreads();
  const float scale = prm.accept_scale ? prm.accept_scale[prm.accept_rows > 1 ? b : 0] : 1.0f;
  const float* latency = prm.latency_table + static_cast<size_t>(prm.latency_rows > 1 ? b : 0) * prm.max_nodes;
  float best = -INFINITY;
  for (int i = threadIdx.x; i < avail; i += blockDim.x) {
    speedup[i] = __fdiv_rn(__fadd_rn(1.0f, __fmul_rn(scale, gain[i])), latency[i]);
    best = fmaxf(best, speedup[i]);
  }
  __syncthreads();
  if (prm.policy == static_cast<int>(Policy::kGreedyStop)) {
    for (int i = 1 + threadIdx.x; i < avail; i += blockDim.x) {
      if (speedup[i] < speedup[i - 1]) atomicMin(shared_int, i);
    }
    __syncthreads();
    return *shared_int;
  }
  for (int off = 16; off > 0; off >>= 1) best = fmaxf(best, __shfl_down_sync(0xffffffffu, best, off));
  // Speedups are positive, so their fp32 bits order like their values.
  if ((threadIdx.x & 31) == 0) atomicMax(reinterpret_cast<int*>(shared_float), __float_as_int(best));
  __syncthreads();
  const float top = *shared_float;
  for (int i = threadIdx.x; i < avail; i += blockDim.x) {
    if (speedup[i] == top) atomicMin(shared_int, i + 1);
  }
  __syncthreads();
  return *shared_int;
}

// Step 4: every output element of request b; nodes >= cut are padding.
__device__ void write_outputs(const BuildTreeParams& prm, const ExpandShared& s,
                              const uint64_t (*cand_key)[kMaxK], int b, int cut) {
  const int n_max = prm.max_nodes;
  const size_t row = static_cast<size_t>(b) * n_max;
  const int64_t ctx = prm.context_lens[b];
  for (int i = threadIdx.x; i < n_max; i += blockDim.x) {
    if (i < cut) {
      const int d = s.node_slot[i] >> 8;
      const int rank = s.node_slot[i] & 0xff;
      const int sib = s.next_sibling[i];
      prm.tokens[row + i] = key_id(cand_key[d - 1][rank]);
      prm.parents[row + i] = s.node_parent[i];
      prm.depth[row + i] = d;
      prm.positions_out[row + i] = ctx + d;
      prm.scores[row + i] = s.node_score[i];
      prm.next_sibling[row + i] = sib < cut ? sib : -1;
    } else {
      prm.tokens[row + i] = -1;
      prm.parents[row + i] = -1;
      prm.depth[row + i] = 0;
      prm.positions_out[row + i] = -1;
      prm.scores[row + i] = -INFINITY;
      prm.next_sibling[row + i] = -1;
    }
  }
  for (int x = threadIdx.x; x <= n_max; x += blockDim.x) {
    const int child = x <= cut ? s.first_child[x] : -1;
    prm.first_child[static_cast<size_t>(b) * (n_max + 1) + x] = child < cut ? child : -1;
  }
  // Ancestor rows, 32 at a time per warp. Lane l walks the parent chain of row base + l into
  // its list in `chains` (32 pointer chases overlap instead of running one after another);
  // then the warp writes the 32 rows, lane l owning words l, l + 32, ... so stores coalesce.
  const int lane = threadIdx.x & 31;
  const int words = prm.words;
  const int depth_cap = prm.positions;
  int16_t* lists = s.chains + (threadIdx.x / 32) * 32 * depth_cap;
  for (int base = threadIdx.x / 32 * 32; base < n_max; base += kWarps * 32) {
    int len = 0;
    for (int j = base + lane < cut ? base + lane : -1; j >= 0; j = s.node_parent[j]) {
      lists[lane * depth_cap + len++] = static_cast<int16_t>(j);
    }
    __syncwarp();
    for (int r = 0; r < 32 && base + r < n_max; ++r) {
      const int row_len = __shfl_sync(0xffffffffu, len, r);
      uint32_t bits[kWordsPerLane] = {};
      for (int t = 0; t < row_len; ++t) {
        const int j = lists[r * depth_cap + t];
#pragma unroll
        for (int w = 0; w < kWordsPerLane; ++w) {
          if ((j >> 5) == lane + 32 * w) bits[w] |= 1u << (j & 31);
        }
      }
      int32_t* out = prm.ancestor_bits + (row + base + r) * words;
#pragma unroll
      for (int w = 0; w < kWordsPerLane; ++w) {
        if (lane + 32 * w < words) out[lane + 32 * w] = static_cast<int32_t>(bits[w]);
      }
    }
    __syncwarp();
  }
}

// One block per request: merge, expand, cut, write. grid: (batch,); block: kExpandThreads.
__global__ void __launch_bounds__(kExpandThreads) expand_kernel(BuildTreeParams prm, ScanWorkspace ws) {
  extern __shared__ __align__(16) char dynamic_shared[];
  __shared__ uint64_t cand_key[kMaxPositions][kMaxK];
  __shared__ float logq[kMaxPositions][kMaxK];
  __shared__ int cand_count[kMaxPositions];
  __shared__ int bad;
  __shared__ int avail;
  __shared__ int cut_int;
  __shared__ float cut_float;

  const int b = blockIdx.x;
  const int n_max = prm.max_nodes;
  if (threadIdx.x == 0) bad = 0;
  __syncthreads();
  const ExpandShared s = expand_shared(dynamic_shared, n_max, prm.positions);
  topk_logprobs(prm, ws, b, s.merge_keys, cand_key, logq, cand_count, &bad);

  // merge_keys may overlap every tree array; the merge's last barrier has passed, so the
  // tree arrays may be initialised now.
  for (int i = threadIdx.x; i <= n_max; i += blockDim.x) {
    s.first_child[i] = -1;
    s.last_child[i] = -1;
    if (i < n_max) s.next_sibling[i] = -1;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int cap = min(max(prm.budgets[b], 1), n_max);
    avail = bad ? 0 : expand_lattice(s, logq, cand_count, prm.positions, cap);
  }
  __syncthreads();
  int cut = avail;
  if (cut > 0 && prm.policy != static_cast<int>(Policy::kFixed)) {
    float* scratch = reinterpret_cast<float*>(s.heap);
    cut = cut_pop_sequence(prm, b, s.node_score, cut, scratch, scratch + n_max, &cut_int, &cut_float);
  }
  if (threadIdx.x == 0) prm.n_nodes[b] = cut;
  write_outputs(prm, s, cand_key, b, cut);
}

template <typename T>
void launch_topk_scan(const BuildTreeParams& prm, const ScanWorkspace& ws, cudaStream_t stream) {
  const dim3 grid(prm.batch * prm.positions, prm.splits);
  topk_scan_kernel<T><<<grid, kScanThreads, 0, stream>>>(static_cast<const T*>(prm.draft_logits),
                                                        prm.vocab, prm.k, prm.splits, ws);
}

// Above 48 KiB of dynamic shared memory a kernel must opt in (a host-side attribute, legal
// during graph capture). The opt-in only ever grows, per device, under a lock, so that
// concurrent callers with different tree sizes cannot lower it under each other's launch.
cudaError_t opt_in_shared_memory(size_t bytes) {
  constexpr size_t kDefaultLimit = 48 * 1024;
  constexpr int kMaxDevices = 64;
  static std::mutex mutex;
  static size_t opted_in[kMaxDevices] = {};
  if (bytes <= kDefaultLimit) return cudaSuccess;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < 0 || device >= kMaxDevices) return cudaErrorInvalidDevice;
  const std::lock_guard<std::mutex> lock(mutex);
  if (bytes <= opted_in[device]) return cudaSuccess;
  err = cudaFuncSetAttribute(expand_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(bytes));
  if (err == cudaSuccess) opted_in[device] = bytes;
  return err;
}

}  // namespace

int choose_row_splits(int batch, int positions, int64_t vocab, int num_sms) {
  const int64_t rows = static_cast<int64_t>(batch) * positions;
  int64_t splits = (2 * static_cast<int64_t>(num_sms) + rows - 1) / rows;
  splits = std::min<int64_t>(splits, (vocab + kMinSliceLogits - 1) / kMinSliceLogits);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(splits, kMaxSplits)));
}

size_t build_tree_workspace_bytes(int batch, int positions, int splits) {
  const size_t slots = static_cast<size_t>(batch) * positions * splits;
  return align16(slots * sizeof(double)) + align16(slots * kMaxK * sizeof(uint64_t)) +
         align16(slots * sizeof(float)) + align16(slots * sizeof(int32_t));
}

size_t expand_shared_bytes(int max_nodes, int positions, int splits, int k) {
  const size_t merge = sizeof(uint64_t) * positions * splits * k;
  return std::max(merge, tree_region_bytes(max_nodes, positions));
}

cudaError_t launch_build_tree(const BuildTreeParams& prm, cudaStream_t stream) {
  if (prm.splits < 1 || prm.splits > kMaxSplits || prm.k < 1 || prm.k > kMaxK ||
      prm.positions < 1 || prm.positions > kMaxPositions || prm.max_nodes < 1 ||
      prm.max_nodes > kMaxNodes) {
    return cudaErrorInvalidValue;
  }
  const ScanWorkspace ws = scan_workspace(prm.workspace, prm.batch * prm.positions, prm.splits);
  switch (prm.logit_dtype) {
    case LogitDType::kFloat32: launch_topk_scan<float>(prm, ws, stream); break;
    case LogitDType::kFloat16: launch_topk_scan<__half>(prm, ws, stream); break;
    case LogitDType::kBFloat16: launch_topk_scan<__nv_bfloat16>(prm, ws, stream); break;
    default: return cudaErrorInvalidValue;
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const size_t shared = expand_shared_bytes(prm.max_nodes, prm.positions, prm.splits, prm.k);
  err = opt_in_shared_memory(shared);
  if (err != cudaSuccess) return err;
  expand_kernel<<<prm.batch, kExpandThreads, shared, stream>>>(prm, ws);
  return cudaGetLastError();
}

}  // namespace bastion
