// Normalisation (given its statistics), ReLU and max pooling in one pass
// for CPUs, channels-last: XLA FFI kernels for the 3D CNN's blocks.
//
// XLA runs BatchNorm -> ReLU -> max pooling (and their gradients) as
// several passes over the convolution's output, the largest tensor of the
// CNN's step; these kernels read it once forward and once backward.
//
// Forward: y (B, D, H, W, C) and per-channel mean, mul and bias ->
//   pooled[b, d, h, w, c] = max over the window at (d, h, w) of relu(z),
//   z = (y - mean) * mul + bias,
//   centered[b, d, h, w, c] = (y - mean) at the window's first maximum of z.
// Windows are window^3 with stride window, VALID: trailing elements that
// fill no window are left out.
// Backward: y, the gradient g of pooled, mean, mul, bias, and per-channel
// alpha and beta ->
//   dy = mul * dz + alpha + beta * y,
//   dz = g / n at each of the n elements of a window that tie for its
//   maximum z, where that maximum is positive, and 0 elsewhere (the
//   gradients of relu and of jnp.max). alpha and beta carry the gradient
//   through batch statistics; the caller computes them.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace vivit_jax {
namespace {

// Vectors of kLanes channels, and single channels past the last whole
// vector, through the same code.
template <typename T> T LoadAs(const float* p);
template <> Vec LoadAs<Vec>(const float* p) { return LoadUnaligned(p); }
template <> float LoadAs<float>(const float* p) { return *p; }
inline void StoreAs(float* p, Vec x) { StoreUnaligned(p, x); }
inline void StoreAs(float* p, float x) { *p = x; }

struct Shape {
  Shape(const ffi::Buffer<ffi::F32>& y, int64_t window)
      : batch(y.dimensions()[0]), depth(y.dimensions()[1]),
        height(y.dimensions()[2]), width(y.dimensions()[3]),
        channels(y.dimensions()[4]), window(window),
        pooled_depth(depth / window), pooled_height(height / window),
        pooled_width(width / window),
        plane_groups((depth + window - 1) / window) {
    for (int64_t i = 0; i < window; ++i)
      for (int64_t j = 0; j < window; ++j)
        for (int64_t k = 0; k < window; ++k)
          offsets.push_back(((i * height + j) * width + k) * channels);
  }
  int64_t batch, depth, height, width, channels, window, pooled_depth,
      pooled_height, pooled_width;
  // Groups of `window` planes along D, the last cropped where D is not a
  // multiple of `window`.
  int64_t plane_groups;
  // Where each element of a window is, from its first, in floats.
  std::vector<int64_t> offsets;

  // Where y[b, d, h, w, 0] and pooled[b, d, h, w, 0] are.
  int64_t at(int64_t b, int64_t d, int64_t h, int64_t w) const {
    return (((b * depth + d) * height + h) * width + w) * channels;
  }
  int64_t pooled_at(int64_t b, int64_t d, int64_t h, int64_t w) const {
    return (((b * pooled_depth + d) * pooled_height + h) * pooled_width + w) *
           channels;
  }
  // Calls window_at(y offset, pooled offset) for each window of the pooled
  // plane (b, d).
  template <typename WindowAt>
  void ForWindows(int64_t b, int64_t d, WindowAt window_at) const {
    for (int64_t h = 0; h < pooled_height; ++h)
      for (int64_t w = 0; w < pooled_width; ++w)
        window_at(at(b, d * window, h * window, w * window),
                  pooled_at(b, d, h, w));
  }
  // Calls run(channel, T()) for each vector of channels, then each channel
  // left over.
  template <typename Run>
  void ForChannels(Run run) const {
    int64_t c = 0;
    for (; c + kLanes <= channels; c += kLanes) run(c, Vec{});
    for (; c < channels; ++c) run(c, 0.0f);
  }
};

struct Statistics {
  const float *mean, *mul, *bias;
};

// z for each element of the window at y (its first element, channel c).
template <typename T>
void Normalized(const Shape& s, const Statistics& stats, const float* y,
                int64_t c, T* z) {
  const T mean = LoadAs<T>(stats.mean + c), mul = LoadAs<T>(stats.mul + c),
          bias = LoadAs<T>(stats.bias + c);
  for (size_t e = 0; e < s.offsets.size(); ++e)
    z[e] = (LoadAs<T>(y + s.offsets[e] + c) - mean) * mul + bias;
}

struct ForwardPlane {
  void operator()(int64_t plane) {
    const int64_t b = plane / s.pooled_depth, d = plane % s.pooled_depth;
    s.ForWindows(b, d, [&](int64_t at, int64_t pooled_at) {
      s.ForChannels([&](int64_t c, auto zero) {
        using T = decltype(zero);
        T* z = reinterpret_cast<T*>(scratch.data());
        Normalized(s, stats, y + at, c, z);
        const T mean = LoadAs<T>(stats.mean + c);
        T best = z[0], centered = LoadAs<T>(y + at + c) - mean;
        for (size_t e = 1; e < s.offsets.size(); ++e) {
          const T u = LoadAs<T>(y + at + s.offsets[e] + c) - mean;
          centered = z[e] > best ? u : centered;
          best = z[e] > best ? z[e] : best;
        }
        StoreAs(pooled + pooled_at + c, best > zero ? best : zero);
        StoreAs(centered_out + pooled_at + c, centered);
      });
    });
  }
  const Shape& s;
  Statistics stats;
  const float* y;
  float *pooled, *centered_out;
  std::vector<Vec> scratch;
};

struct BackwardPlanes {
  // Item (b, k): the planes [k * window, (k + 1) * window) of y, all but
  // the last (cropped) ones a row of windows.
  void operator()(int64_t item) {
    const int64_t b = item / s.plane_groups, k = item % s.plane_groups;
    const int64_t first = s.at(b, k * s.window, 0, 0);
    const int64_t end = s.at(b, std::min(s.depth, (k + 1) * s.window), 0, 0);
    for (int64_t at = first; at < end; at += s.channels) {
      s.ForChannels([&](int64_t c, auto zero) {
        using T = decltype(zero);
        StoreAs(dy + at + c, LoadAs<T>(alpha + c) +
                                 LoadAs<T>(beta + c) * LoadAs<T>(y + at + c));
      });
    }
    if (k >= s.pooled_depth) return;
    s.ForWindows(b, k, [&](int64_t at, int64_t pooled_at) {
      s.ForChannels([&](int64_t c, auto zero) {
        using T = decltype(zero);
        T* z = reinterpret_cast<T*>(scratch.data());
        Normalized(s, stats, y + at, c, z);
        T best = z[0];
        for (size_t e = 1; e < s.offsets.size(); ++e)
          best = z[e] > best ? z[e] : best;
        T ties = zero;
        for (size_t e = 0; e < s.offsets.size(); ++e)
          ties += z[e] == best ? zero + 1.0f : zero;
        const T share = best > zero ? LoadAs<T>(stats.mul + c) *
                                          LoadAs<T>(g + pooled_at + c) / ties
                                    : zero;
        for (size_t e = 0; e < s.offsets.size(); ++e) {
          float* out = dy + at + s.offsets[e] + c;
          StoreAs(out, LoadAs<T>(out) + (z[e] == best ? share : zero));
        }
      });
    });
  }
  const Shape& s;
  Statistics stats;
  const float *y, *g, *alpha, *beta;
  float* dy;
  std::vector<Vec> scratch;
};

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> y,
                   ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> mul,
                   ffi::Buffer<ffi::F32> bias, int64_t window,
                   ffi::ResultBuffer<ffi::F32> pooled,
                   ffi::ResultBuffer<ffi::F32> centered) {
  const Shape s(y, window);
  const ForwardPlane plane{
      s, {mean.typed_data(), mul.typed_data(), bias.typed_data()},
      y.typed_data(), pooled->typed_data(), centered->typed_data(),
      std::vector<Vec>(s.offsets.size())};
  ForEach(pool, s.batch * s.pooled_depth, [&plane] { return plane; });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> y,
                    ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> mean,
                    ffi::Buffer<ffi::F32> mul, ffi::Buffer<ffi::F32> bias,
                    ffi::Buffer<ffi::F32> alpha, ffi::Buffer<ffi::F32> beta,
                    int64_t window, ffi::ResultBuffer<ffi::F32> dy) {
  const Shape s(y, window);
  const BackwardPlanes planes{
      s, {mean.typed_data(), mul.typed_data(), bias.typed_data()},
      y.typed_data(), g.typed_data(), alpha.typed_data(), beta.typed_data(),
      dy->typed_data(), std::vector<Vec>(s.offsets.size())};
  ForEach(pool, s.batch * s.plane_groups, [&planes] { return planes; });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace vivit_jax

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitBatchNormPoolForward, vivit_jax::Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("window")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitBatchNormPoolBackward, vivit_jax::Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("window")
                                  .Ret<ffi::Buffer<ffi::F32>>());
