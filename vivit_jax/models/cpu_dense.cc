// The kernel gradient of dense layers for CPUs: an XLA FFI kernel.
//
// For y = x W + b over rows, XLA:CPU takes W's gradient, x^T dy, a matmul
// that contracts over the rows, at a third to a half of the rate of the
// forward matmuls of the same size (benchmarks/PROFILE.md). This kernel reads
// x and dy as they lie, rows in order:
//   dW[c, f] = sum_n x[n, c] dy[n, f],  db[f] = sum_n dy[n, f].
// Weight gradient: x (..., K), dy (..., M), M a multiple of kFeatures ->
// dW (K, M), db (M). The rows are dealt, in order, into kRowGroups groups
// of consecutive rows; a work item is one group and one block of kFeatures
// features: kColumns columns of x at a time, their kFeatures features held
// in registers over the group's rows. The groups' sums are then added in
// group order, so the result does not depend on the threads: the same
// inputs give the same bits on every call.

#include <algorithm>
#include <cstdint>

#include "cpu_parallel.h"
#include "cpu_register_blocks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace vivit_jax {
namespace {

// Fixed, not the thread count, so that the sums' order is too. With 32, a
// group of the term project's 5488 rows holds 171 rows of x (44 KB at width
// 64, within a 48 KB L1 cache): its train step ran 2-3% faster than with 16
// groups, and slower with 64 (benchmarks/PROFILE.md).
constexpr int64_t kRowGroups = 32;

// C columns of x (at x[first row, c]) times one block of dy's features (at
// dy[first row, block * kFeatures]), summed over `rows` rows, written to
// the group's sum (at its [c, block * kFeatures], rows m floats apart).
template <int C>
struct ColumnsTimesFeatures {
  static void Run(int64_t rows, const float* x, int64_t k, const float* dy,
                  int64_t m, float* sum) {
    Vec total[C][2] = {};
    AddOuterProducts<C>(rows, x, k, dy, m, total);
    for (int c = 0; c < C; ++c) {
      StoreUnaligned(sum + c * m, total[c][0]);
      StoreUnaligned(sum + c * m + kLanes, total[c][1]);
    }
  }
};

// One work item: item / blocks is the row group, item % blocks the feature
// block. A group's sums are (K, M) for dW, then (M,) for db, count floats.
struct GroupTimesBlock {
  void operator()(int64_t item) const {
    const int64_t group = item / blocks, f = item % blocks * kFeatures;
    const int64_t first = rows * group / kRowGroups,
                  end = rows * (group + 1) / kRowGroups;
    float* sum = sums + group * count;
    const float* dy_block = dy + first * m + f;
    Vec bias[2] = {};
    for (int64_t n = 0; n < end - first; ++n) {
      bias[0] += LoadUnaligned(dy_block + n * m);
      bias[1] += LoadUnaligned(dy_block + n * m + kLanes);
    }
    StoreUnaligned(sum + k * m + f, bias[0]);
    StoreUnaligned(sum + k * m + f + kLanes, bias[1]);
    InChunks(k, kColumns, [&](int64_t c, int64_t size) {
      WithCount<ColumnsTimesFeatures>(size, end - first, x + first * k + c, k,
                                      dy_block, m, sum + c * m + f);
    });
  }
  const float *x, *dy;
  int64_t rows, k, m, blocks, count;
  float* sums;
};

ffi::Error WeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                      ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> grad,
                      ffi::ResultBuffer<ffi::F32> bias_grad) {
  const int64_t k = x.dimensions().back(), m = dy.dimensions().back();
  if (m % kFeatures != 0) {
    return ffi::Error::InvalidArgument(
        "vivit_dense_weight_grad: dy's width is not a multiple of 32");
  }
  const int64_t rows = k ? x.element_count() / k : 0, blocks = m / kFeatures;
  SumOfGroups(pool, kRowGroups, kRowGroups * blocks, grad->typed_data(), k * m,
              bias_grad->typed_data(), m, [&](float* sums, int64_t count) {
                return GroupTimesBlock{x.typed_data(), dy.typed_data(), rows,
                                       k, m, blocks, count, sums};
              });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace vivit_jax

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitDenseWeightGrad, vivit_jax::WeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
