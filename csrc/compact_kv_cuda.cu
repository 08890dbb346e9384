// CUDA kernel of bastion_ext::compact_kv: one block per (stacked, batch, head) row of the
// cache; each thread owns some head_dim columns and moves them along the accepted path in
// order (destinations precede their sources, so no synchronisation is needed).
#include "compact_kv_cuda.cuh"

namespace bastion {
namespace {

template <typename Element>
__global__ void compact_kv_kernel(CompactKvParams p) {
  const int64_t row = blockIdx.x;
  const int64_t b = (row / p.heads) % p.batch;
  Element* head = static_cast<Element*>(p.cache) + row * p.slots * p.head_dim;
  const int64_t cache_len = p.cache_lens[b];
  const int32_t length = p.accept_len[b];
  if (cache_len < 0 || length < 0 || length > p.positions) return;
  const int32_t* nodes = p.accepted_nodes + b * p.positions;
  int32_t previous = -1;
  for (int32_t j = 0; j < length; ++j) {
    const int32_t node = nodes[j];
    const int64_t source = cache_len + 1 + node;
    if (node <= previous || source >= p.slots) return;
    previous = node;
    if (node == j) continue;
    const int64_t dest = cache_len + 1 + j;
    for (int64_t d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
      head[dest * p.head_dim + d] = head[source * p.head_dim + d];
    }
  }
}

}  // namespace

cudaError_t launch_compact_kv(const CompactKvParams& params, cudaStream_t stream) {
  const int64_t rows = params.stacked * params.batch * params.heads;
  if (rows == 0) return cudaSuccess;
  const int threads = params.head_dim >= 128 ? 128 : 64;
  if (params.element_bytes == 2) {
    compact_kv_kernel<uint16_t><<<static_cast<unsigned>(rows), threads, 0, stream>>>(params);
  } else {
    compact_kv_kernel<uint32_t><<<static_cast<unsigned>(rows), threads, 0, stream>>>(params);
  }
  return cudaGetLastError();
}

}  // namespace bastion
