// Entry points of the CPU tree builder beyond the registered op.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace bastion {

// Expansion + links + ancestor rows from precomputed candidates, for one request with the
// fixed policy and cap = max_nodes: exactly the code build_tree runs after its top-K pass, so
// a benchmark can time that part alone. cand_tokens: (P, K) int64; cand_logq: (P, K) fp32,
// non-increasing per row; cand_count: (P,) int32, valid candidates per row. Returns the
// build_tree outputs for batch 1 (context length 0) in docs/ops.md order.
std::vector<at::Tensor> expand_from_candidates_cpu(const at::Tensor& cand_tokens,
                                                   const at::Tensor& cand_logq,
                                                   const at::Tensor& cand_count, int64_t max_nodes);

}  // namespace bastion
