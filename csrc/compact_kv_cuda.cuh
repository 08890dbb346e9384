// CUDA compact_kv (docs/ops.md), framework-free: raw pointers and a stream; the adapter
// (compact_kv_cuda.cpp) checks the arguments. A path entry that does not increase or points
// past the cache ends that request's moves (no host sync to raise from): never an
// out-of-bounds write.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace bastion {

struct CompactKvParams {
  void* cache;                   // (G, B, H, L, D), element_bytes each
  const int64_t* cache_lens;     // (B,)
  const int32_t* accepted_nodes; // (B, P)
  const int32_t* accept_len;     // (B,)
  int64_t stacked, batch, heads, slots, head_dim;
  int positions;                 // P
  int element_bytes;             // 2 or 4
};

cudaError_t launch_compact_kv(const CompactKvParams& params, cudaStream_t stream);

}  // namespace bastion
