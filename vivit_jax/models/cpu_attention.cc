// Softmax attention of many small heads, fused for CPUs: an XLA FFI kernel.
//
// One head at a time, per thread of XLA's intra-op pool: its keys and values
// are transposed to (head_dim, N) once, then each group of kRows query rows
// computes its scores against all N keys (kRows x N floats, in L1), their
// softmax and the output, without ever holding an N x N matrix. The backward
// pass recomputes the probabilities from the saved log-sum-exp of each row
// (as FlashAttention, Dao et al. 2022) and accumulates dK and dV in the
// transposed layout. Inner loops run over the key axis, kLanes keys at a
// time, so they stay vectorised whatever head_dim is (8 in the term
// project's ViViT, where XLA's matmuls contract over 8 and run at 5-15% of
// the machine's peak).
//
// Arrays keep the projections' layout (..., N, heads, head_dim): a head's
// rows are heads * head_dim floats apart, so no transposes into a
// heads-first layout are needed around the kernel.
// Forward: q (already scaled by 1/sqrt(head_dim)), k, v -> out (same shape),
// lse (..., N, heads). Backward: q, k, v, out, lse, d_out -> dq (with respect
// to the scaled q), dk, dv.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu_parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace vivit_jax {
namespace {

constexpr int kRows = 8;
typedef int32_t VecInt __attribute__((vector_size(kLanes * sizeof(int32_t))));

typedef float Vec8 __attribute__((vector_size(8 * sizeof(float))));
typedef float Vec4 __attribute__((vector_size(4 * sizeof(float))));

// Sum of the lanes, halving: (x[i] + x[i + 8]), then + 4, + 2, + 1.
inline float Sum(Vec x) {
  const Vec8 x8 = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) +
                  __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
  const Vec4 x4 = __builtin_shufflevector(x8, x8, 0, 1, 2, 3) +
                  __builtin_shufflevector(x8, x8, 4, 5, 6, 7);
  return (x4[0] + x4[2]) + (x4[1] + x4[3]);
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

// exp(x) to about 1 ulp: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by Cephes'
// polynomial, times 2^n. 0 below -87.3 (and for -inf), as float32
// underflows there.
inline Vec ExpOfReduced(Vec x, Vec n) {
  Vec r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  Vec p = Vec{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * (r * r) + r + 1.0f;
}

#if defined(__AVX512F__)
// 2^n by AVX-512's scalef, with the lanes below -87.3 zeroed by the same
// instruction: about 14 instructions per vector, against about 21 below.
inline Vec Exp(Vec x) {
  const __m512 v = x;
  const __mmask16 kept = _mm512_cmp_ps_mask(v, _mm512_set1_ps(-87.3f),
                                            _CMP_GE_OQ);
  const __m512 n = _mm512_roundscale_ps(
      _mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_maskz_scalef_ps(kept, ExpOfReduced(x, n), n);
}
#else
// 2^n by building the exponent bits, with x clamped to where they exist.
inline Vec Exp(Vec x) {
  const VecInt underflow = x < -87.3f;
  x = underflow ? Vec{} - 87.3f : x;
  x = x > 88.3f ? Vec{} + 88.3f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to int.
  const Vec shifted = x * 1.44269504088896341f + magic;
  const Vec n = shifted - magic;
  const VecInt n_int = reinterpret_cast<const VecInt&>(shifted) -
                       VecInt{} - 0x4B400000;
  const VecInt bits = (n_int + 127) << 23;
  const Vec result = ExpOfReduced(x, n) * reinterpret_cast<const Vec&>(bits);
  return underflow ? Vec{} : result;
}
#endif

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using Floats = std::unique_ptr<float[], AlignedFree>;

Floats Allocate(int64_t count) {
  const int64_t bytes = ((count * 4 + 63) / 64) * 64;
  return Floats(static_cast<float*>(std::aligned_alloc(64, bytes)));
}

// The shape of one head's arrays: n rows of d floats, stride floats apart
// (lse's rows lse_stride apart); padded = n rounded up to kLanes.
struct Head {
  int64_t n, d, padded, stride, lse_stride;
};

// One head's x (n rows, stride apart, d columns) -> xt (d, padded), zero
// beyond n.
void Transpose(const Head& h, const float* x, float* xt) {
  for (int64_t j = 0; j < h.n; ++j)
    for (int64_t c = 0; c < h.d; ++c)
      xt[c * h.padded + j] = x[j * h.stride + c];
  for (int64_t c = 0; c < h.d; ++c)
    for (int64_t j = h.n; j < h.padded; ++j) xt[c * h.padded + j] = 0.0f;
}

// xt (d, padded) -> one head's x (n rows, stride apart, d columns).
void TransposeBack(const Head& h, const float* xt, float* x) {
  for (int64_t j = 0; j < h.n; ++j)
    for (int64_t c = 0; c < h.d; ++c)
      x[j * h.stride + c] = xt[c * h.padded + j];
}

// out[r][j] = sum_c a[r][c] * bt[c][j]: a R rows, bt (d, padded).
template <int R>
void RowsTimes(const Head& h, const float* a, const float* bt, float* out) {
  for (int64_t j = 0; j < h.padded; j += kLanes) {
    Vec acc[R] = {};
    for (int64_t c = 0; c < h.d; ++c) {
      const Vec b = Load(bt + c * h.padded + j);
      for (int r = 0; r < R; ++r) acc[r] += a[r * h.stride + c] * b;
    }
    for (int r = 0; r < R; ++r) Store(out + r * h.padded + j, acc[r]);
  }
}

// out[r][c] = scale[r] * sum_j p[r][j] * bt[c][j]: p (R, padded), out R rows.
template <int R>
void RowsTimesTransposed(const Head& h, const float* p, const float* bt,
                         const float* scale, float* out) {
  for (int64_t c = 0; c < h.d; ++c) {
    Vec acc[R] = {};
    const float* b = bt + c * h.padded;
    for (int64_t j = 0; j < h.padded; j += kLanes) {
      const Vec bj = Load(b + j);
      for (int r = 0; r < R; ++r) acc[r] += Load(p + r * h.padded + j) * bj;
    }
    for (int r = 0; r < R; ++r) out[r * h.stride + c] = scale[r] * Sum(acc[r]);
  }
}

// acc[c][j] += sum_r coef[r][c] * p[r][j]: coef R rows, acc (d, padded).
// The coefficients are broadcast into registers once per c: read in the
// loop, they would be read again after every store into acc (which the
// compiler cannot tell apart from coef).
template <int R>
void AccumulateOuter(const Head& h, const float* coef, const float* p,
                     float* acc) {
  for (int64_t c = 0; c < h.d; ++c) {
    Vec weight[R];
    for (int r = 0; r < R; ++r) weight[r] = Vec{} + coef[r * h.stride + c];
    float* row = acc + c * h.padded;
    for (int64_t j = 0; j < h.padded; j += kLanes) {
      Vec even = Load(row + j), odd = {};  // Two chains of multiply-adds.
      for (int r = 0; r < R; ++r)
        (r % 2 ? odd : even) += weight[r] * Load(p + r * h.padded + j);
      Store(row + j, even + odd);
    }
  }
}

// Scores of the padding keys beyond n: -inf, so that their weights are 0.
template <int R>
void MaskPadding(const Head& h, float* s) {
  for (int r = 0; r < R; ++r)
    for (int64_t j = h.n; j < h.padded; ++j)
      s[r * h.padded + j] = -std::numeric_limits<float>::infinity();
}

// exp(s[r][j] - offset[r]) in place.
template <int R>
void ExpRows(const Head& h, float* s, const float* offset) {
  for (int r = 0; r < R; ++r) {
    const float row_offset = offset[r];  // Not reloaded after each store.
    for (int64_t j = 0; j < h.padded; j += kLanes)
      Store(s + r * h.padded + j, Exp(Load(s + r * h.padded + j) - row_offset));
  }
}

// Scratch of one thread: transposed keys and values (and their gradients),
// and kRows rows of scores and of score gradients.
struct Scratch {
  explicit Scratch(const Head& h)
      : kt(Allocate(h.d * h.padded)), vt(Allocate(h.d * h.padded)),
        dkt(Allocate(h.d * h.padded)), dvt(Allocate(h.d * h.padded)),
        s(Allocate(kRows * h.padded)), ds(Allocate(kRows * h.padded)) {}
  Floats kt, vt, dkt, dvt, s, ds;
};

// Rows [row, row + R) of one head's output and log-sum-exp.
template <int R>
void ForwardRows(const Head& h, const float* q, Scratch& w, float* out,
                 float* lse) {
  RowsTimes<R>(h, q, w.kt.get(), w.s.get());
  MaskPadding<R>(h, w.s.get());
  float row_max[R], inverse_total[R];
  for (int r = 0; r < R; ++r) {
    const float* row = w.s.get() + r * h.padded;
    Vec largest = Load(row);
    for (int64_t j = kLanes; j < h.padded; j += kLanes)
      largest = largest > Load(row + j) ? largest : Load(row + j);
    row_max[r] = Max(largest);
  }
  ExpRows<R>(h, w.s.get(), row_max);
  for (int r = 0; r < R; ++r) {
    const float* row = w.s.get() + r * h.padded;
    Vec total = {};
    for (int64_t j = 0; j < h.padded; j += kLanes) total += Load(row + j);
    const float sum = Sum(total);
    inverse_total[r] = 1.0f / sum;
    lse[r * h.lse_stride] = row_max[r] + std::log(sum);
  }
  RowsTimesTransposed<R>(h, w.s.get(), w.vt.get(), inverse_total, out);
}

// dq of rows [row, row + R); their terms of dk and dv added to w.dkt, w.dvt.
template <int R>
void BackwardRows(const Head& h, const float* q, const float* out,
                  const float* lse, const float* d_out, Scratch& w,
                  float* dq) {
  float row_lse[R], ones[R];
  for (int r = 0; r < R; ++r) row_lse[r] = lse[r * h.lse_stride];
  std::fill(ones, ones + R, 1.0f);
  RowsTimes<R>(h, q, w.kt.get(), w.s.get());
  MaskPadding<R>(h, w.s.get());
  ExpRows<R>(h, w.s.get(), row_lse);  // the probabilities P
  RowsTimes<R>(h, d_out, w.vt.get(), w.ds.get());  // dP
  for (int r = 0; r < R; ++r) {
    float delta = 0.0f;
    for (int64_t c = 0; c < h.d; ++c)
      delta += d_out[r * h.stride + c] * out[r * h.stride + c];
    const float* p = w.s.get() + r * h.padded;
    float* dp = w.ds.get() + r * h.padded;
    for (int64_t j = 0; j < h.padded; j += kLanes)
      Store(dp + j, Load(p + j) * (Load(dp + j) - delta));  // dS
  }
  RowsTimesTransposed<R>(h, w.ds.get(), w.kt.get(), ones, dq);
  AccumulateOuter<R>(h, q, w.ds.get(), w.dkt.get());
  AccumulateOuter<R>(h, d_out, w.s.get(), w.dvt.get());
}

// Calls Rows<R>::Run(first_row, args...) over [0, n) in groups of kRows,
// then once for the rest.
template <template <int> class Rows, typename... Args>
void OverRowGroups(int64_t n, Args&&... args) {
  int64_t row = 0;
  for (; row + kRows <= n; row += kRows) Rows<kRows>::Run(row, args...);
  switch (n - row) {
    case 7: Rows<7>::Run(row, args...); break;
    case 6: Rows<6>::Run(row, args...); break;
    case 5: Rows<5>::Run(row, args...); break;
    case 4: Rows<4>::Run(row, args...); break;
    case 3: Rows<3>::Run(row, args...); break;
    case 2: Rows<2>::Run(row, args...); break;
    case 1: Rows<1>::Run(row, args...); break;
  }
}
static_assert(kRows == 8, "OverRowGroups handles remainders below 8");

template <int R>
struct ForwardGroup {
  static void Run(int64_t row, const Head& h, const float* q, Scratch& w,
                  float* out, float* lse) {
    const int64_t at = row * h.stride;
    ForwardRows<R>(h, q + at, w, out + at, lse + row * h.lse_stride);
  }
};

template <int R>
struct BackwardGroup {
  static void Run(int64_t row, const Head& h, const float* q,
                  const float* out, const float* lse, const float* d_out,
                  Scratch& w, float* dq) {
    const int64_t at = row * h.stride;
    BackwardRows<R>(h, q + at, out + at, lse + row * h.lse_stride,
                    d_out + at, w, dq + at);
  }
};

// Runs work(scratch, head) for every head, each thread with its own
// Scratch.
template <typename Work>
void ForEachHead(ffi::ThreadPool& pool, int64_t heads, const Head& h,
                 Work work) {
  struct Worker {
    void operator()(int64_t head) { work(scratch, head); }
    Work work;
    Scratch scratch;
  };
  ForEach(pool, heads, [h, work] { return Worker{work, Scratch(h)}; });
}

// (..., N, heads, head_dim) arrays: one head's shape, and where each head
// starts in them (offset) and in lse (lse_offset).
struct Layout {
  explicit Layout(const ffi::Buffer<ffi::F32>& q) {
    const auto dims = q.dimensions();
    const int64_t rank = dims.size(), n = dims[rank - 3];
    per_item = dims[rank - 2];
    const int64_t d = dims[rank - 1];
    head = Head{n, d, (n + kLanes - 1) / kLanes * kLanes, per_item * d,
                per_item};
    const int64_t item = n * per_item * d;
    heads = item ? q.element_count() / item * per_item : 0;
  }
  int64_t offset(int64_t i) const {
    return (i / per_item) * head.n * head.stride + (i % per_item) * head.d;
  }
  int64_t lse_offset(int64_t i) const {
    return (i / per_item) * head.n * per_item + i % per_item;
  }
  Head head;
  int64_t heads, per_item;
};

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                   ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::ResultBuffer<ffi::F32> out,
                   ffi::ResultBuffer<ffi::F32> lse) {
  const Layout layout(q);
  const Head h = layout.head;
  const float *q_data = q.typed_data(), *k_data = k.typed_data(),
              *v_data = v.typed_data();
  float *out_data = out->typed_data(), *lse_data = lse->typed_data();
  ForEachHead(pool, layout.heads, h, [=](Scratch& w, int64_t i) {
    const int64_t at = layout.offset(i);
    Transpose(h, k_data + at, w.kt.get());
    Transpose(h, v_data + at, w.vt.get());
    OverRowGroups<ForwardGroup>(h.n, h, q_data + at, w, out_data + at,
                                lse_data + layout.lse_offset(i));
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                    ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> d_out,
                    ffi::ResultBuffer<ffi::F32> dq,
                    ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv) {
  const Layout layout(q);
  const Head h = layout.head;
  const float *q_data = q.typed_data(), *k_data = k.typed_data(),
              *v_data = v.typed_data(), *out_data = out.typed_data(),
              *lse_data = lse.typed_data(), *d_out_data = d_out.typed_data();
  float *dq_data = dq->typed_data(), *dk_data = dk->typed_data(),
        *dv_data = dv->typed_data();
  ForEachHead(pool, layout.heads, h, [=](Scratch& w, int64_t i) {
    const int64_t at = layout.offset(i);
    Transpose(h, k_data + at, w.kt.get());
    Transpose(h, v_data + at, w.vt.get());
    std::fill(w.dkt.get(), w.dkt.get() + h.d * h.padded, 0.0f);
    std::fill(w.dvt.get(), w.dvt.get() + h.d * h.padded, 0.0f);
    OverRowGroups<BackwardGroup>(h.n, h, q_data + at, out_data + at,
                                 lse_data + layout.lse_offset(i),
                                 d_out_data + at, w, dq_data + at);
    TransposeBack(h, w.dkt.get(), dk_data + at);
    TransposeBack(h, w.dvt.get(), dv_data + at);
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace vivit_jax

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitAttentionForward, vivit_jax::Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitAttentionBackward, vivit_jax::Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
