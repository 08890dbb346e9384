// CUDA backend of bastion_ext::verify_greedy and bastion_ext::verify_sample: the torch
// adapter around verify_cuda.cu (checks from checks.h, device guard, current stream).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "verify_cuda.cuh"

namespace bastion {
namespace {

// Raw pointers of the tree and the three outputs; the inputs are made contiguous into `keep`.
VerifyParams verify_params(const at::Tensor& tokens, const at::Tensor& first_child,
                           const at::Tensor& next_sibling, at::Tensor& accepted_nodes,
                           at::Tensor& accept_len, at::Tensor& bonus, at::Tensor (&keep)[3]) {
  TORCH_CHECK_VALUE(tokens.is_cuda(), "tokens must be a CUDA tensor, got ", tokens.device());
  keep[0] = tokens.contiguous();
  keep[1] = first_child.contiguous();
  keep[2] = next_sibling.contiguous();
  VerifyParams prm{};
  prm.tokens = keep[0].data_ptr<int64_t>();
  prm.first_child = keep[1].data_ptr<int32_t>();
  prm.next_sibling = keep[2].data_ptr<int32_t>();
  prm.batch = static_cast<int>(tokens.size(0));
  prm.max_nodes = static_cast<int>(tokens.size(1));
  prm.positions = static_cast<int>(accepted_nodes.size(1));
  prm.accepted_nodes = accepted_nodes.data_ptr<int32_t>();
  prm.accept_len = accept_len.data_ptr<int32_t>();
  prm.bonus = bonus.data_ptr<int64_t>();
  return prm;
}

void verify_greedy_cuda(const at::Tensor& tokens, const at::Tensor& first_child,
                        const at::Tensor& next_sibling, const at::Tensor& target_argmax,
                        at::Tensor& accepted_nodes, at::Tensor& accept_len, at::Tensor& bonus) {
  check_verify_tree_args(tokens, first_child, next_sibling, accepted_nodes, accept_len, bonus);
  check_verify_greedy_args(tokens, target_argmax);
  const c10::cuda::CUDAGuard guard(tokens.device());
  at::Tensor keep[3];
  const VerifyParams prm =
      verify_params(tokens, first_child, next_sibling, accepted_nodes, accept_len, bonus, keep);
  const auto target = target_argmax.contiguous();
  const cudaError_t err =
      launch_verify_greedy(prm, target.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "verify_greedy CUDA launch failed: ", cudaGetErrorString(err));
}

void verify_sample_cuda(const at::Tensor& tokens, const at::Tensor& first_child,
                        const at::Tensor& next_sibling, const at::Tensor& target_probs,
                        const at::Tensor& uniforms, at::Tensor& accepted_nodes, at::Tensor& accept_len,
                        at::Tensor& bonus) {
  check_verify_tree_args(tokens, first_child, next_sibling, accepted_nodes, accept_len, bonus);
  check_verify_sample_args(tokens, target_probs, uniforms);
  TORCH_CHECK_VALUE(target_probs.size(2) <= INT32_MAX, "target_probs vocab must be < 2^31, got shape ",
                    shape_str(target_probs));
  const c10::cuda::CUDAGuard guard(tokens.device());
  at::Tensor keep[3];
  const VerifyParams prm =
      verify_params(tokens, first_child, next_sibling, accepted_nodes, accept_len, bonus, keep);
  const auto probs = target_probs.contiguous();
  const auto unif = uniforms.contiguous();
  // One sample per verify token, consumed by the walk right after: scratch from the caching
  // allocator (graph-capture safe), not an op argument.
  at::Tensor samples = at::empty({tokens.size(0), tokens.size(1) + 1}, tokens.options());
  const cudaError_t err =
      launch_verify_sample(prm, probs.data_ptr<float>(), probs.size(2), unif.data_ptr<float>(),
                           samples.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "verify_sample CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace

TORCH_LIBRARY_IMPL(bastion_ext, CUDA, m) {
  m.impl("verify_greedy", &verify_greedy_cuda);
  m.impl("verify_sample", &verify_sample_cuda);
}

}  // namespace bastion
