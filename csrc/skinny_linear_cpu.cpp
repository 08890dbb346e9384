// skinny_linear on the CPU: out (M, N) = x (M, K) @ weight (N, K)^T in fp32, for the few rows
// of a decode step or a tree verify (M from 1 to a few dozen).
//
// Why: at those M the BLAS GEMM of torch's CPU wheel is far off the weight-streaming bound
// that decoding sits on (on an AMD EPYC, AVX2, 2 threads: the 49152 x 576 lm_head took 9.8 ms
// for one row, 19.5 ms for two and 26 ms for 17), so a verify of one tree node cost 1.7 plain
// steps. Here each weight row is read once per call and dotted with every row of x, which
// stays in cache: a tile of 4 x rows by 3 weight rows keeps 12 accumulators, 3 weight vectors
// and 1 x vector in the 16 AVX2 registers.
//
// Every output is summed in one fixed order, whatever M, the tile or the thread computing it:
// 8 lane sums over k in steps of 8 (fused multiply-add), folded as ((l0+l4)+(l1+l5)) +
// ((l2+l6)+(l3+l7)), then the K % 8 last terms by fused multiply-add in order. So a row's
// output does not depend on the other rows of the call (a verify's root row equals the plain
// step's), and the portable path, taken without AVX2 and FMA, gives the same bits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define BASTION_X86 1
#endif

#include "checks.h"

namespace bastion {
namespace {

constexpr int kLanes = 8;
constexpr int kTileRows = 4;     // x rows of a tile
constexpr int kTileOutputs = 3;  // weight rows (outputs) of a tile
// Weight rows per parallel task: a task streams at least this many (about 110 KB at K = 576).
constexpr int64_t kGrainOutputs = 48;

inline float fold(const float lane[kLanes]) {
  const float a0 = lane[0] + lane[4], a1 = lane[1] + lane[5], a2 = lane[2] + lane[6], a3 = lane[3] + lane[7];
  return (a0 + a1) + (a2 + a3);
}

// One tile, portable: MR x rows (stride K) by NR weight rows (stride K) into out (stride N).
template <int MR, int NR>
void tile_portable(const float* x, const float* w, int64_t K, float* out, int64_t N) {
  const int64_t body = K / kLanes * kLanes;
  for (int m = 0; m < MR; ++m) {
    for (int n = 0; n < NR; ++n) {
      float lane[kLanes] = {};
      for (int64_t k = 0; k < body; k += kLanes)
        for (int l = 0; l < kLanes; ++l) lane[l] = std::fma(x[m * K + k + l], w[n * K + k + l], lane[l]);
      float sum = fold(lane);
      for (int64_t k = body; k < K; ++k) sum = std::fma(x[m * K + k], w[n * K + k], sum);
      out[m * N + n] = sum;
    }
  }
}

#ifdef BASTION_X86
__attribute__((target("avx2,fma"))) inline float fold_avx2(__m256 v) {
  // The lanes' order of fold(): (l + l+4), then (0+1) and (2+3), then their sum.
  __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 pairs = _mm_add_ps(a, _mm_movehdup_ps(a));  // [a0+a1, ., a2+a3, .]
  return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehl_ps(pairs, pairs)));
}

template <int MR, int NR>
__attribute__((target("avx2,fma"))) void tile_avx2(const float* x, const float* w, int64_t K, float* out, int64_t N) {
  __m256 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_setzero_ps();
  const int64_t body = K / kLanes * kLanes;
  for (int64_t k = 0; k < body; k += kLanes) {
    __m256 wv[NR];
    for (int n = 0; n < NR; ++n) wv[n] = _mm256_loadu_ps(w + n * K + k);
    for (int m = 0; m < MR; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + m * K + k);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_fmadd_ps(xv, wv[n], acc[m][n]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int n = 0; n < NR; ++n) {
      float sum = fold_avx2(acc[m][n]);
      for (int64_t k = body; k < K; ++k) sum = std::fma(x[m * K + k], w[n * K + k], sum);
      out[m * N + n] = sum;
    }
  }
}

bool has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

template <int NR>
void tile(int mr, const float* x, const float* w, int64_t K, float* out, int64_t N) {
#ifdef BASTION_X86
  if (has_avx2_fma()) {
    switch (mr) {
      case 4: return tile_avx2<4, NR>(x, w, K, out, N);
      case 3: return tile_avx2<3, NR>(x, w, K, out, N);
      case 2: return tile_avx2<2, NR>(x, w, K, out, N);
      default: return tile_avx2<1, NR>(x, w, K, out, N);
    }
  }
#endif
  switch (mr) {
    case 4: return tile_portable<4, NR>(x, w, K, out, N);
    case 3: return tile_portable<3, NR>(x, w, K, out, N);
    case 2: return tile_portable<2, NR>(x, w, K, out, N);
    default: return tile_portable<1, NR>(x, w, K, out, N);
  }
}

// Weight rows [n0, n1) against every x row.
void outputs(const float* x, int64_t M, const float* w, int64_t K, float* out, int64_t N, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1;) {
    const bool full = n1 - n >= kTileOutputs;
    for (int64_t m = 0; m < M; m += kTileRows) {
      const int mr = static_cast<int>(std::min<int64_t>(kTileRows, M - m));
      if (full)
        tile<kTileOutputs>(mr, x + m * K, w + n * K, K, out + m * N + n, N);
      else
        tile<1>(mr, x + m * K, w + n * K, K, out + m * N + n, N);
    }
    n += full ? kTileOutputs : 1;
  }
}

at::Tensor skinny_linear_cpu(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK_VALUE(x.dim() == 2, "x must be 2-D [rows, in_features], got shape ", shape_str(x));
  TORCH_CHECK_VALUE(weight.dim() == 2, "weight must be 2-D [out_features, in_features], got shape ",
                    shape_str(weight));
  check_dtype(x, "x", at::kFloat);
  check_dtype(weight, "weight", at::kFloat);
  check_device(weight, "weight", x, "x");
  TORCH_CHECK_VALUE(x.size(1) == weight.size(1), "weight must have shape (out_features, ", x.size(1),
                    ") to match x, got shape ", shape_str(weight));
  TORCH_CHECK_VALUE(x.is_contiguous(), "x must be contiguous");
  TORCH_CHECK_VALUE(weight.is_contiguous(), "weight must be contiguous");
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  // Tasks own disjoint weight rows; an output does not depend on the task or the tile computing it.
  at::parallel_for(0, N, kGrainOutputs, [&](int64_t n0, int64_t n1) { outputs(xp, M, wp, K, op, N, n0, n1); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bastion_ext, CPU, m) { m.impl("skinny_linear", &skinny_linear_cpu); }

}  // namespace bastion
