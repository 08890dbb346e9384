// CUDA build_tree (docs/ops.md), framework-free: raw pointers, a params struct and a stream.
// The torch adapter (build_tree_cuda.cpp, behind the checks of build_tree_args.h) sizes the
// workspace and calls launch_build_tree; nothing here knows about torch, so the .cu compiles with nvcc alone.
//
// Two kernels, both on `stream`, no host sync, no allocation:
//   1. topk_scan_kernel, grid (splits, batch * positions): each block scans one slice of one
//      logit row once, keeping a running fp64 (max, sum exp) pair and the slice's top-k as
//      64-bit sort keys; it writes them to the workspace. Splitting rows over several blocks
//      is what lets B = 1 use the whole GPU.
//   2. expand_kernel, grid (batch): merges the slices of each position (top-k, lse, logq),
//      runs the best-first expansion with its heap in shared memory, cuts by policy and
//      writes every output element, ancestor rows included.
//
// The scan is bound by fp64 exp at large batch (docs/ops.md asks for an fp64 log-sum-exp);
// the expansion is one thread popping a 4-ary heap (exact heap order, ties included), so
// its cost grows with N at a few hundred cycles per node. The merge, the cut and the output
// writes are block-parallel.
//
// A request whose logits hold NaN or +inf, or a row that is all -inf, cannot raise here
// (raising needs a host sync): its tree is written as all padding with n_nodes = 0. To have
// such values rejected, build on the CPU, whose op reads and checks them.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace bastion {

// Logit element types the kernels read (each widened exactly to fp32).
enum class LogitDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct BuildTreeParams {
  // Inputs. draft_logits: (batch, positions, vocab) contiguous, of `logit_dtype`.
  const void* draft_logits;
  LogitDType logit_dtype;
  const int64_t* context_lens;  // (batch,)
  const int32_t* budgets;       // (batch,); clamped to [1, max_nodes] (the adapter cannot read them)
  const float* latency_table;   // (latency_rows, max_nodes) or nullptr (fixed policy only)
  int latency_rows;             // 1 or batch
  const float* accept_scale;    // (accept_rows,) or nullptr (1.0)
  int accept_rows;              // 1 or batch
  int batch;
  int positions;                // P <= kMaxPositions
  int64_t vocab;
  int k;                        // 1 <= k <= min(vocab, kMaxK)
  int max_nodes;                // N <= kMaxNodes
  int words;                    // ceil(N / 32)
  int policy;                   // bastion::Policy value
  int splits;                   // blocks per logit row in the scan kernel (see choose_row_splits)

  // Outputs, contiguous, shaped as in docs/ops.md.
  int64_t* tokens;              // (batch, N)
  int32_t* parents;             // (batch, N)
  int32_t* depth;               // (batch, N)
  int64_t* positions_out;       // (batch, N)
  float* scores;                // (batch, N)
  int32_t* n_nodes;             // (batch,)
  int32_t* ancestor_bits;       // (batch, N, words)
  int32_t* first_child;         // (batch, N + 1)
  int32_t* next_sibling;        // (batch, N)

  // Scratch of build_tree_workspace_bytes(batch, positions, splits) bytes, 16-byte aligned;
  // fully rewritten by every call, so it needs no initialisation.
  void* workspace;
};

// How many blocks should scan one logit row: enough blocks to cover about two waves of
// `num_sms`, never slices shorter than a few thousand logits, at most 8 slices (the merge
// in expand_kernel ranks splits * k keys per position).
int choose_row_splits(int batch, int positions, int64_t vocab, int num_sms);

// Bytes of workspace launch_build_tree needs.
size_t build_tree_workspace_bytes(int batch, int positions, int splits);

// Dynamic shared memory of expand_kernel: the larger of the per-position merge buffers and
// the tree arrays for capacity max_nodes.
size_t expand_shared_bytes(int max_nodes, int positions, int splits, int k);

// Enqueues both kernels on `stream`. Returns the first launch error (cudaSuccess if none).
cudaError_t launch_build_tree(const BuildTreeParams& params, cudaStream_t stream);

}  // namespace bastion
