// The loops of the CPU attention kernel (cpu_attention.cc) over one head:
// its keys and values transposed to (head_dim, N) and back, and, for a group
// of R query rows, their scores against all N keys kLanes at a time, the
// exponentials, and the products of probabilities or score gradients with
// the keys, values, queries and output gradients.

#ifndef VIVIT_JAX_MODELS_CPU_ATTENTION_ROWS_H_
#define VIVIT_JAX_MODELS_CPU_ATTENTION_ROWS_H_

#include <algorithm>
#include <cstdint>
#include <limits>

#include "cpu_parallel.h"
#include "cpu_vector_math.h"

namespace vivit_jax {

// exp(s - m) = 2^(s log2 e - c), c = m log2 e: one fused multiply-subtract
// (compilers contract s * kLog2E - c where the CPU has FMA), rounded once,
// so that the exponent is as exact as s - m's would be; c's own rounding
// shifts a row's exponents alike, which its normalisation cancels. The
// log-sum-exp (lse) is kept in base 2, c + log2(sum), for the backward pass
// to take the same exponents.
constexpr float kLog2E = 1.44269504088896341f;

// The shape of one head's arrays: n rows of d floats, stride floats apart
// (lse's rows lse_stride apart); padded = n rounded up to kLanes. The
// scores are q_scale q k^T.
struct Head {
  int64_t n, d, padded, stride, lse_stride;
  float q_scale;
};

// x (n rows, stride apart, columns of `heads` adjacent heads) -> xt
// (heads, d, padded), zero beyond n: 16 rows and 16 columns at a time
// (rows read once, in order), the columns beyond a multiple of 16 one by
// one.
inline void Transpose(const Head& h, int64_t heads, const float* x,
                      float* xt) {
  const int64_t columns = heads * h.d, blocked = columns / kLanes * kLanes;
  for (int64_t j = 0; j < h.padded; j += kLanes) {
    const int64_t rows = std::min<int64_t>(kLanes, h.n - j);
    for (int64_t c = 0; c < blocked; c += kLanes) {
      Vec block[kLanes] = {};
      for (int i = 0; i < rows; ++i)
        block[i] = LoadUnaligned(x + (j + i) * h.stride + c);
      Transpose16(block);
      for (int i = 0; i < kLanes; ++i)
        Store(xt + (c + i) * h.padded + j, block[i]);
    }
    for (int64_t c = blocked; c < columns; ++c)
      for (int i = 0; i < kLanes; ++i)
        xt[c * h.padded + j + i] = i < rows ? x[(j + i) * h.stride + c] : 0.0f;
  }
}

// xt (heads, d, padded) -> x (n rows, `stride` apart), as Transpose reads
// it.
inline void TransposeBack(const Head& h, int64_t heads, const float* xt,
                   int64_t stride, float* x) {
  const int64_t columns = heads * h.d, blocked = columns / kLanes * kLanes;
  for (int64_t j = 0; j < h.padded; j += kLanes) {
    const int64_t rows = std::min<int64_t>(kLanes, h.n - j);
    for (int64_t c = 0; c < blocked; c += kLanes) {
      Vec block[kLanes];
      for (int i = 0; i < kLanes; ++i)
        block[i] = Load(xt + (c + i) * h.padded + j);
      Transpose16(block);
      for (int i = 0; i < rows; ++i)
        StoreUnaligned(x + (j + i) * stride + c, block[i]);
    }
    for (int64_t c = blocked; c < columns; ++c)
      for (int i = 0; i < rows; ++i)
        x[(j + i) * stride + c] = xt[c * h.padded + j + i];
  }
}

// at[c][r] = scale x[r][c]: x R rows (stride apart), at (d, R), so that
// RowsTimes and AccumulateOuter find a column's R values at fixed offsets
// from one pointer.
template <int R>
void GatherColumns(const Head& h, const float* x, float scale, float* at) {
  for (int r = 0; r < R; ++r)
    for (int64_t c = 0; c < h.d; ++c)
      at[c * R + r] = scale * x[r * h.stride + c];
}

// out[r][j] = finish(r, j, sum_c at[c][r] * bt[c][j]) for j in [0, padded)
// in kLanes steps: at (d, R) (GatherColumns), bt (d, padded), out (R,
// padded).
template <int R, typename Finish>
void RowsTimes(const Head& h, const float* at, const float* bt, float* out,
               Finish finish) {
  for (int64_t j = 0; j < h.padded; j += kLanes) {
    Vec acc[R] = {};
    for (int64_t c = 0; c < h.d; ++c) {
      const Vec b = Load(bt + c * h.padded + j);
      for (int r = 0; r < R; ++r) acc[r] += at[c * R + r] * b;
    }
    for (int r = 0; r < R; ++r)
      Store(out + r * h.padded + j, finish(r, j, acc[r]));
  }
}

// Scores s of keys [j, j + kLanes), those of the padding keys beyond n set
// to -inf, so that their weights are 0.
inline Vec Masked(const Head& h, int64_t j, Vec s) {
  if (j + kLanes <= h.n) return s;
  const VecInt key = LaneIndex() + static_cast<int32_t>(j);
  return key < static_cast<int32_t>(h.n)
             ? s
             : Vec{} - std::numeric_limits<float>::infinity();
}

// out[r][c] = scale[r] * sum_j p[r][j] * bt[c][j]: p (R, padded), out R rows
// out_stride apart.
// Two columns at a time, so that each p vector loaded serves both and
// LaneSums reduces 2 R vectors at once (an odd last column is computed
// twice).
template <int R>
void RowsTimesTransposed(const Head& h, const float* p, const float* bt,
                         const float* scale, float* out, int64_t out_stride) {
  for (int64_t c = 0; c < h.d; c += 2) {
    const int columns = h.d - c > 1 ? 2 : 1;
    const float* b0 = bt + c * h.padded;
    const float* b1 = b0 + (columns - 1) * h.padded;
    Vec acc[2 * R] = {};
    for (int64_t j = 0; j < h.padded; j += kLanes) {
      const Vec x0 = Load(b0 + j), x1 = Load(b1 + j);
      for (int r = 0; r < R; ++r) {
        const Vec pr = Load(p + r * h.padded + j);
        acc[r] += pr * x0;
        acc[R + r] += pr * x1;
      }
    }
    float sums[2 * R];
    LaneSums<2 * R>(acc, sums);
    for (int k = 0; k < columns; ++k)
      for (int r = 0; r < R; ++r)
        out[r * out_stride + c + k] = scale[r] * sums[k * R + r];
  }
}

// acc[c][j] += sum_r ct[c][r] * p[r][j]: ct (d, R) (GatherColumns), acc
// (d, padded).
// Two columns c at a time, so that each p vector loaded serves both (an odd
// last column is added alone). The coefficients are broadcast into
// registers once per column pair: read in the loop, they would be read
// again after every store into acc (which the compiler cannot tell apart
// from ct).
template <int R>
void AccumulateOuter(const Head& h, const float* ct, const float* p,
                     float* acc) {
  for (int64_t c = 0; c < h.d; c += 2) {
    const bool pair = c + 1 < h.d;
    Vec weight[2][R];
    for (int r = 0; r < R; ++r) {
      weight[0][r] = Vec{} + ct[c * R + r];
      weight[1][r] = pair ? Vec{} + ct[(c + 1) * R + r] : Vec{};
    }
    float* row0 = acc + c * h.padded;
    float* row1 = pair ? row0 + h.padded : row0;
    for (int64_t j = 0; j < h.padded; j += kLanes) {
      Vec sum0 = Load(row0 + j), sum1 = {};
      for (int r = 0; r < R; ++r) {
        const Vec pr = Load(p + r * h.padded + j);
        sum0 += weight[0][r] * pr;
        sum1 += weight[1][r] * pr;
      }
      Store(row0 + j, sum0);
      if (pair) Store(row1 + j, Load(row1 + j) + sum1);
    }
  }
}

// 2^(s[r][j] log2 e - offset[r]) in place; row r's sum in total[r].
template <int R>
void ExpRows(const Head& h, float* s, const float* offset, float* total) {
  for (int r = 0; r < R; ++r) {
    const float row_offset = offset[r];  // Not reloaded after each store.
    Vec sum = {};
    for (int64_t j = 0; j < h.padded; j += kLanes) {
      const Vec e = Exp2(Load(s + r * h.padded + j) * kLog2E - row_offset);
      Store(s + r * h.padded + j, e);
      sum += e;
    }
    total[r] = Sum(sum);
  }
}

}  // namespace vivit_jax

#endif  // VIVIT_JAX_MODELS_CPU_ATTENTION_ROWS_H_
