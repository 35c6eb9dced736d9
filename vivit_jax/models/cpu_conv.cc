// 3D convolution for CPUs, channels-last: XLA FFI kernels.
//
// XLA:CPU runs convolutions with few channels slowly, above all their
// gradients, and as a matmul over unfolded patches (cnn3d.unfolded_conv) it
// spends more time writing the patches (27 copies of the input) than
// multiplying them. These kernels read the input where it lies.
//
// Both compute a valid cross-correlation (the caller pads):
//   y[b, d, h, w, f] = sum_{i, j, k, c} x[b, d + i, h + j, w + k, c]
//                                        * kernel[i, j, k, c, f].
// For a fixed (i, j), the sum over (k, c) runs over kw * channels floats
// that are contiguous in x (from x[b, d + i, h + j, w, 0]) and in the
// kernel: the kernels loop over that joint index, "column" below.
//
// Forward: x (B, D + KD - 1, H + KH - 1, W + KW - 1, C), the kernel packed
// as (F / 32, KD, KH, KW * C, 32), a bias (F,) -> y (B, D, H, W, F) + bias;
// F a multiple of kFeatures (the caller pads the kernel and the bias with
// zero features). Each output row (b, d, h) is one work item: kPositions
// positions along w at a time, their kFeatures features held in registers
// over the whole sum.
// Weight gradient: x as above, dy (B, D, H, W, F) -> the kernel's gradient,
// packed as the kernel is, and the bias's (the sum of dy over positions).
// The B * D planes (b, d) are dealt, in order, into at most kPlaneGroups
// groups of consecutive planes, one work item each: kColumns columns at a
// time, their kFeatures features held in registers over a plane's H * W
// positions, added into the group's own sum. The groups' sums are then
// added in group order, so the result does not depend on which thread ran
// which group: the same inputs give the same bits on every call.
// The input gradient is a forward call (with the kernel flipped and its
// channels and features swapped), made by the caller.

#include <algorithm>
#include <cstdint>

#include "cpu_parallel.h"
#include "cpu_register_blocks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace vivit_jax {
namespace {

// Fixed, not the thread count, so that the sums' order is too; enough
// groups to keep 16 threads busy.
constexpr int64_t kPlaneGroups = 32;

struct Shape {
  Shape(const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& packed)
      : batch(x.dimensions()[0]), in_d(x.dimensions()[1]),
        in_h(x.dimensions()[2]), in_w(x.dimensions()[3]),
        channels(x.dimensions()[4]), blocks(packed.dimensions()[0]),
        kd(packed.dimensions()[1]), kh(packed.dimensions()[2]),
        columns(packed.dimensions()[3]), kw(columns / channels),
        out_d(in_d - kd + 1), out_h(in_h - kh + 1), out_w(in_w - kw + 1),
        features(blocks * kFeatures) {}
  int64_t batch, in_d, in_h, in_w, channels, blocks, kd, kh, columns, kw,
      out_d, out_h, out_w, features;
  // Floats of one block of the packed kernel, and of one (i, j) in it.
  int64_t block_floats() const { return kd * kh * window_floats(); }
  int64_t window_floats() const { return columns * kFeatures; }
  // Where x[b, d, h, 0, 0] and y[b, d, h, 0, 0] are.
  int64_t x_row(int64_t b, int64_t d, int64_t h) const {
    return ((b * in_d + d) * in_h + h) * in_w * channels;
  }
  int64_t y_row(int64_t b, int64_t d, int64_t h) const {
    return ((b * out_d + d) * out_h + h) * out_w * features;
  }
};

// P output positions along w from x (at x[b, d, h, w, 0]), one block of the
// packed kernel and of the bias, into y (at y[b, d, h, w, block *
// kFeatures]).
template <int P>
struct ForwardPositions {
  static void Run(const Shape& s, const float* x, const float* kernel,
                  const float* bias, float* y) {
    Vec sum[P][2];
    for (int p = 0; p < P; ++p) {
      sum[p][0] = LoadUnaligned(bias);
      sum[p][1] = LoadUnaligned(bias + kLanes);
    }
    for (int64_t i = 0; i < s.kd; ++i) {
      for (int64_t j = 0; j < s.kh; ++j) {
        const float* xs = x + (i * s.in_h + j) * s.in_w * s.channels;
        const float* ks = kernel + (i * s.kh + j) * s.window_floats();
        for (int64_t c = 0; c < s.columns; ++c) {
          const Vec k0 = LoadUnaligned(ks + c * kFeatures);
          const Vec k1 = LoadUnaligned(ks + c * kFeatures + kLanes);
          for (int p = 0; p < P; ++p) {
            const float v = xs[p * s.channels + c];
            sum[p][0] += v * k0;
            sum[p][1] += v * k1;
          }
        }
      }
    }
    for (int p = 0; p < P; ++p) {
      StoreUnaligned(y + p * s.features, sum[p][0]);
      StoreUnaligned(y + p * s.features + kLanes, sum[p][1]);
    }
  }
};

// C columns (at x[b, d + i, h, 0, c]) of the gradient of one (i, j) of one
// block of the packed kernel, summed over the plane's positions, added into
// grad (at its [block, i, j, c, 0]); dy at dy[b, d, 0, 0, block *
// kFeatures].
template <int C>
struct WeightGradColumns {
  static void Run(const Shape& s, int64_t j, const float* x, const float* dy,
                  float* grad) {
    Vec sum[C][2] = {};
    for (int64_t h = 0; h < s.out_h; ++h) {
      AddOuterProducts<C>(s.out_w, x + (h + j) * s.in_w * s.channels,
                          s.channels, dy + h * s.out_w * s.features,
                          s.features, sum);
    }
    for (int c = 0; c < C; ++c) {
      float* g = grad + c * kFeatures;
      StoreUnaligned(g, LoadUnaligned(g) + sum[c][0]);
      StoreUnaligned(g + kLanes, LoadUnaligned(g + kLanes) + sum[c][1]);
    }
  }
};

struct ForwardRow {
  void operator()(int64_t row) const {
    const int64_t b = row / (s.out_d * s.out_h), d = row / s.out_h % s.out_d,
                  h = row % s.out_h;
    for (int64_t block = 0; block < s.blocks; ++block) {
      InChunks(s.out_w, kPositions, [&](int64_t w, int64_t size) {
        WithCount<ForwardPositions>(
            size, s, x + s.x_row(b, d, h) + w * s.channels,
            kernel + block * s.block_floats(), bias + block * kFeatures,
            y + s.y_row(b, d, h) + w * s.features + block * kFeatures);
      });
    }
  }
  Shape s;
  const float *x, *kernel, *bias;
  float* y;
};

// One group of consecutive planes: its kernel and bias gradients, summed
// over its planes, into `sum` (the kernel's) and `sum + grad_floats` (the
// bias's).
struct WeightGradGroup {
  void operator()(int64_t group) const {
    float* sum = sums + group * (grad_floats + s.features);
    float* bias_sum = sum + grad_floats;
    std::fill(sum, bias_sum + s.features, 0.0f);
    const int64_t planes = s.batch * s.out_d;
    for (int64_t plane = planes * group / groups,
                 end = planes * (group + 1) / groups;
         plane < end; ++plane) {
      AddPlane(plane, sum, bias_sum);
    }
  }
  void AddPlane(int64_t plane, float* sum, float* bias_sum) const {
    const int64_t b = plane / s.out_d, d = plane % s.out_d;
    const float* dy_plane = dy + s.y_row(b, d, 0);
    for (int64_t at = 0; at < s.out_h * s.out_w * s.features;
         at += s.features) {
      for (int64_t f = 0; f < s.features; f += kLanes) {
        StoreUnaligned(bias_sum + f, LoadUnaligned(bias_sum + f) +
                                         LoadUnaligned(dy_plane + at + f));
      }
    }
    for (int64_t block = 0; block < s.blocks; ++block) {
      for (int64_t i = 0; i < s.kd; ++i) {
        for (int64_t j = 0; j < s.kh; ++j) {
          float* g = sum + block * s.block_floats() +
                     (i * s.kh + j) * s.window_floats();
          InChunks(s.columns, kColumns, [&](int64_t c, int64_t size) {
            WithCount<WeightGradColumns>(
                size, s, j, x + s.x_row(b, d + i, 0) + c,
                dy + s.y_row(b, d, 0) + block * kFeatures,
                g + c * kFeatures);
          });
        }
      }
    }
  }
  Shape s;
  const float *x, *dy;
  int64_t grad_floats, groups;
  float* sums;
};

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                   ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> bias,
                   ffi::ResultBuffer<ffi::F32> y) {
  const Shape s(x, kernel);
  const ForwardRow row{s, x.typed_data(), kernel.typed_data(),
                       bias.typed_data(), y->typed_data()};
  ForEach(pool, s.batch * s.out_d * s.out_h, [row] { return row; });
  return ffi::Error::Success();
}

ffi::Error WeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                      ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> grad,
                      ffi::ResultBuffer<ffi::F32> bias_grad) {
  const Shape s(x, *grad);
  const int64_t grad_floats = grad->element_count();
  const int64_t groups = std::min(kPlaneGroups, s.batch * s.out_d);
  SumOfGroups(pool, groups, groups, grad->typed_data(), grad_floats,
              bias_grad->typed_data(), s.features,
              [&](float* sums, int64_t) {
                return WeightGradGroup{s, x.typed_data(), dy.typed_data(),
                                       grad_floats, groups, sums};
              });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace vivit_jax

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitConvForward, vivit_jax::Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitConvWeightGrad, vivit_jax::WeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
