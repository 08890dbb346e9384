// Limits and enums shared by every backend of the bastion_ext ops (CPU and CUDA).
// Framework-free: included by host C++ and by device code alike.
#pragma once

#include <cstdint>

namespace bastion {

// Top-K width per draft position: the CUDA kernel keeps K candidates per position in
// registers / shared memory, so K has a hard ceiling.
constexpr int kMaxK = 64;
// Draft positions (block length of the drafter); depth fits comfortably in a small int.
constexpr int kMaxPositions = 32;
// Tree capacity: ancestor rows are ceil(N / 32) words, and one block builds one tree.
constexpr int kMaxNodes = 4096;
// Context length (a request's root position): node positions are context_len + depth, so
// anything near INT64_MAX would wrap; 2^62 leaves room for every depth.
constexpr int64_t kMaxContextLen = int64_t{1} << 62;

// Where the pop sequence is cut (docs/ops.md, build_tree step 3). Values are the `policy`
// ints of the op schema.
enum class Policy : int64_t {
  kFixed = 0,
  kGreedyStop = 1,
  kArgmax = 2,
};
constexpr int64_t kNumPolicies = 3;

}  // namespace bastion
