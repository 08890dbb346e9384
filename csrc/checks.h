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
  TORCH_CHECK_VALUE(t.scalar_type() == want, name, " must be ", c10::toString(want), ", got ",
                    c10::toString(t.scalar_type()));
}

// `dims` names each axis, e.g. "[batch, max_nodes]"; `shape` holds -1 for "any size".
inline void check_shape(const at::Tensor& t, const char* name, const char* dims,
                        c10::ArrayRef<int64_t> shape) {
  bool ok = t.dim() == static_cast<int64_t>(shape.size());
  for (size_t d = 0; ok && d < shape.size(); ++d) ok = shape[d] < 0 || t.size(d) == shape[d];
  std::ostringstream want;
  for (size_t d = 0; d < shape.size(); ++d) {
    want << (d ? ", " : "");
    if (shape[d] >= 0) want << shape[d]; else want << "*";
  }
  TORCH_CHECK_VALUE(ok, name, " must have shape ", dims, " = (", want.str(), "), got shape ",
                    shape_str(t));
}

inline void check_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                         const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " must be on the same device as ", ref_name,
                    " (", ref.device(), "), got ", t.device());
}

// Outputs are written through raw pointers: they must be dense.
inline void check_output(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  check_device(t, name, ref, "draft_logits");
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

// Shared by verify_greedy and verify_sample: the tree links and the three outputs.
// Returns nothing; `targets` is target_argmax or target_probs (checked by the caller).
inline void check_verify_tree_args(const at::Tensor& tokens, const at::Tensor& first_child,
                                   const at::Tensor& next_sibling, const at::Tensor& accepted_nodes,
                                   const at::Tensor& accept_len, const at::Tensor& bonus) {
  TORCH_CHECK_VALUE(tokens.dim() == 2, "tokens must be 2-D [batch, max_nodes], got shape ",
                    shape_str(tokens));
  check_dtype(tokens, "tokens", at::kLong);
  const int64_t batch = tokens.size(0);
  const int64_t max_nodes = tokens.size(1);
  TORCH_CHECK_VALUE(max_nodes >= 1 && max_nodes <= kMaxNodes, "max_nodes (tokens.size(1)) must be in [1, ",
                    kMaxNodes, "], got ", max_nodes);
  check_shape(first_child, "first_child", "[batch, max_nodes + 1]", {batch, max_nodes + 1});
  check_dtype(first_child, "first_child", at::kInt);
  check_shape(next_sibling, "next_sibling", "[batch, max_nodes]", {batch, max_nodes});
  check_dtype(next_sibling, "next_sibling", at::kInt);
  TORCH_CHECK_VALUE(accepted_nodes.dim() == 2 && accepted_nodes.size(0) == batch,
                    "accepted_nodes must have shape [batch, positions] = (", batch, ", *), got shape ",
                    shape_str(accepted_nodes));
  TORCH_CHECK_VALUE(accepted_nodes.size(1) >= 1 && accepted_nodes.size(1) <= kMaxPositions,
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
    TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
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
  TORCH_CHECK_VALUE(target_probs.size(2) >= 1, "target_probs must have vocab >= 1, got shape ",
                    shape_str(target_probs));
  check_dtype(target_probs, "target_probs", at::kFloat);
  check_device(target_probs, "target_probs", tokens, "tokens");
  check_shape(uniforms, "uniforms", "[batch, max_nodes + 1]", {tokens.size(0), tokens.size(1) + 1});
  check_dtype(uniforms, "uniforms", at::kFloat);
  check_device(uniforms, "uniforms", tokens, "tokens");
}

}  // namespace bastion
