// CPU backend of bastion_ext::verify_greedy and bastion_ext::verify_sample: the acceptance
// walk over first_child / next_sibling links (docs/ops.md).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "checks.h"

namespace bastion {
namespace {

// One request's walk. `target_of(j)` gives the target token at verify index j (0 = root,
// i + 1 = node i) and is only called for indices the walk visits. Links are checked before
// they are followed: a child or sibling must lie after the node it hangs from (pop order), so
// a corrupted tree can neither read out of bounds nor loop.
template <typename TargetOf>
void walk_tree(const int64_t* tokens, const int32_t* first_child, const int32_t* next_sibling,
               int64_t max_nodes, int64_t num_pos, int64_t b, TargetOf target_of,
               int32_t* accepted_nodes, int32_t* accept_len, int64_t* bonus) {
  int32_t cur = -1;
  int32_t steps = 0;
  int64_t want = target_of(0);
  while (steps < num_pos) {
    int32_t child = first_child[cur + 1];
    TORCH_CHECK_VALUE(child == -1 || (child > cur && child < max_nodes),
                      "first_child holds an invalid link ", child, " for verify index ", cur + 1,
                      " at batch ", b, " (must be -1 or in (", cur, ", ", max_nodes, "))");
    while (child >= 0 && tokens[child] != want) {
      const int32_t next = next_sibling[child];
      TORCH_CHECK_VALUE(next == -1 || (next > child && next < max_nodes), "next_sibling holds an invalid link ",
                        next, " for node ", child, " at batch ", b, " (must be -1 or in (", child, ", ",
                        max_nodes, "))");
      child = next;
    }
    if (child < 0) break;
    accepted_nodes[steps++] = child;
    cur = child;
    want = target_of(cur + 1);
  }
  for (int64_t s = steps; s < num_pos; ++s) accepted_nodes[s] = -1;
  *accept_len = steps;
  *bonus = want;
}

// Walk every request; `target_of(b, j)` is the target token of request b at verify index j.
template <typename TargetOf>
void walk_all(const at::Tensor& tokens, const at::Tensor& first_child, const at::Tensor& next_sibling,
              at::Tensor& accepted_nodes, at::Tensor& accept_len, at::Tensor& bonus,
              TargetOf target_of) {
  const auto tok = tokens.contiguous();
  const auto fc = first_child.contiguous();
  const auto ns = next_sibling.contiguous();
  const int64_t batch = tok.size(0);
  const int64_t max_nodes = tok.size(1);
  const int64_t num_pos = accepted_nodes.size(1);
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      walk_tree(tok.data_ptr<int64_t>() + b * max_nodes, fc.data_ptr<int32_t>() + b * (max_nodes + 1),
                ns.data_ptr<int32_t>() + b * max_nodes, max_nodes, num_pos, b,
                [&](int64_t j) { return target_of(b, j); },
                accepted_nodes.data_ptr<int32_t>() + b * num_pos, accept_len.data_ptr<int32_t>() + b,
                bonus.data_ptr<int64_t>() + b);
    }
  });
}

void verify_greedy_cpu(const at::Tensor& tokens, const at::Tensor& first_child,
                       const at::Tensor& next_sibling, const at::Tensor& target_argmax,
                       at::Tensor& accepted_nodes, at::Tensor& accept_len, at::Tensor& bonus) {
  check_verify_tree_args(tokens, first_child, next_sibling, accepted_nodes, accept_len, bonus);
  check_verify_greedy_args(tokens, target_argmax);
  const auto target = target_argmax.contiguous();
  const int64_t row = target.size(1);
  const int64_t* t = target.data_ptr<int64_t>();
  walk_all(tokens, first_child, next_sibling, accepted_nodes, accept_len, bonus, [&](int64_t b, int64_t j) {
    const int64_t token = t[b * row + j];
    // A negative id would come back as the bonus token; the vocab size is unknown here.
    TORCH_CHECK_VALUE(token >= 0, "target_argmax must hold token ids >= 0, got ", token, " (batch ", b,
                      ", verify index ", j, ")");
    return token;
  });
}

// How far a row's sum may be from 1: fp32 softmax and nucleus renormalisation stay within
// ~1e-5 even at vocab 150k; a row off by more is not a distribution (unnormalised, or logits).
constexpr double kProbSumTolerance = 1e-3;

// Inverse CDF: the smallest v with fl32(cumsum(p)[v]) > u, clamped to the last token of
// positive probability. The running sum is kept in fp64 and rounded to fp32 per element, as
// torch.cumsum does on the CPU for fp32 (the oracle's definition). Only the rows and uniforms
// the walk visits are read, and checked: entries finite and >= 0, the sum within
// kProbSumTolerance of 1.
int64_t sample_inverse_cdf(const float* probs, int64_t vocab, float u, int64_t b, int64_t j) {
  TORCH_CHECK_VALUE(u >= 0.0f && u < 1.0f, "uniforms must lie in [0, 1), got ", u, " (batch ", b,
                    ", verify index ", j, ")");
  int64_t last_positive = -1;
  double total = 0.0;
  for (int64_t v = 0; v < vocab; ++v) {
    TORCH_CHECK_VALUE(probs[v] >= 0.0f && std::isfinite(probs[v]), "target_probs must be finite and >= 0, got ",
                      probs[v], " (batch ", b, ", verify index ", j, ", token ", v, ")");
    if (probs[v] > 0.0f) last_positive = v;
    total += static_cast<double>(probs[v]);
  }
  TORCH_CHECK_VALUE(last_positive >= 0, "target_probs has a row with no positive probability (batch ", b,
                    ", verify index ", j, ")");
  TORCH_CHECK_VALUE(std::abs(total - 1.0) <= kProbSumTolerance, "target_probs rows must sum to 1 (within ",
                    kProbSumTolerance, "), got ", total, " (batch ", b, ", verify index ", j, ")");
  double cum = 0.0;
  for (int64_t v = 0; v < last_positive; ++v) {
    cum += static_cast<double>(probs[v]);
    if (static_cast<float>(cum) > u) return v;
  }
  return last_positive;
}

void verify_sample_cpu(const at::Tensor& tokens, const at::Tensor& first_child,
                       const at::Tensor& next_sibling, const at::Tensor& target_probs,
                       const at::Tensor& uniforms, at::Tensor& accepted_nodes, at::Tensor& accept_len,
                       at::Tensor& bonus) {
  check_verify_tree_args(tokens, first_child, next_sibling, accepted_nodes, accept_len, bonus);
  check_verify_sample_args(tokens, target_probs, uniforms);
  const auto probs = target_probs.contiguous();
  const auto unif = uniforms.contiguous();
  const int64_t rows = probs.size(1);
  const int64_t vocab = probs.size(2);
  const float* p = probs.data_ptr<float>();
  const float* u = unif.data_ptr<float>();
  walk_all(tokens, first_child, next_sibling, accepted_nodes, accept_len, bonus,
           [&](int64_t b, int64_t j) {
             return sample_inverse_cdf(p + (b * rows + j) * vocab, vocab, u[b * rows + j], b, j);
           });
}

}  // namespace

TORCH_LIBRARY_IMPL(bastion_ext, CPU, m) {
  m.impl("verify_greedy", &verify_greedy_cpu);
  m.impl("verify_sample", &verify_sample_cpu);
}

}  // namespace bastion
