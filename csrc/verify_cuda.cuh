// CUDA verify_greedy / verify_sample (docs/ops.md), framework-free: raw pointers, a params
// struct and a stream. The torch adapter (verify_cuda.cpp) checks arguments and calls these.
//
// Corrupted links cannot raise without a host sync: a first_child / next_sibling entry that
// does not point forward inside the tree (child > its parent's index, < max_nodes) ends the
// children list it appears in, so the walk can neither read out of bounds nor loop. A
// target_probs row with no positive entry samples token -1, which matches no child.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace bastion {

struct VerifyParams {
  const int64_t* tokens;        // (batch, N)
  const int32_t* first_child;   // (batch, N + 1), verify indexing
  const int32_t* next_sibling;  // (batch, N)
  int batch;
  int max_nodes;                // N
  int positions;                // P = accepted_nodes.size(1)
  int32_t* accepted_nodes;      // (batch, P)
  int32_t* accept_len;          // (batch,)
  int64_t* bonus;               // (batch,)
};

// The acceptance walk with the target token at every verify index given.
// target: (batch, N + 1) int64 (target_argmax, or the samples of verify_sample).
cudaError_t launch_verify_greedy(const VerifyParams& params, const int64_t* target,
                                 cudaStream_t stream);

// Inverse-CDF samples of every verify token (one block per row), then the walk.
// target_probs: (batch, N + 1, vocab) fp32; uniforms: (batch, N + 1) fp32 in [0, 1), not read
// back to be checked: a u < 0 samples token 0, a u >= 1 (or NaN) the last token of positive
// probability. samples: (batch, N + 1) int64 scratch the adapter allocates.
cudaError_t launch_verify_sample(const VerifyParams& params, const float* target_probs,
                                 int64_t vocab, const float* uniforms, int64_t* samples,
                                 cudaStream_t stream);

}  // namespace bastion
