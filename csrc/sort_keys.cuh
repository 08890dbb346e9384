// 64-bit sort keys and the block-wide bitonic sort the CUDA tree builder selects with.
// A key orders (value desc, id asc) as one unsigned integer, so "larger key first" is the
// exact order of docs/ops.md: larger logit first, ties to the smaller token id; larger path
// score first, ties to the smaller push sequence number. Every key is distinct and key 0
// means "no entry".
#pragma once

#include <cstdint>

namespace bastion {

// fp32 bits mapped so that unsigned comparison matches float comparison (except that -0
// sorts below +0). NaN never reaches here.
__device__ __forceinline__ uint32_t ordered_bits(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float from_ordered_bits(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

// High word: the value; low word: the id inverted so that the smaller id gives the larger key.
// -0 and +0 are equal values, so both take +0's key and the id alone breaks their tie.
// Real keys are never 0: ordered_bits of any float above -inf exceeds 0x007fffff.
__device__ __forceinline__ uint64_t make_key(float value, uint32_t id) {
  const float canonical = value == 0.0f ? 0.0f : value;
  return (static_cast<uint64_t>(ordered_bits(canonical)) << 32) | static_cast<uint32_t>(~id);
}

__device__ __forceinline__ float key_value(uint64_t key) {
  return from_ordered_bits(static_cast<uint32_t>(key >> 32));
}

__device__ __forceinline__ uint32_t key_id(uint64_t key) {
  return ~static_cast<uint32_t>(key);
}

// Sorts keys[0, size) descending; size a power of two. Every thread of the block must call
// it; it synchronises the block before and after.
__device__ inline void bitonic_sort_desc(uint64_t* keys, int size) {
  __syncthreads();
  for (int len = 2; len <= size; len <<= 1) {
    for (int stride = len >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < size / 2; i += blockDim.x) {
        const int lo = 2 * i - (i & (stride - 1));
        const int hi = lo + stride;
        // Runs with bit `len` clear end up descending; the final pass (len == size) is one run.
        const bool descending = (lo & len) == 0;
        const uint64_t a = keys[lo];
        const uint64_t b = keys[hi];
        if ((a < b) == descending) {
          keys[lo] = b;
          keys[hi] = a;
        }
      }
      __syncthreads();
    }
  }
}

}  // namespace bastion
