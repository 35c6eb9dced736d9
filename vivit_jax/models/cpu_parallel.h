// What the fused CPU kernels share: float vectors and parallel loops over
// XLA's intra-op thread pool.

#ifndef VIVIT_JAX_MODELS_CPU_PARALLEL_H_
#define VIVIT_JAX_MODELS_CPU_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>

#include "xla/ffi/api/ffi.h"

namespace vivit_jax {

constexpr int kLanes = 16;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
// The same vector at any float's address, for arrays XLA lays out.
typedef float UnalignedVec
    __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));

inline Vec Load(const float* p) { return *reinterpret_cast<const Vec*>(p); }
inline void Store(float* p, Vec x) { *reinterpret_cast<Vec*>(p) = x; }
inline Vec LoadUnaligned(const float* p) {
  return *reinterpret_cast<const UnalignedVec*>(p);
}
inline void StoreUnaligned(float* p, Vec x) {
  *reinterpret_cast<UnalignedVec*>(p) = x;
}

// Calls worker(i) for every i in [0, count), on the calling thread and on
// the pool's threads. Each thread makes its own worker with make_worker()
// before its first item (for its own scratch memory). Items are claimed
// from a shared counter, so which thread runs which item varies from call
// to call: items must not add into shared memory, or sums would change with
// the order. A pool task counts itself active before it claims an item, so
// once the caller has found every item claimed it need only wait for the
// active tasks: it never waits for a task that has not started (which could
// wait behind this very call), and a task that starts later finds no item
// and touches only the shared state.
template <typename MakeWorker>
void ForEach(xla::ffi::ThreadPool& pool, int64_t count,
             MakeWorker make_worker) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int> active{0};
    std::mutex mutex;
    std::condition_variable done;
  };
  auto state = std::make_shared<State>();
  auto run = [state, count, make_worker]() {
    std::optional<decltype(make_worker())> worker;
    for (int64_t i = state->next.fetch_add(1); i < count;
         i = state->next.fetch_add(1)) {
      if (!worker) worker.emplace(make_worker());
      (*worker)(i);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  for (int64_t t = 0; t < helpers; ++t) {
    pool.Schedule([state, run]() {
      state->active.fetch_add(1);
      run();
      std::lock_guard<std::mutex> lock(state->mutex);
      state->active.fetch_sub(1);
      state->done.notify_all();
    });
  }
  run();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->done.wait(lock, [&] { return state->active.load() == 0; });
}

// The rows of a (..., width) array in kRowBlocks fixed blocks, the work
// items of kernels that sum over rows (parameter gradients): a block's sum
// does not depend on the thread that takes it. Rows [first(b), first(b + 1))
// form block b.
constexpr int64_t kRowBlocks = 32;

struct RowBlocks {
  explicit RowBlocks(const xla::ffi::Buffer<xla::ffi::F32>& x)
      : width(x.dimensions().back()),
        count(width ? x.element_count() / width : 0),
        per_block((count + kRowBlocks - 1) / kRowBlocks) {}
  int64_t first(int64_t block) const {
    return std::min(count, block * per_block);
  }
  int64_t width, count, per_block;
};

}  // namespace vivit_jax

#endif  // VIVIT_JAX_MODELS_CPU_PARALLEL_H_
