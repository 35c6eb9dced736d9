// GELU's tanh approximation for CPUs: XLA FFI kernels, forward and
// backward, each one pass over its arrays.
//
// XLA runs the MLP's GELU as two fusions forward (the tanh, written out for
// the backward pass, then the product) and one backward, about 1.9 ms per
// layer at the term project's (16 x 343, 256) (benchmarks/PROFILE.md).
//
//   gelu(x) = x (1 + tanh(u)) / 2,  u = sqrt(2 / pi) (x + 0.044715 x^3),
// computed as x s with s = (1 + tanh(u)) / 2 = 1 / (1 + exp(-2 u)), the same
// function, with no cancellation in 1 + tanh(u) where u is very negative.
//   gelu'(x) = s + 2 x s (1 - s) u'(x),
//   u'(x) = sqrt(2 / pi) (1 + 3 * 0.044715 x^2).
// The Dense layer's bias before the GELU is added inside the kernels.
// Forward: x (..., width), bias (width,) -> y = gelu(x + bias). Backward:
// x, bias, dy -> dx = dy gelu'(x + bias) and dx's sums over blocks of rows
// (the bias's gradient): the forward pass keeps nothing but x.

#include <algorithm>
#include <cstdint>

#include "cpu_parallel.h"
#include "cpu_vector_math.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace vivit_jax {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

// s = 1 / (1 + exp(-2 u)) for x.
inline Vec Sigmoid2U(Vec x) {
  const Vec u = kSqrt2OverPi * (x + kCubic * x * x * x);
  return 1.0f / (1.0f + Exp(-2.0f * u));
}

inline Vec Gelu(Vec x) { return x * Sigmoid2U(x); }

// x^2 is capped where s (1 - s) is already 0, so that u' stays finite.
inline Vec GeluGrad(Vec x, Vec dy) {
  const Vec s = Sigmoid2U(x);
  Vec x2 = x * x;
  x2 = x2 < 1e30f ? x2 : Vec{} + 1e30f;
  const Vec u_slope = kSqrt2OverPi * (1.0f + 3.0f * kCubic * x2);
  return dy * (s + 2.0f * x * s * (1.0f - s) * u_slope);
}

// out[j] = f(v) for j in [0, width), v[k] the vector of in[k] at j, a
// vector at a time, the last partial one through zero-padded copies; where
// sum is given, sum[j] += out[j].
template <int N, typename F>
void Row(int64_t width, const float* const (&in)[N], float* out, float* sum,
         F f) {
  int64_t j = 0;
  for (; j + kLanes <= width; j += kLanes) {
    Vec v[N];
    for (int k = 0; k < N; ++k) v[k] = LoadUnaligned(in[k] + j);
    const Vec y = f(v);
    StoreUnaligned(out + j, y);
    if (sum) StoreUnaligned(sum + j, LoadUnaligned(sum + j) + y);
  }
  if (j == width) return;
  float padded[N][kLanes] = {}, result[kLanes];
  for (int k = 0; k < N; ++k) std::copy(in[k] + j, in[k] + width, padded[k]);
  Vec v[N];
  for (int k = 0; k < N; ++k) v[k] = LoadUnaligned(padded[k]);
  StoreUnaligned(result, f(v));
  std::copy(result, result + (width - j), out + j);
  if (sum)
    for (int64_t i = j; i < width; ++i) sum[i] += result[i - j];
}

// GELU(x + bias): x (..., width), bias (width,) -> y (x's shape).
ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x_buffer,
                   ffi::Buffer<ffi::F32> bias_buffer,
                   ffi::ResultBuffer<ffi::F32> y_buffer) {
  const RowBlocks rows(x_buffer);
  const float *x = x_buffer.typed_data(), *bias = bias_buffer.typed_data();
  float* y = y_buffer->typed_data();
  ForEach(pool, kRowBlocks, [=] {
    return [=](int64_t block) {
      for (int64_t i = rows.first(block); i < rows.first(block + 1); ++i) {
        const int64_t at = i * rows.width;
        const float* const in[2] = {x + at, bias};
        Row<2>(rows.width, in, y + at, nullptr,
               [](const Vec* v) { return Gelu(v[0] + v[1]); });
      }
    };
  });
  return ffi::Error::Success();
}

// x, bias, dy -> dx = dy GELU'(x + bias), and the sums of dx over each
// block of rows (kRowBlocks, width), which the caller adds for the bias's
// gradient: blocks are fixed, whichever thread takes them.
ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x_buffer,
                    ffi::Buffer<ffi::F32> bias_buffer,
                    ffi::Buffer<ffi::F32> dy_buffer,
                    ffi::ResultBuffer<ffi::F32> dx_buffer,
                    ffi::ResultBuffer<ffi::F32> dbias_buffer) {
  const RowBlocks rows(x_buffer);
  const float *x = x_buffer.typed_data(), *bias = bias_buffer.typed_data(),
              *dy = dy_buffer.typed_data();
  float *dx = dx_buffer->typed_data(), *dbias = dbias_buffer->typed_data();
  ForEach(pool, kRowBlocks, [=] {
    return [=](int64_t block) {
      float* sum = dbias + block * rows.width;
      std::fill(sum, sum + rows.width, 0.0f);
      for (int64_t i = rows.first(block); i < rows.first(block + 1); ++i) {
        const int64_t at = i * rows.width;
        const float* const in[3] = {x + at, bias, dy + at};
        Row<3>(rows.width, in, dx + at, sum, [](const Vec* v) {
          return GeluGrad(v[0] + v[1], v[2]);
        });
      }
    };
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace vivit_jax

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitGeluForward, vivit_jax::Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitGeluBackward, vivit_jax::Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
