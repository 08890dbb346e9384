// The extension module bastion_ext._C: op schemas (declared once, here), the shared limits
// and the benchmark-only expansion entry point. Backends add implementations with
// TORCH_LIBRARY_IMPL in their own files (build_tree_cpu.cpp, verify_cpu.cpp, compact_kv_cpu.cpp,
// skinny_linear_cpu.cpp, *_cuda.cpp).
#include <torch/extension.h>
#include <torch/library.h>

#include "build_tree_cpu.h"
#include "tree_limits.h"

TORCH_LIBRARY(bastion_ext, m) {
  m.def(
      "build_tree(Tensor draft_logits, Tensor context_lens, Tensor budgets, Tensor? latency_table, "
      "Tensor? accept_scale, int k, int policy, Tensor(a!) tokens, Tensor(b!) parents, "
      "Tensor(c!) depth, Tensor(d!) positions, Tensor(e!) scores, Tensor(f!) n_nodes, "
      "Tensor(g!) ancestor_bits, Tensor(h!) first_child, Tensor(i!) next_sibling) -> ()");
  m.def(
      "verify_greedy(Tensor tokens, Tensor first_child, Tensor next_sibling, Tensor target_argmax, "
      "Tensor(a!) accepted_nodes, Tensor(b!) accept_len, Tensor(c!) bonus) -> ()");
  m.def(
      "verify_sample(Tensor tokens, Tensor first_child, Tensor next_sibling, Tensor target_probs, "
      "Tensor uniforms, Tensor(a!) accepted_nodes, Tensor(b!) accept_len, Tensor(c!) bonus) -> ()");
  m.def(
      "compact_kv(Tensor(a!) cache, Tensor cache_lens, Tensor accepted_nodes, Tensor accept_len) -> ()");
  m.def("skinny_linear(Tensor x, Tensor weight) -> Tensor");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "bastion_ext compiled ops; importing this module registers torch.ops.bastion_ext.*";
  module.attr("MAX_K") = bastion::kMaxK;
  module.attr("MAX_POSITIONS") = bastion::kMaxPositions;
  module.attr("MAX_NODES") = bastion::kMaxNodes;
  module.attr("POLICY_FIXED") = static_cast<int64_t>(bastion::Policy::kFixed);
  module.attr("POLICY_GREEDY_STOP") = static_cast<int64_t>(bastion::Policy::kGreedyStop);
  module.attr("POLICY_ARGMAX") = static_cast<int64_t>(bastion::Policy::kArgmax);
  module.def(
      "has_cuda",
      [] {
#ifdef BASTION_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "Whether this build contains the CUDA kernels.");
  module.def("expand_from_candidates", &bastion::expand_from_candidates_cpu, pybind11::arg("cand_tokens"),
             pybind11::arg("cand_logq"), pybind11::arg("cand_count"), pybind11::arg("max_nodes"),
             "Expansion + links + ancestor rows from precomputed top-K candidates (benchmarks).");
}
