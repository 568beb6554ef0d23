// One pool of worker threads per CPU backend, sized to the cores. parallel_for splits [0, n) into
// chunks that the caller thread and the workers claim from one atomic counter, so uneven items
// (MoE experts with different token counts, attention rows of different lengths) balance out.
//
// Decode issues ~10 small ops per layer, so dispatch latency matters more than throughput here:
// idle workers spin (with pause) for kSpinMicros before they sleep on a condition variable, the
// caller always takes a share of the work itself, and it never waits for a worker that has not
// joined the job (see gen_ below). Which thread runs an item never changes what
// the item computes, so results do not depend on the thread count.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace gptoss {

class ThreadPool {
 public:
  // threads <= 0: cpu_default_threads(). threads counts the caller: threads - 1 workers start.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return int(workers_.size()) + 1; }

  // Calls fn(begin, end) on disjoint chunks that cover [0, n) exactly once, and returns when all
  // are done. Chunks are at least `grain` long. Runs inline (one call fn(0, n)) when n <= grain,
  // when the pool has one thread, when called from inside a parallel_for of any pool (nested
  // parallelism is serial), or when another thread is using this pool at the same time.
  template <class F>
  void parallel_for(int64_t n, F&& fn, int64_t grain = 1) {
    using Fn = typename std::remove_reference<F>::type;
    run(n, grain, [](void* ctx, int64_t b, int64_t e) { (*static_cast<Fn*>(ctx))(b, e); },
        const_cast<void*>(static_cast<const void*>(&fn)));
  }

  static constexpr int kSpinMicros = 2000;

 private:
  using Trampoline = void (*)(void*, int64_t, int64_t);
  void run(int64_t n, int64_t grain, Trampoline tramp, void* ctx);
  void worker_loop();
  void claim_chunks();

  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // one parallel_for at a time per pool

  // The current job. Written by the caller before gen_ opens it, read by workers only while they
  // are counted in active_ and have seen gen_ still equal to the open value.
  Trampoline tramp_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};

  // Odd: a job is open; even: closed. The caller opens a job, runs chunks itself, closes it and
  // then waits only for the workers that joined (active_), never for a worker that is asleep or
  // descheduled: with more threads than free cores a job still costs no more than its work.
  // active_ and gen_ are seq_cst on both sides (Dekker-style): a worker either sees the job
  // closed or is seen by the caller's wait.
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> active_{0};
  std::atomic<int> sleeping_{0};    // workers blocked on cv_ (seq_cst with gen_, as above)
  std::atomic<bool> stop_{false};
  std::mutex sleep_mutex_;
  std::condition_variable cv_;
};

}  // namespace gptoss
