// Argument checks of bastion_ext::compact_kv shared by the CPU and CUDA adapters (shapes,
// dtypes, devices; no tensor data is read here). Errors are ValueError in Python.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "checks.h"

namespace bastion {

// cache: (G, B, H, L, D) float, contiguous (G = every layer's keys and values, stacked);
// cache_lens: (B,) int64; accepted_nodes: (B, P) int32; accept_len: (B,) int32.
inline void check_compact_kv_args(const at::Tensor& cache, const at::Tensor& cache_lens,
                                  const at::Tensor& accepted_nodes, const at::Tensor& accept_len) {
  TORCH_CHECK_VALUE(cache.dim() == 5,
                    "cache must be 5-D [stacked, batch, kv_heads, slots, head_dim], got shape ",
                    shape_str(cache));
  const auto dt = cache.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
                    "cache must be float32, float16 or bfloat16, got ", c10::toString(dt));
  TORCH_CHECK_VALUE(cache.is_contiguous(), "cache must be contiguous");
  const int64_t batch = cache.size(1);
  TORCH_CHECK_VALUE(cache_lens.dim() == 1 && cache_lens.size(0) == batch,
                    "cache_lens must have shape [batch] = (", batch, ",), got shape ",
                    shape_str(cache_lens));
  TORCH_CHECK_VALUE(cache_lens.scalar_type() == at::kLong, "cache_lens must be int64, got ",
                    c10::toString(cache_lens.scalar_type()));
  TORCH_CHECK_VALUE(accepted_nodes.dim() == 2 && accepted_nodes.size(0) == batch,
                    "accepted_nodes must have shape [batch, positions] = (", batch,
                    ", *), got shape ", shape_str(accepted_nodes));
  TORCH_CHECK_VALUE(accepted_nodes.scalar_type() == at::kInt, "accepted_nodes must be int32, got ",
                    c10::toString(accepted_nodes.scalar_type()));
  TORCH_CHECK_VALUE(accept_len.dim() == 1 && accept_len.size(0) == batch,
                    "accept_len must have shape [batch] = (", batch, ",), got shape ",
                    shape_str(accept_len));
  TORCH_CHECK_VALUE(accept_len.scalar_type() == at::kInt, "accept_len must be int32, got ",
                    c10::toString(accept_len.scalar_type()));
  for (auto [t, name] : {std::pair<const at::Tensor&, const char*>{cache_lens, "cache_lens"},
                         {accepted_nodes, "accepted_nodes"}, {accept_len, "accept_len"}}) {
    TORCH_CHECK_VALUE(t.device() == cache.device(), name, " must be on the device of cache (",
                      cache.device(), "), got ", t.device());
  }
}

}  // namespace bastion
