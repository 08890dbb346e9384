// CUDA kernels of verify_greedy and verify_sample; semantics in docs/ops.md, plan in
// verify_cuda.cuh.
#include <cub/block/block_scan.cuh>

#include "verify_cuda.cuh"

namespace bastion {
namespace {

constexpr int kWalkThreads = 128;
constexpr int kSampleThreads = 256;
constexpr int kSamplePerThread = 4;
constexpr int kSampleTile = kSampleThreads * kSamplePerThread;
constexpr int kNoSample = 0x7fffffff;

// A link is followed only if it points forward inside the tree; anything else ends the list.
__device__ __forceinline__ int checked_link(int link, int from, int max_nodes) {
  return (link > from && link < max_nodes) ? link : -1;
}

// One block per request. The tree's links go to shared memory; every children list is then
// matched against its parent's target token in parallel (one thread per list), so the
// sequential walk only reads shared flags.
__global__ void __launch_bounds__(kWalkThreads) walk_tree_kernel(VerifyParams prm,
                                                            const int64_t* __restrict__ target) {
  extern __shared__ __align__(16) char dynamic_shared[];
  const int n = prm.max_nodes;
  int16_t* first_child = reinterpret_cast<int16_t*>(dynamic_shared);  // (N + 1,)
  int16_t* next_sibling = first_child + (n + 1);                        // (N,)
  uint8_t* matches = reinterpret_cast<uint8_t*>(next_sibling + n);      // (N,)
  const int b = blockIdx.x;
  const int32_t* fc = prm.first_child + static_cast<size_t>(b) * (n + 1);
  const int32_t* ns = prm.next_sibling + static_cast<size_t>(b) * n;
  const int64_t* tokens = prm.tokens + static_cast<size_t>(b) * n;
  const int64_t* want = target + static_cast<size_t>(b) * (n + 1);

  for (int x = threadIdx.x; x <= n; x += blockDim.x) {
    first_child[x] = static_cast<int16_t>(checked_link(fc[x], x - 1, n));
    if (x < n) {
      next_sibling[x] = static_cast<int16_t>(checked_link(ns[x], x, n));
      matches[x] = 0;
    }
  }
  __syncthreads();
  for (int x = threadIdx.x; x <= n; x += blockDim.x) {
    const int head = first_child[x];
    if (head < 0) continue;
    const int64_t t = want[x];
    for (int c = head; c >= 0; c = next_sibling[c]) matches[c] = tokens[c] == t;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  int32_t* accepted = prm.accepted_nodes + static_cast<size_t>(b) * prm.positions;
  int cur = -1;
  int steps = 0;
  while (steps < prm.positions) {
    int c = first_child[cur + 1];
    while (c >= 0 && !matches[c]) c = next_sibling[c];
    if (c < 0) break;
    accepted[steps++] = c;
    cur = c;
  }
  for (int s = steps; s < prm.positions; ++s) accepted[s] = -1;
  prm.accept_len[b] = steps;
  prm.bonus[b] = want[cur + 1];
}

// One block per (request, verify index) row: the smallest v with fl32(cumsum(p)[v]) > u, else
// the last v with p > 0. The running sum is fp64 like the CPU op's; the block scans a tile at
// a time in fp64 (a different association than a serial loop, but fp64 keeps the rounded
// fp32 prefix the same except within ~1e-16 of a boundary) and stops at the first tile that
// crosses u.
__global__ void __launch_bounds__(kSampleThreads) sample_inverse_cdf_kernel(const float* __restrict__ probs,
                                                                int64_t vocab,
                                                                const float* __restrict__ uniforms,
                                                                int64_t* __restrict__ samples) {
  using BlockScan = cub::BlockScan<double, kSampleThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;
  __shared__ int first_above;
  __shared__ int last_positive;
  const int64_t row = blockIdx.x;
  const float* p = probs + row * vocab;
  const float u = uniforms[row];
  if (threadIdx.x == 0) {
    first_above = kNoSample;
    last_positive = -1;
  }
  double carry = 0.0;
  for (int64_t base = 0; base < vocab; base += kSampleTile) {
    // Read between two barriers, so every thread sees the same value before any atomicMin of
    // this tile: all threads stop together.
    __syncthreads();
    const bool found = first_above != kNoSample;
    __syncthreads();
    if (found) break;
    const int64_t v0 = base + static_cast<int64_t>(threadIdx.x) * kSamplePerThread;
    float pv[kSamplePerThread];
    double local = 0.0;
    int my_last = -1;
#pragma unroll
    for (int j = 0; j < kSamplePerThread; ++j) {
      pv[j] = v0 + j < vocab ? p[v0 + j] : 0.0f;
      local += pv[j];
      if (pv[j] > 0.0f) my_last = static_cast<int>(v0 + j);
    }
    double before = 0.0;
    double tile_total = 0.0;
    BlockScan(scan_storage).ExclusiveSum(local, before, tile_total);
    double run = carry + before;
#pragma unroll
    for (int j = 0; j < kSamplePerThread; ++j) {
      run += pv[j];
      if (v0 + j < vocab && __double2float_rn(run) > u) {
        atomicMin(&first_above, static_cast<int>(v0 + j));
        break;
      }
    }
    if (my_last >= 0) atomicMax(&last_positive, my_last);
    carry += tile_total;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    samples[row] = first_above != kNoSample ? min(first_above, last_positive) : last_positive;
  }
}

size_t walk_shared_bytes(int max_nodes) {
  return sizeof(int16_t) * (2 * max_nodes + 1) + sizeof(uint8_t) * max_nodes;
}

}  // namespace

cudaError_t launch_verify_greedy(const VerifyParams& prm, const int64_t* target, cudaStream_t stream) {
  walk_tree_kernel<<<prm.batch, kWalkThreads, walk_shared_bytes(prm.max_nodes), stream>>>(prm, target);
  return cudaGetLastError();
}

cudaError_t launch_verify_sample(const VerifyParams& prm, const float* target_probs, int64_t vocab,
                                 const float* uniforms, int64_t* samples, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(prm.batch) * (prm.max_nodes + 1);
  sample_inverse_cdf_kernel<<<static_cast<unsigned>(rows), kSampleThreads, 0, stream>>>(target_probs, vocab,
                                                                           uniforms, samples);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  return launch_verify_greedy(prm, samples, stream);
}

}  // namespace bastion
