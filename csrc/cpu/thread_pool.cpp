// ThreadPool: a generation counter opens and closes each job; workers spin on it briefly, then
// sleep. A worker joins an open job by entering active_ and re-checking the generation; the caller
// closes the job after its own chunks and waits until active_ is 0, so it never returns while a
// worker could still touch the job's closure (which lives on the caller's stack).
#include "cpu/thread_pool.h"

#include <algorithm>
#include <chrono>

#include "backend.h"

#if defined(GPT_OSS_C_X86)
#include <immintrin.h>
#define GPTOSS_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define GPTOSS_CPU_RELAX() asm volatile("yield" ::: "memory")
#else
#define GPTOSS_CPU_RELAX() std::this_thread::yield()
#endif

namespace gptoss {

namespace {
// > 0 while this thread executes chunks of some pool's job: nested parallel_for runs inline.
thread_local int tl_parallel_depth = 0;

struct DepthGuard {
  DepthGuard() { ++tl_parallel_depth; }
  ~DepthGuard() { --tl_parallel_depth; }
};
}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = cpu_default_threads();
  workers_.reserve(size_t(threads - 1));
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(sleep_mutex_);
    stop_.store(true);
    gen_.fetch_add(2);  // a change every worker wakes for; stays closed
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::claim_chunks() {
  DepthGuard depth;
  for (;;) {
    int64_t b = next_.fetch_add(chunk_, std::memory_order_relaxed);
    if (b >= n_) return;
    tramp_(ctx_, b, std::min(n_, b + chunk_));
  }
}

void ThreadPool::run(int64_t n, int64_t grain, Trampoline tramp, void* ctx) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  std::unique_lock<std::mutex> lock(run_mutex_, std::try_to_lock);
  if (workers_.empty() || n <= grain || tl_parallel_depth > 0 || !lock.owns_lock()) {
    DepthGuard depth;
    tramp(ctx, 0, n);
    return;
  }
  // ~4 chunks per thread: enough to even out uneven items, few enough that the shared counter
  // is not contended.
  const int64_t target = int64_t(threads()) * 4;
  tramp_ = tramp;
  ctx_ = ctx;
  n_ = n;
  chunk_ = std::max(grain, (n + target - 1) / target);
  next_.store(0, std::memory_order_relaxed);
  gen_.fetch_add(1, std::memory_order_seq_cst);  // open (odd); publishes the fields above
  if (sleeping_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> g(sleep_mutex_);
    cv_.notify_all();
  }
  claim_chunks();
  gen_.fetch_add(1, std::memory_order_seq_cst);  // close (even): no worker joins from now on
  while (active_.load(std::memory_order_seq_cst) != 0) GPTOSS_CPU_RELAX();
}

void ThreadPool::worker_loop() {
  // Not gen_.load(): a worker that starts after the first job was opened must still see it.
  uint64_t seen = 0;
  for (;;) {
    // Spin first: the next op of a decode step usually arrives within microseconds. Yield now
    // and then so a spinning worker does not starve other runnable threads on a busy machine.
    auto t0 = std::chrono::steady_clock::now();
    uint64_t g;
    for (int i = 0;; ++i) {
      g = gen_.load(std::memory_order_acquire);
      if (g != seen) break;
      GPTOSS_CPU_RELAX();
      if ((i & 1023) == 1023) {
        std::this_thread::yield();
        if (std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(kSpinMicros)) {
          std::unique_lock<std::mutex> lock(sleep_mutex_);
          sleeping_.fetch_add(1, std::memory_order_seq_cst);
          cv_.wait(lock, [&] { return gen_.load(std::memory_order_seq_cst) != seen; });
          sleeping_.fetch_sub(1, std::memory_order_seq_cst);
          g = gen_.load(std::memory_order_acquire);
          break;
        }
      }
    }
    seen = g;
    if (stop_.load()) return;
    if ((g & 1) == 0) continue;  // a job was closed: wait for the next one
    active_.fetch_add(1, std::memory_order_seq_cst);
    if (gen_.load(std::memory_order_seq_cst) == g) claim_chunks();
    active_.fetch_sub(1, std::memory_order_seq_cst);
  }
}

}  // namespace gptoss
