// CUDA backend of bastion_ext::build_tree: the torch adapter around build_tree_cuda.cu.
// Runs behind build_tree_op (build_tree_args.h: the checks both backends share), adds the
// CUDA-only limits, guards the device, takes torch's current stream, maps the logit dtype and
// launches. Tensor values (budgets, latency,
// NaN in the logits) are not read here: that would need a host sync; the kernel's defined
// behaviour for them is in build_tree_cuda.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "build_tree_cuda.cuh"
#include "build_tree_args.h"
#include "checks.h"

namespace bastion {
namespace {

LogitDType logit_dtype_of(const at::Tensor& logits) {
  switch (logits.scalar_type()) {
    case at::kFloat: return LogitDType::kFloat32;
    case at::kHalf: return LogitDType::kFloat16;
    case at::kBFloat16: return LogitDType::kBFloat16;
    default: TORCH_CHECK_VALUE(false, "draft_logits must be float32, float16 or bfloat16, got ",
                         c10::toString(logits.scalar_type()));
  }
}

// SMs of `device`, asked once per device (a host query, legal during graph capture).
int multiprocessor_count(int device) {
  static int counts[64] = {};
  TORCH_CHECK_VALUE(device >= 0 && device < 64, "draft_logits is on CUDA device ", device,
                    ", beyond the 64 this build supports");
  if (counts[device] == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device));
  }
  return counts[device];
}

void build_tree_cuda(const BuildTreeArgs& a) {
  const auto& [draft_logits, context_lens, budgets, latency_table, accept_scale, k, policy, tokens,
               parents, depth, positions, scores, n_nodes, ancestor_bits, first_child,
               next_sibling] = a;
  TORCH_CHECK_VALUE(draft_logits.is_cuda(), "draft_logits must be a CUDA tensor, got ", draft_logits.device());
  // Candidate ids travel in 32 bits inside the kernels' sort keys.
  TORCH_CHECK_VALUE(draft_logits.size(2) <= INT32_MAX, "draft_logits vocab must be < 2^31, got shape ",
                    shape_str(draft_logits));
  TORCH_CHECK_VALUE(draft_logits.size(0) * draft_logits.size(1) <= INT32_MAX,
                    "draft_logits batch * positions must be < 2^31, got shape ", shape_str(draft_logits));
  const c10::cuda::CUDAGuard guard(draft_logits.device());
  const auto logits = draft_logits.contiguous();
  const auto ctx = context_lens.contiguous();
  const auto bud = budgets.contiguous();
  const auto lat = latency_table.has_value() ? std::optional<at::Tensor>(latency_table->contiguous())
                                             : std::nullopt;
  const auto scale = accept_scale.has_value() ? std::optional<at::Tensor>(accept_scale->contiguous())
                                              : std::nullopt;

  BuildTreeParams prm{};
  prm.draft_logits = logits.data_ptr();
  prm.logit_dtype = logit_dtype_of(logits);
  prm.context_lens = ctx.data_ptr<int64_t>();
  prm.budgets = bud.data_ptr<int32_t>();
  prm.latency_table = lat.has_value() ? lat->data_ptr<float>() : nullptr;
  prm.latency_rows = lat.has_value() ? static_cast<int>(lat->size(0)) : 0;
  prm.accept_scale = scale.has_value() ? scale->data_ptr<float>() : nullptr;
  prm.accept_rows = scale.has_value() ? static_cast<int>(scale->size(0)) : 0;
  prm.batch = static_cast<int>(logits.size(0));
  prm.positions = static_cast<int>(logits.size(1));
  prm.vocab = logits.size(2);
  prm.k = static_cast<int>(k);
  prm.max_nodes = static_cast<int>(tokens.size(1));
  prm.words = static_cast<int>(ancestor_bits.size(2));
  prm.policy = static_cast<int>(policy);
  prm.splits = choose_row_splits(prm.batch, prm.positions, prm.vocab,
                                 multiprocessor_count(draft_logits.get_device()));
  prm.tokens = tokens.data_ptr<int64_t>();
  prm.parents = parents.data_ptr<int32_t>();
  prm.depth = depth.data_ptr<int32_t>();
  prm.positions_out = positions.data_ptr<int64_t>();
  prm.scores = scores.data_ptr<float>();
  prm.n_nodes = n_nodes.data_ptr<int32_t>();
  prm.ancestor_bits = ancestor_bits.data_ptr<int32_t>();
  prm.first_child = first_child.data_ptr<int32_t>();
  prm.next_sibling = next_sibling.data_ptr<int32_t>();
  // The per-slice top-k candidates live between the two kernels. They come from torch's
  // caching allocator (no cudaMalloc after warm-up; inside CUDA-graph capture, the graph's
  // private pool), which keeps the op's schema free of a workspace argument.
  const at::Tensor workspace = at::empty(
      {static_cast<int64_t>(build_tree_workspace_bytes(prm.batch, prm.positions, prm.splits))},
      logits.options().dtype(at::kByte));
  prm.workspace = workspace.data_ptr();

  const cudaError_t err = launch_build_tree(prm, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "build_tree CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace

TORCH_LIBRARY_IMPL(bastion_ext, CUDA, m) { m.impl("build_tree", &build_tree_op<build_tree_cuda>); }

}  // namespace bastion
