// LayerNorm over the last axis for CPUs: XLA FFI kernels, forward and
// backward, each reading a row once.
//
// XLA runs a LayerNorm and its gradient as several fusions of about 0.5 ms
// each at the term project's (16 x 343, 64) (benchmarks/PROFILE.md), 13%
// of its ViViT's train step on a 2-core CPU.
//
// Forward: x (rows, width), scale, bias (width) -> y (rows, width), mean and
// rstd (rows): y = (x - mean) rstd scale + bias, rstd = 1 / sqrt(var +
// epsilon), var = mean((x - mean)^2).
// Backward: x, scale, mean, rstd, dy [, dx_elsewhere] -> dx (rows, width)
// (plus dx_elsewhere, the gradient x gets from its other uses, a residual
// connection's, where given: one pass instead of a separate sum), and the
// sums of dy x_hat and of dy (dscale, dbias) over each of kRowBlocks blocks
// of rows (kRowBlocks, width), which the caller adds: blocks are fixed,
// whichever thread takes them, so the sums do not depend on the threads.
//   x_hat = (x - mean) rstd, g = dy scale,
//   dx = rstd (g - mean(g) - x_hat mean(g x_hat)).

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu_parallel.h"
#include "cpu_vector_math.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace vivit_jax {
namespace {

// Row blocks whose rows of `width` floats are taken as whole vectors, then
// single floats past the last.
struct Rows : RowBlocks {
  explicit Rows(const ffi::Buffer<ffi::F32>& x)
      : RowBlocks(x), vectors(width / kLanes * kLanes) {}
  int64_t vectors;
};

// The sum of f(i) over a row, i the index of a vector or of a float.
template <typename VectorTerm, typename FloatTerm>
float SumOverRow(const Rows& rows, VectorTerm vector_term,
                 FloatTerm float_term) {
  Vec total = {};
  for (int64_t i = 0; i < rows.vectors; i += kLanes) total += vector_term(i);
  float sum = Sum(total);
  for (int64_t i = rows.vectors; i < rows.width; ++i) sum += float_term(i);
  return sum;
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x_buffer,
                   ffi::Buffer<ffi::F32> scale_buffer,
                   ffi::Buffer<ffi::F32> bias_buffer, float epsilon,
                   ffi::ResultBuffer<ffi::F32> y_buffer,
                   ffi::ResultBuffer<ffi::F32> mean_buffer,
                   ffi::ResultBuffer<ffi::F32> rstd_buffer) {
  const Rows rows(x_buffer);
  const float *all_x = x_buffer.typed_data(),
              *scale = scale_buffer.typed_data(),
              *bias = bias_buffer.typed_data();
  float *all_y = y_buffer->typed_data(), *means = mean_buffer->typed_data(),
        *rstds = rstd_buffer->typed_data();
  const float inverse_width = 1.0f / rows.width;
  ForEach(pool, kRowBlocks, [=] {
    return [=](int64_t block) {
      for (int64_t row = rows.first(block); row < rows.first(block + 1);
           ++row) {
        const float* x = all_x + row * rows.width;
        float* y = all_y + row * rows.width;
        const float mean = inverse_width * SumOverRow(
            rows, [=](int64_t i) { return LoadUnaligned(x + i); },
            [=](int64_t i) { return x[i]; });
        const float var = inverse_width * SumOverRow(
            rows,
            [=](int64_t i) {
              const Vec centered = LoadUnaligned(x + i) - mean;
              return centered * centered;
            },
            [=](int64_t i) { return (x[i] - mean) * (x[i] - mean); });
        const float rstd = 1.0f / std::sqrt(var + epsilon);
        for (int64_t i = 0; i < rows.vectors; i += kLanes)
          StoreUnaligned(y + i, (LoadUnaligned(x + i) - mean) * rstd *
                                        LoadUnaligned(scale + i) +
                                    LoadUnaligned(bias + i));
        for (int64_t i = rows.vectors; i < rows.width; ++i)
          y[i] = (x[i] - mean) * rstd * scale[i] + bias[i];
        means[row] = mean;
        rstds[row] = rstd;
      }
    };
  });
  return ffi::Error::Success();
}

ffi::Error BackwardWith(const float* all_dx_elsewhere, ffi::ThreadPool& pool,
                        const ffi::Buffer<ffi::F32>& x_buffer,
                        const ffi::Buffer<ffi::F32>& scale_buffer,
                        const ffi::Buffer<ffi::F32>& mean_buffer,
                        const ffi::Buffer<ffi::F32>& rstd_buffer,
                        const ffi::Buffer<ffi::F32>& dy_buffer,
                        ffi::ResultBuffer<ffi::F32>& dx_buffer,
                        ffi::ResultBuffer<ffi::F32>& dscale_buffer,
                        ffi::ResultBuffer<ffi::F32>& dbias_buffer) {
  const Rows rows(x_buffer);
  const float *all_x = x_buffer.typed_data(),
              *scale = scale_buffer.typed_data(),
              *means = mean_buffer.typed_data(),
              *rstds = rstd_buffer.typed_data(),
              *all_dy = dy_buffer.typed_data();
  float *all_dx = dx_buffer->typed_data(),
        *all_dscale = dscale_buffer->typed_data(),
        *all_dbias = dbias_buffer->typed_data();
  const float inverse_width = 1.0f / rows.width;
  ForEach(pool, kRowBlocks, [=] {
    return [=](int64_t block) {
      float* dscale = all_dscale + block * rows.width;
      float* dbias = all_dbias + block * rows.width;
      std::fill(dscale, dscale + rows.width, 0.0f);
      std::fill(dbias, dbias + rows.width, 0.0f);
      for (int64_t row = rows.first(block); row < rows.first(block + 1);
           ++row) {
        const float *x = all_x + row * rows.width,
                    *dy = all_dy + row * rows.width;
        float* dx = all_dx + row * rows.width;
        const float* elsewhere =
            all_dx_elsewhere ? all_dx_elsewhere + row * rows.width : nullptr;
        const float mean = means[row], rstd = rstds[row];
        const auto x_hat = [=](int64_t i) {
          return (LoadUnaligned(x + i) - mean) * rstd;
        };
        const auto g = [=](int64_t i) {
          return LoadUnaligned(dy + i) * LoadUnaligned(scale + i);
        };
        const float g_mean = inverse_width * SumOverRow(
            rows, g, [=](int64_t i) { return dy[i] * scale[i]; });
        const float gx_mean = inverse_width * SumOverRow(
            rows, [=](int64_t i) { return g(i) * x_hat(i); },
            [=](int64_t i) { return dy[i] * scale[i] * (x[i] - mean) * rstd; });
        for (int64_t i = 0; i < rows.vectors; i += kLanes) {
          const Vec xh = x_hat(i), dyi = LoadUnaligned(dy + i);
          const Vec dxi = rstd * (g(i) - g_mean - xh * gx_mean);
          StoreUnaligned(dx + i,
                         elsewhere ? dxi + LoadUnaligned(elsewhere + i) : dxi);
          StoreUnaligned(dscale + i, LoadUnaligned(dscale + i) + dyi * xh);
          StoreUnaligned(dbias + i, LoadUnaligned(dbias + i) + dyi);
        }
        for (int64_t i = rows.vectors; i < rows.width; ++i) {
          const float xh = (x[i] - mean) * rstd;
          dx[i] = rstd * (dy[i] * scale[i] - g_mean - xh * gx_mean);
          if (elsewhere) dx[i] += elsewhere[i];
          dscale[i] += dy[i] * xh;
          dbias[i] += dy[i];
        }
      }
    };
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                    ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> mean,
                    ffi::Buffer<ffi::F32> rstd, ffi::Buffer<ffi::F32> dy,
                    ffi::ResultBuffer<ffi::F32> dx,
                    ffi::ResultBuffer<ffi::F32> dscale,
                    ffi::ResultBuffer<ffi::F32> dbias) {
  return BackwardWith(nullptr, pool, x, scale, mean, rstd, dy, dx, dscale,
                      dbias);
}

ffi::Error BackwardAdding(
    ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
    ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> rstd,
    ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> dx_elsewhere,
    ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
    ffi::ResultBuffer<ffi::F32> dbias) {
  return BackwardWith(dx_elsewhere.typed_data(), pool, x, scale, mean, rstd,
                      dy, dx, dscale, dbias);
}

}  // namespace
}  // namespace vivit_jax

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitLayerNormForward, vivit_jax::Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("epsilon")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitLayerNormBackward, vivit_jax::Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitLayerNormBackwardAdding,
                              vivit_jax::BackwardAdding,
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
