// Reductions, the exponential and a 16 x 16 transpose of float vectors, for
// the fused CPU kernels.

#ifndef VIVIT_JAX_MODELS_CPU_VECTOR_MATH_H_
#define VIVIT_JAX_MODELS_CPU_VECTOR_MATH_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu_parallel.h"

namespace vivit_jax {

typedef int32_t VecInt __attribute__((vector_size(kLanes * sizeof(int32_t))));

typedef float Vec8 __attribute__((vector_size(8 * sizeof(float))));

// 0, 1, ..., kLanes - 1.
inline VecInt LaneIndex() {
  static_assert(kLanes == 16, "LaneIndex lists 16 lanes");
  return VecInt{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
}
typedef float Vec4 __attribute__((vector_size(4 * sizeof(float))));

// Sum of the lanes, halving: (x[i] + x[i + 8]), then + 4, + 2, + 1.
inline float Sum(Vec x) {
  const Vec8 x8 = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) +
                  __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
  const Vec4 x4 = __builtin_shufflevector(x8, x8, 0, 1, 2, 3) +
                  __builtin_shufflevector(x8, x8, 4, 5, 6, 7);
  return (x4[0] + x4[2]) + (x4[1] + x4[3]);
}

// a's lanes, then b's, in groups of 2 W, each group's two halves added:
// lane c of the result is lane c % W plus lane c % W + W of group c / W.
template <int W, int... C>
Vec AddHalves(Vec a, Vec b, std::integer_sequence<int, C...>) {
  return __builtin_shufflevector(a, b, (2 * W * (C / W) + C % W)...) +
         __builtin_shufflevector(a, b, (2 * W * (C / W) + W + C % W)...);
}

// The lane sums of 16 vectors as one vector, lane i being Sum(x[i]) bit for
// bit (the same additions in the same order), each shuffle serving two
// vectors: pairs are halved to 8 lanes each, those pairs to 4, then 2, 1.
inline Vec Sums16(const Vec* x) {
  static_assert(kLanes == 16, "Sums16 takes 16 lanes");
  const auto lanes = std::make_integer_sequence<int, kLanes>();
  Vec v[8];
  for (int i = 0; i < 8; ++i)
    v[i] = AddHalves<8>(x[2 * i], x[2 * i + 1], lanes);
  for (int i = 0; i < 4; ++i)
    v[i] = AddHalves<4>(v[2 * i], v[2 * i + 1], lanes);
  for (int i = 0; i < 2; ++i)
    v[i] = AddHalves<2>(v[2 * i], v[2 * i + 1], lanes);
  return AddHalves<1>(v[0], v[1], lanes);
}

// Swaps bit H of the row and column indices of 16 rows of 16 floats: one
// of the four stages of a 16 x 16 transpose.
template <int H, int... C>
void TransposeStage(Vec* rows, std::integer_sequence<int, C...>) {
  for (int i = 0; i < kLanes; ++i) {
    if (i & H) continue;
    const Vec a = rows[i], b = rows[i + H];
    rows[i] = __builtin_shufflevector(a, b, ((C & H) ? kLanes + C - H : C)...);
    rows[i + H] =
        __builtin_shufflevector(a, b, ((C & H) ? kLanes + C : C + H)...);
  }
}

// rows[i][c] <- rows[c][i].
inline void Transpose16(Vec* rows) {
  static_assert(kLanes == 16, "Transpose16 takes 16 lanes");
  const auto lanes = std::make_integer_sequence<int, kLanes>();
  TransposeStage<1>(rows, lanes);
  TransposeStage<2>(rows, lanes);
  TransposeStage<4>(rows, lanes);
  TransposeStage<8>(rows, lanes);
}

// sums[i] = Sum(x[i]) for i < N.
template <int N>
void LaneSums(const Vec* x, float* sums) {
  if constexpr (N == 16) {
    StoreUnaligned(sums, Sums16(x));
  } else {
    for (int i = 0; i < N; ++i) sums[i] = Sum(x[i]);
  }
}

inline float Max(Vec x) {
  const Vec8 a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7);
  const Vec8 b = __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
  const Vec8 x8 = a > b ? a : b;
  const Vec4 c = __builtin_shufflevector(x8, x8, 0, 1, 2, 3);
  const Vec4 d = __builtin_shufflevector(x8, x8, 4, 5, 6, 7);
  const Vec4 x4 = c > d ? c : d;
  return std::max(std::max(x4[0], x4[2]), std::max(x4[1], x4[3]));
}

// c[0] r^(N-1) + c[1] r^(N-2) + ... + c[N-1], by Horner's rule.
template <size_t N>
inline Vec Horner(Vec r, const float (&c)[N]) {
  Vec p = Vec{} + c[0];
  for (size_t i = 1; i < N; ++i) p = p * r + c[i];
  return p;
}

// exp(x) to about 1 ulp: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by Cephes'
// polynomial, times 2^n. 0 below -87.3 (and for -inf), as float32
// underflows there.
inline Vec ExpOfReduced(Vec x, Vec n) {
  Vec r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  const Vec p = Horner(r, {1.9875691500e-4f, 1.3981999507e-3f,
                           8.3334519073e-3f, 4.1665795894e-2f,
                           1.6666665459e-1f, 5.0000001201e-1f});
  return p * (r * r) + r + 1.0f;
}

// 2^r for |r| <= 1/2: a minimax polynomial of degree 6 (relative error
// 2e-9, about 1 ulp in float32 by Horner's rule).
inline Vec Exp2OfReduced(Vec r) {
  return Horner(r, {1.5356125368e-4f, 1.3398816810e-3f, 9.6184276044e-3f,
                    5.5503327399e-2f, 2.4022647738e-1f, 6.9314718246e-1f,
                    1.0f});
}

#if defined(__AVX512F__)
// x rounded to the nearest integer.
inline Vec Round(Vec x) {
  return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// y 2^n (n integral) by AVX-512's scalef, 0 in the lanes where x < lowest,
// zeroed by the same instruction.
inline Vec TimesPowerOf2(Vec y, Vec n, Vec x, float lowest) {
  const __mmask16 kept =
      _mm512_cmp_ps_mask(x, _mm512_set1_ps(lowest), _CMP_GE_OQ);
  return _mm512_maskz_scalef_ps(kept, y, n);
}

// exp(x), 0 below -87.3 (and for -inf): about 14 instructions per vector,
// against about 21 below.
inline Vec Exp(Vec x) {
  const Vec n = Round(x * 1.44269504088896341f);
  return TimesPowerOf2(ExpOfReduced(x, n), n, x, -87.3f);
}

// 2^x, 0 below -126 (and for -inf): x = n + r, |r| <= 1/2 (exactly).
inline Vec Exp2(Vec x) {
  const Vec n = Round(x);
  return TimesPowerOf2(Exp2OfReduced(x - n), n, x, -126.0f);
}
#else
// Integral x in [-126, 127] -> 2^x.
inline Vec PowerOf2(Vec n) {
  const VecInt bits = (__builtin_convertvector(n, VecInt) + 127) << 23;
  return reinterpret_cast<const Vec&>(bits);
}

// x rounded to the nearest integer, for |x| < 2^22.
inline Vec Round(Vec x) {
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to int.
  return (x + magic) - magic;
}

// exp(x), with x clamped to where 2^n's bits exist.
inline Vec Exp(Vec x) {
  const VecInt underflow = x < -87.3f;
  x = underflow ? Vec{} - 87.3f : x;
  x = x > 88.3f ? Vec{} + 88.3f : x;
  const Vec n = Round(x * 1.44269504088896341f);
  const Vec result = ExpOfReduced(x, n) * PowerOf2(n);
  return underflow ? Vec{} : result;
}

// 2^x, 0 below -126 (and for -inf), x clamped as in Exp.
inline Vec Exp2(Vec x) {
  const VecInt underflow = x < -126.0f;
  x = underflow ? Vec{} - 126.0f : x;
  x = x > 127.0f ? Vec{} + 127.0f : x;
  const Vec n = Round(x);
  const Vec result = Exp2OfReduced(x - n) * PowerOf2(n);
  return underflow ? Vec{} : result;
}
#endif

}  // namespace vivit_jax

#endif  // VIVIT_JAX_MODELS_CPU_VECTOR_MATH_H_
