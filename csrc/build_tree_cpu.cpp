// CPU backend of bastion_ext::build_tree: checks, dtype dispatch, and the loops over
// (request, position) rows and requests around the framework-free core in tree_core.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "build_tree_cpu.h"
#include "build_tree_args.h"
#include "checks.h"
#include "tree_core.h"

namespace bastion {
namespace {

// Raw pointers to one request's rows of the build_tree outputs.
struct TreeOutputs {
  int64_t* tokens;
  int32_t* parents;
  int32_t* depth;
  int64_t* positions;
  float* scores;
  int32_t* ancestor_bits;
  int32_t* first_child;
  int32_t* next_sibling;
};

// Request b's rows of contiguous output tensors shaped as in docs/ops.md.
TreeOutputs tree_outputs_at(at::Tensor& tokens, at::Tensor& parents, at::Tensor& depth,
                            at::Tensor& positions, at::Tensor& scores, at::Tensor& ancestor_bits,
                            at::Tensor& first_child, at::Tensor& next_sibling, int64_t b) {
  const int64_t n = tokens.size(1);
  return {tokens.data_ptr<int64_t>() + b * n,
          parents.data_ptr<int32_t>() + b * n,
          depth.data_ptr<int32_t>() + b * n,
          positions.data_ptr<int64_t>() + b * n,
          scores.data_ptr<float>() + b * n,
          ancestor_bits.data_ptr<int32_t>() + b * n * ancestor_bits.size(2),
          first_child.data_ptr<int32_t>() + b * (n + 1),
          next_sibling.data_ptr<int32_t>() + b * n};
}

// After expansion and the cut: positions of the first n nodes, padding past n, links and
// ancestor rows. `last_child`: scratch of max_nodes + 1 entries.
void write_outputs(const TreeOutputs& out, int n, int max_nodes, int words, int64_t context_len,
                 int32_t* last_child) {
  for (int i = 0; i < n; ++i) out.positions[i] = context_len + out.depth[i];
  for (int i = n; i < max_nodes; ++i) {
    out.tokens[i] = -1;
    out.parents[i] = -1;
    out.depth[i] = 0;
    out.positions[i] = -1;
    out.scores[i] = -std::numeric_limits<float>::infinity();
  }
  write_links_and_ancestors(out.parents, n, max_nodes, words, out.ancestor_bits, out.first_child,
                            out.next_sibling, last_child);
}

// Top-K + lse of every (request, position) row; throws naming draft_logits on bad values.
void topk_logprobs_all_rows(const at::Tensor& logits, int k, std::vector<RowCandidates>& cands) {
  const int64_t rows = logits.size(0) * logits.size(1);
  const int64_t vocab = logits.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "build_tree_cpu", [&] {
    const scalar_t* base = logits.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const RowStatus status = topk_logprobs(base + r * vocab, vocab, k, &cands[r]);
        TORCH_CHECK_VALUE(status != RowStatus::kNonFinite, "draft_logits must not contain NaN or +inf (batch ",
                          r / logits.size(1), ", position ", r % logits.size(1), ")");
        TORCH_CHECK_VALUE(status != RowStatus::kAllNegInf, "draft_logits has a row that is all -inf (batch ",
                          r / logits.size(1), ", position ", r % logits.size(1), ")");
      }
    });
  });
}

// Tensor values the schema cannot express: budgets in [1, N], latency finite > 0, etc.
void check_build_tree_values(const at::Tensor& context_lens, const at::Tensor& budgets,
                             const std::optional<at::Tensor>& latency_table,
                             const std::optional<at::Tensor>& accept_scale, int64_t max_nodes) {
  const int32_t* budget = budgets.data_ptr<int32_t>();
  for (int64_t b = 0; b < budgets.numel(); ++b) {
    TORCH_CHECK_VALUE(budget[b] >= 1 && budget[b] <= max_nodes, "budgets must be in [1, max_nodes = ",
                      max_nodes, "], got ", budget[b], " at batch ", b);
  }
  const int64_t* ctx = context_lens.data_ptr<int64_t>();
  for (int64_t b = 0; b < context_lens.numel(); ++b) {
    TORCH_CHECK_VALUE(ctx[b] >= 0 && ctx[b] <= kMaxContextLen, "context_lens must be in [0, 2**62], got ", ctx[b],
                      " at batch ", b);
  }
  if (latency_table.has_value()) {
    const float* t = latency_table->data_ptr<float>();
    for (int64_t i = 0; i < latency_table->numel(); ++i) {
      TORCH_CHECK_VALUE(std::isfinite(t[i]) && t[i] > 0.0f, "latency_table must be finite and > 0, got ",
                        t[i], " at flat index ", i);
    }
  }
  if (accept_scale.has_value()) {
    const float* s = accept_scale->data_ptr<float>();
    for (int64_t i = 0; i < accept_scale->numel(); ++i) {
      TORCH_CHECK_VALUE(std::isfinite(s[i]) && s[i] >= 0.0f, "accept_scale must be finite and >= 0, got ",
                        s[i], " at index ", i);
    }
  }
}

void build_tree_cpu(const BuildTreeArgs& a) {
  // Plain references, not a structured binding: the parallel_for lambda below captures them
  // (capturing a binding is C++20).
  at::Tensor& tokens = a.tokens;
  at::Tensor& parents = a.parents;
  at::Tensor& depth = a.depth;
  at::Tensor& positions = a.positions;
  at::Tensor& scores = a.scores;
  at::Tensor& n_nodes = a.n_nodes;
  at::Tensor& ancestor_bits = a.ancestor_bits;
  at::Tensor& first_child = a.first_child;
  at::Tensor& next_sibling = a.next_sibling;
  const int64_t policy = a.policy;
  const int64_t k = a.k;
  const at::Tensor& draft_logits = a.draft_logits;
  const auto ctx = a.context_lens.contiguous();
  const auto bud = a.budgets.contiguous();
  const auto lat = a.latency_table.has_value() ? std::optional<at::Tensor>(a.latency_table->contiguous())
                                               : std::nullopt;
  const auto scale = a.accept_scale.has_value() ? std::optional<at::Tensor>(a.accept_scale->contiguous())
                                                : std::nullopt;
  const int64_t max_nodes = tokens.size(1);
  check_build_tree_values(ctx, bud, lat, scale, max_nodes);

  const auto logits = draft_logits.contiguous();
  const int64_t batch = logits.size(0);
  const int num_pos = static_cast<int>(logits.size(1));
  std::vector<RowCandidates> cands(batch * num_pos);
  topk_logprobs_all_rows(logits, static_cast<int>(k), cands);

  const int words = static_cast<int>(ancestor_bits.size(2));
  const int32_t* budget = bud.data_ptr<int32_t>();
  const int64_t* ctx_len = ctx.data_ptr<int64_t>();
  const float* lat_rows = lat.has_value() ? lat->data_ptr<float>() : nullptr;
  const bool lat_per_request = lat.has_value() && lat->size(0) == batch;
  const float* scale_vals = scale.has_value() ? scale->data_ptr<float>() : nullptr;
  const bool scale_per_request = scale.has_value() && scale->size(0) == batch;

  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<HeapEntry> heap(max_nodes + 2);
    std::vector<int32_t> last_child(max_nodes + 1);
    for (int64_t b = begin; b < end; ++b) {
      const TreeOutputs out = tree_outputs_at(tokens, parents, depth, positions, scores,
                                              ancestor_bits, first_child, next_sibling, b);
      const int avail = expand_lattice(&cands[b * num_pos], num_pos, budget[b], heap.data(),
                                       out.tokens, out.parents, out.depth, out.scores);
      const float* latency = lat_rows ? lat_rows + (lat_per_request ? b : 0) * max_nodes : nullptr;
      const float s = scale_vals ? scale_vals[scale_per_request ? b : 0] : 1.0f;
      const int n = cut_pop_sequence(out.scores, avail, static_cast<Policy>(policy), latency, s);
      n_nodes.data_ptr<int32_t>()[b] = n;
      write_outputs(out, n, static_cast<int>(max_nodes), words, ctx_len[b], last_child.data());
    }
  });
}

}  // namespace


std::vector<at::Tensor> expand_from_candidates_cpu(const at::Tensor& cand_tokens,
                                                   const at::Tensor& cand_logq,
                                                   const at::Tensor& cand_count, int64_t max_nodes) {
  TORCH_CHECK_VALUE(cand_tokens.dim() == 2 && cand_tokens.size(0) >= 1 &&
                  cand_tokens.size(0) <= kMaxPositions && cand_tokens.size(1) >= 1 &&
                  cand_tokens.size(1) <= kMaxK,
                    "cand_tokens must have shape [positions <= ", kMaxPositions, ", k <= ", kMaxK,
                    "], got shape ", shape_str(cand_tokens));
  const int64_t num_pos = cand_tokens.size(0);
  const int64_t k = cand_tokens.size(1);
  check_dtype(cand_tokens, "cand_tokens", at::kLong);
  check_shape(cand_logq, "cand_logq", "[positions, k]", {num_pos, k});
  check_dtype(cand_logq, "cand_logq", at::kFloat);
  check_shape(cand_count, "cand_count", "[positions]", {num_pos});
  check_dtype(cand_count, "cand_count", at::kInt);
  TORCH_CHECK_VALUE(max_nodes >= 1 && max_nodes <= kMaxNodes, "max_nodes must be in [1, ", kMaxNodes,
                    "], got ", max_nodes);
  const auto toks = cand_tokens.contiguous();
  const auto logq = cand_logq.contiguous();
  const auto count = cand_count.contiguous();
  std::vector<RowCandidates> cands(num_pos);
  for (int64_t p = 0; p < num_pos; ++p) {
    const int32_t c = count.data_ptr<int32_t>()[p];
    TORCH_CHECK_VALUE(c >= 0 && c <= k, "cand_count must be in [0, k = ", k, "], got ", c);
    cands[p].count = c;
    for (int32_t r = 0; r < c; ++r) {
      cands[p].tokens[r] = toks.data_ptr<int64_t>()[p * k + r];
      cands[p].logq[r] = logq.data_ptr<float>()[p * k + r];
    }
  }
  const auto opts = cand_tokens.options();
  const int words = static_cast<int>((max_nodes + 31) / 32);
  at::Tensor tokens = at::empty({1, max_nodes}, opts.dtype(at::kLong));
  at::Tensor parents = at::empty({1, max_nodes}, opts.dtype(at::kInt));
  at::Tensor depth = at::empty({1, max_nodes}, opts.dtype(at::kInt));
  at::Tensor positions = at::empty({1, max_nodes}, opts.dtype(at::kLong));
  at::Tensor scores = at::empty({1, max_nodes}, opts.dtype(at::kFloat));
  at::Tensor n_nodes = at::empty({1}, opts.dtype(at::kInt));
  at::Tensor ancestor_bits = at::empty({1, max_nodes, words}, opts.dtype(at::kInt));
  at::Tensor first_child = at::empty({1, max_nodes + 1}, opts.dtype(at::kInt));
  at::Tensor next_sibling = at::empty({1, max_nodes}, opts.dtype(at::kInt));
  std::vector<HeapEntry> heap(max_nodes + 2);
  std::vector<int32_t> last_child(max_nodes + 1);
  const TreeOutputs out = tree_outputs_at(tokens, parents, depth, positions, scores, ancestor_bits,
                                          first_child, next_sibling, 0);
  const int n = expand_lattice(cands.data(), static_cast<int>(num_pos), static_cast<int>(max_nodes),
                               heap.data(), out.tokens, out.parents, out.depth, out.scores);
  n_nodes.data_ptr<int32_t>()[0] = n;
  write_outputs(out, n, static_cast<int>(max_nodes), words, 0, last_child.data());
  return {tokens, parents, depth, positions, scores, n_nodes, ancestor_bits, first_child, next_sibling};
}

TORCH_LIBRARY_IMPL(bastion_ext, CPU, m) { m.impl("build_tree", &build_tree_op<build_tree_cpu>); }

}  // namespace bastion
