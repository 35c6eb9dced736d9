// Softmax attention of many small heads, fused for CPUs: an XLA FFI kernel.
//
// Each thread of XLA's intra-op pool takes one head at a time, or all heads
// of one batch item where there are items enough (Layout): their keys and
// values are transposed to (head_dim, N) once, then each group of kRows
// query rows computes its scores against all N keys (kRows x N floats, in
// L1), their softmax and the output, without ever holding an N x N matrix.
// The backward pass recomputes the probabilities from the saved log-sum-exp
// of each row (as FlashAttention, Dao et al. 2022) and accumulates dK and dV
// in the transposed layout. Inner loops run over the key axis, kLanes keys
// at a time, so they stay vectorised whatever head_dim is (8 in the term
// project's ViViT, where XLA's matmuls contract over 8 and run at 5-15% of
// the machine's peak).
//
// Arrays keep the projections' layout (..., N, heads, head_dim): a head's
// rows are heads * head_dim floats apart, so no transposes into a
// heads-first layout are needed around the kernel.
// Forward: q, k, v, attribute scale (1/sqrt(head_dim) for softmax(scale q
// k^T) v) -> out (same shape), lse (..., N, heads; in base 2, see kLog2E).
// Backward: q, k, v, out, lse, d_out, scale -> dq, dk, dv. Packed backward
// (self-attention's projection (..., N, 3, heads, head_dim) sliced into q,
// k, v): the same arguments -> their gradient in one (..., N, 3, heads,
// head_dim) array, and its sums over each item's N rows (items, 3, heads,
// head_dim), which the caller adds for the projection bias's gradient.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>

#include "cpu_attention_rows.h"
#include "cpu_parallel.h"
#include "cpu_vector_math.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace vivit_jax {
namespace {

constexpr int kRows = 8;

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using Floats = std::unique_ptr<float[], AlignedFree>;

Floats Allocate(int64_t count) {
  const int64_t bytes = ((count * 4 + 63) / 64) * 64;
  return Floats(static_cast<float*>(std::aligned_alloc(64, bytes)));
}

// One head's transposed keys and values (and their gradients), kRows rows
// of scores and of score gradients, and two (d, kRows) GatherColumns.
struct HeadScratch {
  const float *kt, *vt;
  float *dkt, *dvt, *s, *ds, *at, *bt;
};

// Scratch of one thread: HeadScratch for a task's `heads` heads.
struct Scratch {
  Scratch(const Head& h, int64_t heads)
      : size(h.d * h.padded), kt(Allocate(heads * size)),
        vt(Allocate(heads * size)), dkt(Allocate(heads * size)),
        dvt(Allocate(heads * size)), s(Allocate(kRows * h.padded)),
        ds(Allocate(kRows * h.padded)), at(Allocate(kRows * h.d)),
        bt(Allocate(kRows * h.d)) {}
  HeadScratch ForHead(int64_t i) const {
    return {kt.get() + i * size, vt.get() + i * size, dkt.get() + i * size,
            dvt.get() + i * size, s.get(), ds.get(), at.get(), bt.get()};
  }
  int64_t size;  // Floats of one head's transposed array.
  Floats kt, vt, dkt, dvt, s, ds, at, bt;
};

// Rows [row, row + R) of one head's output and log-sum-exp.
template <int R>
void ForwardRows(const Head& h, const float* q, const HeadScratch& w,
                 float* out, float* lse) {
  Vec top[R];
  for (int r = 0; r < R; ++r)
    top[r] = Vec{} - std::numeric_limits<float>::infinity();
  GatherColumns<R>(h, q, h.q_scale, w.at);
  RowsTimes<R>(h, w.at, w.kt, w.s, [&](int r, int64_t j, Vec scores) {
    scores = Masked(h, j, scores);
    top[r] = top[r] > scores ? top[r] : scores;
    return scores;
  });
  float offset[R], total[R], inverse_total[R];
  for (int r = 0; r < R; ++r) offset[r] = Max(top[r]) * kLog2E;
  ExpRows<R>(h, w.s, offset, total);
  for (int r = 0; r < R; ++r) {
    inverse_total[r] = 1.0f / total[r];
    lse[r * h.lse_stride] = offset[r] + std::log2(total[r]);
  }
  RowsTimesTransposed<R>(h, w.s, w.vt, inverse_total, out, h.stride);
}

// dq of rows [row, row + R); their terms of dk and dv added to w.dkt, w.dvt.
template <int R>
void BackwardRows(const Head& h, const float* q, const float* out,
                  const float* lse, const float* d_out,
                  const HeadScratch& w, float* dq, int64_t dq_stride) {
  float row_lse[R], delta[R], q_scale[R];
  for (int r = 0; r < R; ++r) {
    row_lse[r] = lse[r * h.lse_stride];
    delta[r] = 0.0f;
    for (int64_t c = 0; c < h.d; ++c)
      delta[r] += d_out[r * h.stride + c] * out[r * h.stride + c];
  }
  std::fill(q_scale, q_scale + R, h.q_scale);
  GatherColumns<R>(h, q, h.q_scale, w.at);
  GatherColumns<R>(h, d_out, 1.0f, w.bt);
  RowsTimes<R>(h, w.at, w.kt, w.s, [&](int r, int64_t j, Vec scores) {
    return Exp2(Masked(h, j, scores) * kLog2E - row_lse[r]);  // P
  });
  RowsTimes<R>(h, w.bt, w.vt, w.ds, [&](int r, int64_t j, Vec dp) {
    return Load(w.s + r * h.padded + j) * (dp - delta[r]);  // dS
  });
  RowsTimesTransposed<R>(h, w.ds, w.kt, q_scale, dq, dq_stride);
  AccumulateOuter<R>(h, w.at, w.ds, w.dkt);
  AccumulateOuter<R>(h, w.bt, w.s, w.dvt);
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
  static void Run(int64_t row, const Head& h, const float* q,
                  const HeadScratch& w, float* out, float* lse) {
    const int64_t at = row * h.stride;
    ForwardRows<R>(h, q + at, w, out + at, lse + row * h.lse_stride);
  }
};

template <int R>
struct BackwardGroup {
  static void Run(int64_t row, const Head& h, const float* q,
                  const float* out, const float* lse, const float* d_out,
                  const HeadScratch& w, float* dq, int64_t dq_stride) {
    const int64_t at = row * h.stride;
    BackwardRows<R>(h, q + at, out + at, lse + row * h.lse_stride,
                    d_out + at, w, dq + row * dq_stride, dq_stride);
  }
};

// (..., N, heads, head_dim) arrays: one head's shape, how many heads a task
// takes (adjacent heads of one item), and where a task's first head starts
// in them (offset) and in lse (lse_offset).
struct Layout {
  Layout(const ffi::Buffer<ffi::F32>& q, float q_scale, int64_t threads) {
    const auto dims = q.dimensions();
    const int64_t rank = dims.size(), n = dims[rank - 3];
    per_item = dims[rank - 2];
    const int64_t d = dims[rank - 1];
    head = Head{n, d, (n + kLanes - 1) / kLanes * kLanes, per_item * d,
                per_item, q_scale};
    const int64_t item = n * per_item * d;
    const int64_t items = item ? q.element_count() / item : 0;
    // All of an item's heads per task, so that their rows are read once, in
    // order, where that leaves 4 tasks per thread and the task's transposed
    // arrays (4 of them) fit in 1 MB; else one head per task.
    const int64_t bytes = 4 * per_item * d * head.padded * sizeof(float);
    heads_per_task = items >= 4 * threads && bytes <= (1 << 20) ? per_item : 1;
    tasks = items * per_item / heads_per_task;
  }
  // In arrays whose rows are `stride` floats apart.
  int64_t offset(int64_t task, int64_t stride) const {
    const int64_t i = task * heads_per_task;
    return (i / per_item) * head.n * stride + (i % per_item) * head.d;
  }
  int64_t lse_offset(int64_t task) const {
    const int64_t i = task * heads_per_task;
    return (i / per_item) * head.n * per_item + i % per_item;
  }
  Head head;
  int64_t per_item, heads_per_task, tasks;
};

// Runs work(scratch, task) for every task, each thread with its own Scratch.
template <typename Work>
void ForEachTask(ffi::ThreadPool& pool, const Layout& layout, Work work) {
  struct Worker {
    void operator()(int64_t task) { work(scratch, task); }
    Work work;
    Scratch scratch;
  };
  const Head h = layout.head;
  const int64_t heads = layout.heads_per_task;
  ForEach(pool, layout.tasks,
          [h, heads, work] { return Worker{work, Scratch(h, heads)}; });
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                   ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   float scale, ffi::ResultBuffer<ffi::F32> out,
                   ffi::ResultBuffer<ffi::F32> lse) {
  const Layout layout(q, scale, pool.num_threads());
  const Head h = layout.head;
  const float *q_data = q.typed_data(), *k_data = k.typed_data(),
              *v_data = v.typed_data();
  float *out_data = out->typed_data(), *lse_data = lse->typed_data();
  ForEachTask(pool, layout, [=](Scratch& w, int64_t task) {
    const int64_t at = layout.offset(task, h.stride);
    const int64_t heads = layout.heads_per_task;
    Transpose(h, heads, k_data + at, w.kt.get());
    Transpose(h, heads, v_data + at, w.vt.get());
    for (int64_t i = 0; i < heads; ++i) {
      const int64_t head_at = at + i * h.d;
      OverRowGroups<ForwardGroup>(h.n, h, q_data + head_at, w.ForHead(i),
                                  out_data + head_at,
                                  lse_data + layout.lse_offset(task) + i);
    }
  });
  return ffi::Error::Success();
}

// Where the backward pass writes dq, dk and dv: three arrays shaped as q,
// or (packed) one (..., N, 3, heads, d) array at dq, with their sums over
// each item's rows, (items, 3, heads, d), at sums.
struct Gradients {
  float *dq, *dk, *dv, *sums;
  bool packed;
};

// sums[c] = sum over x's n rows (stride apart) of x[j][c], c < columns.
void ColumnSums(int64_t n, int64_t columns, const float* x, int64_t stride,
                float* sums) {
  std::fill(sums, sums + columns, 0.0f);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < columns; ++c) sums[c] += x[j * stride + c];
}

ffi::Error BackwardInto(ffi::ThreadPool& pool, const ffi::Buffer<ffi::F32>& q,
                        const ffi::Buffer<ffi::F32>& k,
                        const ffi::Buffer<ffi::F32>& v,
                        const ffi::Buffer<ffi::F32>& out,
                        const ffi::Buffer<ffi::F32>& lse,
                        const ffi::Buffer<ffi::F32>& d_out, float scale,
                        Gradients g) {
  const Layout layout(q, scale, pool.num_threads());
  const Head h = layout.head;
  const float *q_data = q.typed_data(), *k_data = k.typed_data(),
              *v_data = v.typed_data(), *out_data = out.typed_data(),
              *lse_data = lse.typed_data(), *d_out_data = d_out.typed_data();
  const int64_t g_stride = g.packed ? 3 * h.stride : h.stride;
  if (g.packed) {
    g.dk = g.dq + h.stride;
    g.dv = g.dq + 2 * h.stride;
  }
  ForEachTask(pool, layout, [=](Scratch& w, int64_t task) {
    const int64_t at = layout.offset(task, h.stride);
    const int64_t g_at = layout.offset(task, g_stride);
    const int64_t heads = layout.heads_per_task;
    Transpose(h, heads, k_data + at, w.kt.get());
    Transpose(h, heads, v_data + at, w.vt.get());
    std::fill(w.dkt.get(), w.dkt.get() + heads * w.size, 0.0f);
    std::fill(w.dvt.get(), w.dvt.get() + heads * w.size, 0.0f);
    for (int64_t i = 0; i < heads; ++i) {
      const int64_t head_at = at + i * h.d;
      OverRowGroups<BackwardGroup>(
          h.n, h, q_data + head_at, out_data + head_at,
          lse_data + layout.lse_offset(task) + i, d_out_data + head_at,
          w.ForHead(i), g.dq + g_at + i * h.d, g_stride);
    }
    TransposeBack(h, heads, w.dkt.get(), g_stride, g.dk + g_at);
    TransposeBack(h, heads, w.dvt.get(), g_stride, g.dv + g_at);
    if (!g.sums) return;
    const int64_t first = task * heads, item = first / layout.per_item;
    float* sums =
        g.sums + item * 3 * h.stride + (first % layout.per_item) * h.d;
    const float* slots[3] = {g.dq, g.dk, g.dv};
    for (int slot = 0; slot < 3; ++slot)
      ColumnSums(h.n, heads * h.d, slots[slot] + g_at, g_stride,
                 sums + slot * h.stride);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                    ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> d_out, float scale,
                    ffi::ResultBuffer<ffi::F32> dq,
                    ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv) {
  return BackwardInto(pool, q, k, v, out, lse, d_out, scale,
                      {dq->typed_data(), dk->typed_data(), dv->typed_data(),
                       nullptr, false});
}

ffi::Error BackwardPacked(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                          ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                          ffi::Buffer<ffi::F32> out,
                          ffi::Buffer<ffi::F32> lse,
                          ffi::Buffer<ffi::F32> d_out, float scale,
                          ffi::ResultBuffer<ffi::F32> d_qkv,
                          ffi::ResultBuffer<ffi::F32> sums) {
  return BackwardInto(pool, q, k, v, out, lse, d_out, scale,
                      {d_qkv->typed_data(), nullptr, nullptr,
                       sums->typed_data(), true});
}

}  // namespace
}  // namespace vivit_jax

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitAttentionForward, vivit_jax::Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
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
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(VivitAttentionBackwardPacked,
                              vivit_jax::BackwardPacked,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
