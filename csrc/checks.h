// Device-agnostic argument checks of the bastion_ext ops: ranks, shapes, dtypes, devices,
// ranges of scalar arguments and batch agreement. Shared by the CPU and the CUDA adapters so
// that both reject the same inputs with the same messages. Nothing here reads tensor data.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <sstream>
#include <string>

#include "tree_limits.h"

namespace bastion {

// "(16, 151936)": shapes printed the way the Python side prints them.
inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << "(";
  for (int64_t d = 0; d < t.dim(); ++d) s << (d ? ", " : "") << t.size(d);
  s << (t.dim() == 1 ? ",)" : ")");
  return s.str();
}

inline void check_dtype(const at::Tensor& t, const char* name, at::ScalarType want) {
  TORCH_CHECK(t.scalar_type() == want, name, " must be ", c10::toString(want), ", got ",
              c10::toString(t.scalar_type()));
}

// `dims` names each axis, e.g. "[batch, max_nodes]"; `shape` holds -1 for "any size".
inline void check_shape(const at::Tensor& t, const char* name, const char* dims,
                        std::initializer_list<int64_t> shape) {
  bool ok = t.dim() == static_cast<int64_t>(shape.size());
  int64_t d = 0;
  for (int64_t want : shape) {
    if (ok && want >= 0 && t.size(d) != want) ok = false;
    ++d;
  }
  TORCH_CHECK(ok, name, " must have shape ", dims, " = (", [&] {
    std::ostringstream s;
    int64_t i = 0;
    for (int64_t want : shape) {
      s << (i++ ? ", " : "");
      if (want >= 0) s << want; else s << "*";
    }
    return s.str();
  }(), "), got shape ", shape_str(t));
}

inline void check_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                         const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, " must be on the same device as ", ref_name,
              " (", ref.device(), "), got ", t.device());
}

// Outputs are written through raw pointers: they must be dense.
inline void check_output(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  check_device(t, name, ref, "draft_logits");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Validates every build_tree argument except tensor values (which the backends check
// where they read them). Returns nothing; throws c10::Error naming the argument.
inline void check_build_tree_args(const at::Tensor& draft_logits, const at::Tensor& context_lens,
                                  const at::Tensor& budgets,
                                  const std::optional<at::Tensor>& latency_table,
                                  const std::optional<at::Tensor>& accept_scale, int64_t k,
                                  int64_t policy, const at::Tensor& tokens,
                                  const at::Tensor& parents, const at::Tensor& depth,
                                  const at::Tensor& positions, const at::Tensor& scores,
                                  const at::Tensor& n_nodes, const at::Tensor& ancestor_bits,
                                  const at::Tensor& first_child, const at::Tensor& next_sibling) {
  TORCH_CHECK(draft_logits.dim() == 3,
              "draft_logits must be 3-D [batch, positions, vocab], got shape ",
              shape_str(draft_logits));
  const auto dt = draft_logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "draft_logits must be float32, float16 or bfloat16, got ", c10::toString(dt));
  const int64_t batch = draft_logits.size(0);
  const int64_t num_pos = draft_logits.size(1);
  const int64_t vocab = draft_logits.size(2);
  TORCH_CHECK(batch >= 1, "draft_logits must have batch >= 1, got shape ", shape_str(draft_logits));
  TORCH_CHECK(num_pos >= 1 && num_pos <= kMaxPositions, "draft_logits positions must be in [1, ",
              kMaxPositions, "], got shape ", shape_str(draft_logits));
  TORCH_CHECK(vocab >= 1, "draft_logits must have vocab >= 1, got shape ", shape_str(draft_logits));
  TORCH_CHECK(k >= 1 && k <= kMaxK && k <= vocab, "k must be in [1, min(vocab, ", kMaxK,
              ")] = [1, ", std::min<int64_t>(vocab, kMaxK), "], got ", k);
  TORCH_CHECK(policy >= 0 && policy < kNumPolicies,
              "policy must be 0 (fixed), 1 (greedy_stop) or 2 (argmax), got ", policy);

  TORCH_CHECK(tokens.dim() == 2, "tokens must be 2-D [batch, max_nodes], got shape ",
              shape_str(tokens));
  const int64_t max_nodes = tokens.size(1);
  TORCH_CHECK(max_nodes >= 1 && max_nodes <= kMaxNodes, "max_nodes (tokens.size(1)) must be in [1, ",
              kMaxNodes, "], got ", max_nodes);
  const int64_t words = (max_nodes + 31) / 32;

  check_shape(context_lens, "context_lens", "[batch]", {batch});
  check_dtype(context_lens, "context_lens", at::kLong);
  check_device(context_lens, "context_lens", draft_logits, "draft_logits");
  check_shape(budgets, "budgets", "[batch]", {batch});
  check_dtype(budgets, "budgets", at::kInt);
  check_device(budgets, "budgets", draft_logits, "draft_logits");
  if (latency_table.has_value()) {
    const auto& lt = *latency_table;
    TORCH_CHECK(lt.dim() == 2 && (lt.size(0) == batch || lt.size(0) == 1) && lt.size(1) == max_nodes,
                "latency_table must have shape [batch or 1, max_nodes] = (", batch, " or 1, ",
                max_nodes, "), got shape ", shape_str(lt));
    check_dtype(lt, "latency_table", at::kFloat);
    check_device(lt, "latency_table", draft_logits, "draft_logits");
  } else {
    TORCH_CHECK(policy == static_cast<int64_t>(Policy::kFixed),
                "latency_table is required for policy ", policy, " (only fixed runs without it)");
  }
  if (accept_scale.has_value()) {
    const auto& as = *accept_scale;
    TORCH_CHECK(as.dim() == 1 && (as.size(0) == batch || as.size(0) == 1),
                "accept_scale must have shape [batch or 1] = (", batch, " or 1,), got shape ",
                shape_str(as));
    check_dtype(as, "accept_scale", at::kFloat);
    check_device(as, "accept_scale", draft_logits, "draft_logits");
  }

  check_shape(tokens, "tokens", "[batch, max_nodes]", {batch, max_nodes});
  check_dtype(tokens, "tokens", at::kLong);
  check_shape(parents, "parents", "[batch, max_nodes]", {batch, max_nodes});
  check_dtype(parents, "parents", at::kInt);
  check_shape(depth, "depth", "[batch, max_nodes]", {batch, max_nodes});
  check_dtype(depth, "depth", at::kInt);
  check_shape(positions, "positions", "[batch, max_nodes]", {batch, max_nodes});
  check_dtype(positions, "positions", at::kLong);
  check_shape(scores, "scores", "[batch, max_nodes]", {batch, max_nodes});
  check_dtype(scores, "scores", at::kFloat);
  check_shape(n_nodes, "n_nodes", "[batch]", {batch});
  check_dtype(n_nodes, "n_nodes", at::kInt);
  check_shape(ancestor_bits, "ancestor_bits", "[batch, max_nodes, ceil(max_nodes / 32)]",
              {batch, max_nodes, words});
  check_dtype(ancestor_bits, "ancestor_bits", at::kInt);
  check_shape(first_child, "first_child", "[batch, max_nodes + 1]", {batch, max_nodes + 1});
  check_dtype(first_child, "first_child", at::kInt);
  check_shape(next_sibling, "next_sibling", "[batch, max_nodes]", {batch, max_nodes});
  check_dtype(next_sibling, "next_sibling", at::kInt);
  for (auto [t, name] : {std::pair<const at::Tensor&, const char*>{tokens, "tokens"},
                         {parents, "parents"}, {depth, "depth"}, {positions, "positions"},
                         {scores, "scores"}, {n_nodes, "n_nodes"}, {ancestor_bits, "ancestor_bits"},
                         {first_child, "first_child"}, {next_sibling, "next_sibling"}}) {
    check_output(t, name, draft_logits);
  }
}

// Shared by verify_greedy and verify_sample: the tree links and the three outputs.
// Returns nothing; `targets` is target_argmax or target_probs (checked by the caller).
inline void check_verify_tree_args(const at::Tensor& tokens, const at::Tensor& first_child,
                                   const at::Tensor& next_sibling, const at::Tensor& accepted_nodes,
                                   const at::Tensor& accept_len, const at::Tensor& bonus) {
  TORCH_CHECK(tokens.dim() == 2, "tokens must be 2-D [batch, max_nodes], got shape ",
              shape_str(tokens));
  check_dtype(tokens, "tokens", at::kLong);
  const int64_t batch = tokens.size(0);
  const int64_t max_nodes = tokens.size(1);
  TORCH_CHECK(max_nodes >= 1 && max_nodes <= kMaxNodes, "max_nodes (tokens.size(1)) must be in [1, ",
              kMaxNodes, "], got ", max_nodes);
  check_shape(first_child, "first_child", "[batch, max_nodes + 1]", {batch, max_nodes + 1});
  check_dtype(first_child, "first_child", at::kInt);
  check_shape(next_sibling, "next_sibling", "[batch, max_nodes]", {batch, max_nodes});
  check_dtype(next_sibling, "next_sibling", at::kInt);
  TORCH_CHECK(accepted_nodes.dim() == 2 && accepted_nodes.size(0) == batch,
              "accepted_nodes must have shape [batch, positions] = (", batch, ", *), got shape ",
              shape_str(accepted_nodes));
  TORCH_CHECK(accepted_nodes.size(1) >= 1 && accepted_nodes.size(1) <= kMaxPositions,
              "accepted_nodes positions must be in [1, ", kMaxPositions, "], got shape ",
              shape_str(accepted_nodes));
  check_dtype(accepted_nodes, "accepted_nodes", at::kInt);
  check_shape(accept_len, "accept_len", "[batch]", {batch});
  check_dtype(accept_len, "accept_len", at::kInt);
  check_shape(bonus, "bonus", "[batch]", {batch});
  check_dtype(bonus, "bonus", at::kLong);
  check_device(first_child, "first_child", tokens, "tokens");
  check_device(next_sibling, "next_sibling", tokens, "tokens");
  for (auto [t, name] : {std::pair<const at::Tensor&, const char*>{accepted_nodes, "accepted_nodes"},
                         {accept_len, "accept_len"}, {bonus, "bonus"}}) {
    check_device(t, name, tokens, "tokens");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  }
}

inline void check_verify_greedy_args(const at::Tensor& tokens, const at::Tensor& target_argmax) {
  check_shape(target_argmax, "target_argmax", "[batch, max_nodes + 1]",
              {tokens.size(0), tokens.size(1) + 1});
  check_dtype(target_argmax, "target_argmax", at::kLong);
  check_device(target_argmax, "target_argmax", tokens, "tokens");
}

inline void check_verify_sample_args(const at::Tensor& tokens, const at::Tensor& target_probs,
                                     const at::Tensor& uniforms) {
  check_shape(target_probs, "target_probs", "[batch, max_nodes + 1, vocab]",
              {tokens.size(0), tokens.size(1) + 1, -1});
  TORCH_CHECK(target_probs.size(2) >= 1, "target_probs must have vocab >= 1, got shape ",
              shape_str(target_probs));
  check_dtype(target_probs, "target_probs", at::kFloat);
  check_device(target_probs, "target_probs", tokens, "tokens");
  check_shape(uniforms, "uniforms", "[batch, max_nodes + 1]", {tokens.size(0), tokens.size(1) + 1});
  check_dtype(uniforms, "uniforms", at::kFloat);
  check_device(uniforms, "uniforms", tokens, "tokens");
}

}  // namespace bastion
