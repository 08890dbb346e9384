// The arguments of bastion_ext::build_tree as its schema lists them (registration.cpp), held
// once so that the CPU and CUDA backends share one signature, one check and one entry point.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

#include "checks.h"
#include "tree_limits.h"

namespace bastion {

struct BuildTreeArgs {
  const at::Tensor& draft_logits;    // (B, P, V) float32 / float16 / bfloat16
  const at::Tensor& context_lens;    // (B,) int64
  const at::Tensor& budgets;         // (B,) int32
  const std::optional<at::Tensor>& latency_table;  // (B or 1, N) float32
  const std::optional<at::Tensor>& accept_scale;   // (B or 1,) float32
  int64_t k;
  int64_t policy;
  at::Tensor& tokens;         // (B, N) int64, and the other outputs of docs/ops.md
  at::Tensor& parents;        // (B, N) int32
  at::Tensor& depth;          // (B, N) int32
  at::Tensor& positions;      // (B, N) int64
  at::Tensor& scores;         // (B, N) float32
  at::Tensor& n_nodes;        // (B,) int32
  at::Tensor& ancestor_bits;  // (B, N, ceil(N / 32)) int32
  at::Tensor& first_child;    // (B, N + 1) int32
  at::Tensor& next_sibling;   // (B, N) int32
};

// The nine outputs: shape, dtype, the device of draft_logits, contiguity (docs/ops.md's table,
// the same as DraftTree.layout in Python).
inline void check_build_tree_outputs(const BuildTreeArgs& a, int64_t batch, int64_t max_nodes) {
  struct Output {
    const at::Tensor& t;
    const char* name;
    const char* dims;
    std::vector<int64_t> shape;
    at::ScalarType dtype;
  };
  const std::vector<int64_t> rows{batch, max_nodes};
  const Output outputs[] = {
      {a.tokens, "tokens", "[batch, max_nodes]", rows, at::kLong},
      {a.parents, "parents", "[batch, max_nodes]", rows, at::kInt},
      {a.depth, "depth", "[batch, max_nodes]", rows, at::kInt},
      {a.positions, "positions", "[batch, max_nodes]", rows, at::kLong},
      {a.scores, "scores", "[batch, max_nodes]", rows, at::kFloat},
      {a.n_nodes, "n_nodes", "[batch]", {batch}, at::kInt},
      {a.ancestor_bits, "ancestor_bits", "[batch, max_nodes, ceil(max_nodes / 32)]",
       {batch, max_nodes, (max_nodes + 31) / 32}, at::kInt},
      {a.first_child, "first_child", "[batch, max_nodes + 1]", {batch, max_nodes + 1}, at::kInt},
      {a.next_sibling, "next_sibling", "[batch, max_nodes]", rows, at::kInt},
  };
  for (const Output& o : outputs) {
    check_shape(o.t, o.name, o.dims, o.shape);
    check_dtype(o.t, o.name, o.dtype);
    check_output(o.t, o.name, a.draft_logits);
  }
}

// Validates every build_tree argument except tensor values (which the backends check
// where they read them). Throws ValueError (c10::ValueError) naming the argument.
inline void check_build_tree_args(const BuildTreeArgs& a) {
  const auto& [draft_logits, context_lens, budgets, latency_table, accept_scale, k, policy, tokens,
               parents, depth, positions, scores, n_nodes, ancestor_bits, first_child,
               next_sibling] = a;
  TORCH_CHECK_VALUE(draft_logits.dim() == 3,
                    "draft_logits must be 3-D [batch, positions, vocab], got shape ",
                    shape_str(draft_logits));
  const auto dt = draft_logits.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
                    "draft_logits must be float32, float16 or bfloat16, got ", c10::toString(dt));
  const int64_t batch = draft_logits.size(0);
  const int64_t num_pos = draft_logits.size(1);
  const int64_t vocab = draft_logits.size(2);
  TORCH_CHECK_VALUE(batch >= 1, "draft_logits must have batch >= 1, got shape ", shape_str(draft_logits));
  TORCH_CHECK_VALUE(num_pos >= 1 && num_pos <= kMaxPositions, "draft_logits positions must be in [1, ",
                    kMaxPositions, "], got shape ", shape_str(draft_logits));
  TORCH_CHECK_VALUE(vocab >= 1, "draft_logits must have vocab >= 1, got shape ", shape_str(draft_logits));
  TORCH_CHECK_VALUE(k >= 1 && k <= kMaxK && k <= vocab, "k must be in [1, min(vocab, ", kMaxK,
                    ")] = [1, ", std::min<int64_t>(vocab, kMaxK), "], got ", k);
  TORCH_CHECK_VALUE(policy >= 0 && policy < kNumPolicies,
                    "policy must be 0 (fixed), 1 (greedy_stop) or 2 (argmax), got ", policy);

  TORCH_CHECK_VALUE(tokens.dim() == 2, "tokens must be 2-D [batch, max_nodes], got shape ",
                    shape_str(tokens));
  const int64_t max_nodes = tokens.size(1);
  TORCH_CHECK_VALUE(max_nodes >= 1 && max_nodes <= kMaxNodes, "max_nodes (tokens.size(1)) must be in [1, ",
                    kMaxNodes, "], got ", max_nodes);

  check_shape(context_lens, "context_lens", "[batch]", {batch});
  check_dtype(context_lens, "context_lens", at::kLong);
  check_device(context_lens, "context_lens", draft_logits, "draft_logits");
  check_shape(budgets, "budgets", "[batch]", {batch});
  check_dtype(budgets, "budgets", at::kInt);
  check_device(budgets, "budgets", draft_logits, "draft_logits");
  if (latency_table.has_value()) {
    const auto& lt = *latency_table;
    TORCH_CHECK_VALUE(lt.dim() == 2 && (lt.size(0) == batch || lt.size(0) == 1) && lt.size(1) == max_nodes,
                      "latency_table must have shape [batch or 1, max_nodes] = (", batch, " or 1, ",
                      max_nodes, "), got shape ", shape_str(lt));
    check_dtype(lt, "latency_table", at::kFloat);
    check_device(lt, "latency_table", draft_logits, "draft_logits");
  } else {
    TORCH_CHECK_VALUE(policy == static_cast<int64_t>(Policy::kFixed),
                      "latency_table is required for policy ", policy, " (only fixed runs without it)");
  }
  if (accept_scale.has_value()) {
    const auto& as = *accept_scale;
    TORCH_CHECK_VALUE(as.dim() == 1 && (as.size(0) == batch || as.size(0) == 1),
                      "accept_scale must have shape [batch or 1] = (", batch, " or 1,), got shape ",
                      shape_str(as));
    check_dtype(as, "accept_scale", at::kFloat);
    check_device(as, "accept_scale", draft_logits, "draft_logits");
  }

  check_build_tree_outputs(a, batch, max_nodes);
}

// The op's one entry point, instantiated per backend: checks, then `Backend(args)`.
template <void (*Backend)(const BuildTreeArgs&)>
void build_tree_op(const at::Tensor& draft_logits, const at::Tensor& context_lens,
                   const at::Tensor& budgets, const std::optional<at::Tensor>& latency_table,
                   const std::optional<at::Tensor>& accept_scale, int64_t k, int64_t policy,
                   at::Tensor& tokens, at::Tensor& parents, at::Tensor& depth, at::Tensor& positions,
                   at::Tensor& scores, at::Tensor& n_nodes, at::Tensor& ancestor_bits,
                   at::Tensor& first_child, at::Tensor& next_sibling) {
  const BuildTreeArgs args{draft_logits, context_lens, budgets, latency_table, accept_scale, k, policy,
                           tokens, parents, depth, positions, scores, n_nodes, ancestor_bits,
                           first_child, next_sibling};
  check_build_tree_args(args);
  Backend(args);
}

}  // namespace bastion
