// What the convolution (cpu_conv.cc) and dense (cpu_dense.cc) kernels
// share: register blocks of kFeatures output features, the loop of a
// kernel's gradient over positions, and the ordered sum of partial sums.

#ifndef VIVIT_JAX_MODELS_CPU_REGISTER_BLOCKS_H_
#define VIVIT_JAX_MODELS_CPU_REGISTER_BLOCKS_H_

#include <algorithm>
#include <cstdint>
#include <memory>

#include "cpu_parallel.h"

namespace vivit_jax {

constexpr int kFeatures = 2 * kLanes;
// Register blocks: kPositions (or kColumns) x kFeatures accumulators, 24
// of AVX-512's 32 vector registers, 12 of AVX2's 16.
#if defined(__AVX512F__)
constexpr int kPositions = 12;
#else
constexpr int kPositions = 3;
#endif
constexpr int kColumns = kPositions;

// sum[c] += sum over `positions` positions p of x[p][c] * dy[p][0,
// kFeatures), c < C: x's positions x_stride floats apart, dy's dy_stride.
template <int C>
inline void AddOuterProducts(int64_t positions, const float* x,
                             int64_t x_stride, const float* dy,
                             int64_t dy_stride, Vec (&sum)[C][2]) {
  for (int64_t p = 0; p < positions; ++p) {
    const Vec d0 = LoadUnaligned(dy + p * dy_stride);
    const Vec d1 = LoadUnaligned(dy + p * dy_stride + kLanes);
    for (int c = 0; c < C; ++c) {
      const float v = x[p * x_stride + c];
      sum[c][0] += v * d0;
      sum[c][1] += v * d1;
    }
  }
}

// Calls Run<n>::Run(args...) for n in [1, 12], n <= kPositions.
template <template <int> class Run, typename... Args>
void WithCount(int n, Args&&... args) {
  static_assert(kPositions <= 12, "WithCount handles counts up to 12");
  switch (n) {
    case 12: Run<12>::Run(args...); break;
    case 11: Run<11>::Run(args...); break;
    case 10: Run<10>::Run(args...); break;
    case 9: Run<9>::Run(args...); break;
    case 8: Run<8>::Run(args...); break;
    case 7: Run<7>::Run(args...); break;
    case 6: Run<6>::Run(args...); break;
    case 5: Run<5>::Run(args...); break;
    case 4: Run<4>::Run(args...); break;
    case 3: Run<3>::Run(args...); break;
    case 2: Run<2>::Run(args...); break;
    case 1: Run<1>::Run(args...); break;
  }
}

// Splits [0, n) into the fewest chunks of at most `most`, of near-equal
// sizes, calling chunk(start, size) for each.
template <typename Chunk>
void InChunks(int64_t n, int64_t most, Chunk chunk) {
  const int64_t count = (n + most - 1) / most;
  for (int64_t k = 0, start = 0; k < count; ++k) {
    const int64_t size = (n - start) / (count - k);
    chunk(start, size);
    start += size;
  }
}

// Floats per work item of SumGroups.
constexpr int64_t kSumChunk = 4096;

// The sum over `groups` partial sums of `count` floats each (a kernel's
// gradient, grad_floats of them, then its bias's), added in group order so
// that the result does not depend on which thread computed which part:
// one chunk of kSumChunk floats per work item, written to grad and
// bias_grad.
struct SumGroups {
  void operator()(int64_t chunk) const {
    const int64_t start = chunk * kSumChunk,
                  end = std::min(start + kSumChunk, count);
    float total[kSumChunk];
    std::copy(sums + start, sums + end, total);
    for (int64_t group = 1; group < groups; ++group) {
      const float* part = sums + group * count;
      for (int64_t k = start; k < end; ++k) total[k - start] += part[k];
    }
    for (int64_t k = start; k < end; ++k) {
      (k < grad_floats ? grad[k] : bias_grad[k - grad_floats]) =
          total[k - start];
    }
  }
  int64_t chunks() const { return (count + kSumChunk - 1) / kSumChunk; }
  const float* sums;
  int64_t count, grad_floats, groups;
  float *grad, *bias_grad;
};

// A kernel's gradient (grad_floats floats) and its bias's (bias_floats) as
// `groups` partial sums, then their SumGroups into grad and bias_grad: the
// work items make_item(sums, count) (`items` of them) write group g's
// partial sums, count = grad_floats + bias_floats floats, at sums + g count.
template <typename MakeItem>
void SumOfGroups(xla::ffi::ThreadPool& pool, int64_t groups, int64_t items,
                 float* grad, int64_t grad_floats, float* bias_grad,
                 int64_t bias_floats, MakeItem make_item) {
  const int64_t count = grad_floats + bias_floats;
  std::unique_ptr<float[]> sums(new float[groups * count]);
  const auto item = make_item(sums.get(), count);
  ForEach(pool, items, [item] { return item; });
  const SumGroups sum{sums.get(), count, grad_floats, groups, grad,
                      bias_grad};
  ForEach(pool, sum.chunks(), [sum] { return sum; });
}

}  // namespace vivit_jax

#endif  // VIVIT_JAX_MODELS_CPU_REGISTER_BLOCKS_H_
