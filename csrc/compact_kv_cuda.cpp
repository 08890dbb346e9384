// CUDA backend of bastion_ext::compact_kv: the torch adapter around compact_kv_cuda.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "compact_kv.h"
#include "compact_kv_cuda.cuh"

namespace bastion {
namespace {

void compact_kv_cuda(at::Tensor& cache, const at::Tensor& cache_lens, const at::Tensor& accepted_nodes,
                     const at::Tensor& accept_len) {
  check_compact_kv_args(cache, cache_lens, accepted_nodes, accept_len);
  TORCH_CHECK_VALUE(cache.size(0) * cache.size(1) * cache.size(2) < INT32_MAX,
                    "cache has too many rows for one launch, got shape ", shape_str(cache));
  const c10::cuda::CUDAGuard guard(cache.device());
  const auto lens = cache_lens.contiguous();
  const auto nodes = accepted_nodes.contiguous();
  const auto length = accept_len.contiguous();
  CompactKvParams prm{};
  prm.cache = cache.data_ptr();
  prm.cache_lens = lens.data_ptr<int64_t>();
  prm.accepted_nodes = nodes.data_ptr<int32_t>();
  prm.accept_len = length.data_ptr<int32_t>();
  prm.stacked = cache.size(0);
  prm.batch = cache.size(1);
  prm.heads = cache.size(2);
  prm.slots = cache.size(3);
  prm.head_dim = cache.size(4);
  prm.positions = static_cast<int>(nodes.size(1));
  prm.element_bytes = static_cast<int>(cache.element_size());
  const cudaError_t err = launch_compact_kv(prm, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "compact_kv CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace

TORCH_LIBRARY_IMPL(bastion_ext, CUDA, m) { m.impl("compact_kv", &compact_kv_cuda); }

}  // namespace bastion
