// CPU backend of bastion_ext::compact_kv: after a verify forward wrote the root and the tree
// nodes of request b at cache slots cache_lens[b] .. cache_lens[b] + N, move the accepted
// path's entries to the slots right after the root, in path order (docs/ops.md).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#include "compact_kv.h"

namespace bastion {
namespace {

// The checked (source slot, destination slot) pairs of request b. A path whose nodes do not
// increase, or that points past the cache, raises: the op never moves a wrong entry.
std::vector<std::pair<int64_t, int64_t>> moves_of(int64_t b, int64_t cache_len, const int32_t* nodes,
                                                  int32_t length, int64_t positions, int64_t slots) {
  TORCH_CHECK_VALUE(length >= 0 && length <= positions, "accept_len must be in [0, positions = ",
                    positions, "], got ", length, " at batch ", b);
  TORCH_CHECK_VALUE(cache_len >= 0 && cache_len < slots, "cache_lens must be in [0, slots = ", slots,
                    "), got ", cache_len, " at batch ", b);
  std::vector<std::pair<int64_t, int64_t>> moves;
  int32_t previous = -1;
  for (int32_t j = 0; j < length; ++j) {
    const int32_t node = nodes[j];
    TORCH_CHECK_VALUE(node > previous, "accepted_nodes must increase along the path, got ", node,
                      " after ", previous, " at batch ", b);
    const int64_t source = cache_len + 1 + node;
    TORCH_CHECK_VALUE(source < slots, "accepted_nodes entry ", node, " at batch ", b,
                      " points past the cache (slot ", source, " of ", slots, ")");
    if (node != j) moves.emplace_back(source, cache_len + 1 + j);
    previous = node;
  }
  return moves;
}

void compact_kv_cpu(at::Tensor& cache, const at::Tensor& cache_lens, const at::Tensor& accepted_nodes,
                    const at::Tensor& accept_len) {
  check_compact_kv_args(cache, cache_lens, accepted_nodes, accept_len);
  const int64_t stacked = cache.size(0), batch = cache.size(1), heads = cache.size(2);
  const int64_t slots = cache.size(3);
  const int64_t row_bytes = cache.size(4) * cache.element_size();
  const auto lens = cache_lens.contiguous();
  const auto nodes = accepted_nodes.contiguous();
  const auto length = accept_len.contiguous();
  const int64_t positions = nodes.size(1);
  std::vector<std::vector<std::pair<int64_t, int64_t>>> moves(batch);
  for (int64_t b = 0; b < batch; ++b) {  // every check before the first write
    moves[b] = moves_of(b, lens.data_ptr<int64_t>()[b], nodes.data_ptr<int32_t>() + b * positions,
                        length.data_ptr<int32_t>()[b], positions, slots);
  }
  auto* base = static_cast<char*>(cache.data_ptr());
  // Destinations precede their sources and increase, so moving in path order never
  // overwrites a source still to be read.
  at::parallel_for(0, stacked * batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = (row / heads) % batch;
      char* head = base + row * slots * row_bytes;
      for (const auto& [source, dest] : moves[b]) {
        std::memcpy(head + dest * row_bytes, head + source * row_bytes, row_bytes);
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(bastion_ext, CPU, m) { m.impl("compact_kv", &compact_kv_cpu); }

}  // namespace bastion
