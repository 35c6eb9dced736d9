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
// Forward: x -> y, any shape. Backward: x, dy -> dx = dy gelu'(x): the
// forward pass keeps nothing but x.

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
constexpr int64_t kChunk = 16384;  // Floats per work item.

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

// out[i] = f(v) over [0, count), v[k] the vector of in[k] at i, in chunks
// of kChunk floats on the pool's threads; a last partial vector through
// zero-padded copies.
template <int N, typename F>
void Elementwise(ffi::ThreadPool& pool, int64_t count,
                 const float* const (&in)[N], float* out, F f) {
  const int64_t chunks = (count + kChunk - 1) / kChunk;
  const float* inputs[N];
  std::copy(in, in + N, inputs);
  ForEach(pool, chunks, [=] {
    return [=](int64_t chunk) {
      const int64_t start = chunk * kChunk;
      const int64_t end = std::min(count, start + kChunk);
      int64_t i = start;
      for (; i + kLanes <= end; i += kLanes) {
        Vec v[N];
        for (int k = 0; k < N; ++k) v[k] = LoadUnaligned(inputs[k] + i);
        StoreUnaligned(out + i, f(v));
      }
      if (i == end) return;
      float padded[N][kLanes] = {}, result[kLanes];
      for (int k = 0; k < N; ++k)
        std::copy(inputs[k] + i, inputs[k] + end, padded[k]);
      Vec v[N];
      for (int k = 0; k < N; ++k) v[k] = LoadUnaligned(padded[k]);
      StoreUnaligned(result, f(v));
      std::copy(result, result + (end - i), out + i);
    };
  });
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                   ffi::ResultBuffer<ffi::F32> y) {
  const float* const in[1] = {x.typed_data()};
  Elementwise<1>(pool, x.element_count(), in, y->typed_data(),
                 [](const Vec* v) { return Gelu(v[0]); });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                    ffi::Buffer<ffi::F32> dy,
                    ffi::ResultBuffer<ffi::F32> dx) {
  const float* const in[2] = {x.typed_data(), dy.typed_data()};
  Elementwise<2>(pool, x.element_count(), in, dx->typed_data(),
                 [](const Vec* v) { return GeluGrad(v[0], v[1]); });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace vivit_jax

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitGeluForward, vivit_jax::Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitGeluBackward, vivit_jax::Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
