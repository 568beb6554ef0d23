// ThreadPool: every index is visited exactly once for any n, grain and thread count (including
// more threads than cores); nested and concurrent calls run correctly; workers that fell asleep
// wake for the next job; and the dispatch latency of a small job is printed for reference.
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "check.h"
#include "cpu/thread_pool.h"

using gptoss::ThreadPool;

static void check_cover(ThreadPool& pool, int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> hits(size_t(n < 1 ? 1 : n));
  for (auto& h : hits) h.store(0);
  std::atomic<int64_t> calls{0};
  pool.parallel_for(n, [&](int64_t b, int64_t e) {
    CHECK(0 <= b && b < e && e <= n, "bad chunk [%lld, %lld) of %lld", (long long)b, (long long)e, (long long)n);
    CHECK(e - b >= grain || e == n, "chunk [%lld, %lld) shorter than grain %lld", (long long)b, (long long)e,
          (long long)grain);
    calls.fetch_add(1);
    for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
  }, grain);
  for (int64_t i = 0; i < n; ++i)
    CHECK(hits[size_t(i)].load() == 1, "index %lld visited %d times (n=%lld, threads=%d)", (long long)i,
          hits[size_t(i)].load(), (long long)n, pool.threads());
  if (n <= 0) CHECK(calls.load() == 0, "n=%lld must not call fn", (long long)n);
}

int main() {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    CHECK(pool.threads() == threads, "pool has %d threads, asked for %d", pool.threads(), threads);
    for (int64_t n : {0, 1, 2, 7, 64, 1000, 100003})
      for (int64_t grain : {1, 16}) check_cover(pool, n, grain);

    // Nested parallel_for runs inline and still covers its range.
    std::atomic<int64_t> total{0};
    pool.parallel_for(8, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        pool.parallel_for(100, [&](int64_t b2, int64_t e2) { total.fetch_add(e2 - b2); });
    });
    CHECK(total.load() == 800, "nested total %lld", (long long)total.load());

    // Workers asleep after the spin period must wake for the next job.
    std::this_thread::sleep_for(std::chrono::microseconds(3 * ThreadPool::kSpinMicros));
    check_cover(pool, 4096, 1);

    // Two outside threads using one pool at once: one of them runs inline, both are correct.
    std::thread other([&] {
      for (int r = 0; r < 200; ++r) check_cover(pool, 513, 1);
    });
    for (int r = 0; r < 200; ++r) check_cover(pool, 777, 1);
    other.join();

    // Real work is shared: jobs of 8 items x 0.5 ms, repeated until some item ran off the caller
    // thread. On a busy machine a worker may be descheduled for a while, so only a 10 s deadline
    // without any help counts as a failure.
    if (threads > 1) {
      const auto caller = std::this_thread::get_id();
      std::atomic<int> off_caller{0};
      int jobs = 0;
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while ((jobs < 20 || off_caller.load() == 0) && std::chrono::steady_clock::now() < deadline) {
        pool.parallel_for(8, [&](int64_t b, int64_t e) {
          if (std::this_thread::get_id() != caller) off_caller.fetch_add(int(e - b));
          const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(500 * (e - b));
          while (std::chrono::steady_clock::now() < until) {
          }
        });
        ++jobs;
      }
      CHECK(off_caller.load() > 0, "no worker joined any of %d jobs in 10 s (threads=%d)", jobs, threads);
      std::printf("threads=%d: %d of %d heavy items ran on workers\n", threads, off_caller.load(), 8 * jobs);
    }

    // Dispatch latency of a decode-sized job (a few items, trivial work).
    const int reps = 20000;
    std::atomic<int64_t> sum{0};
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r)
      pool.parallel_for(2 * threads, [&](int64_t b, int64_t e) { sum.fetch_add(e - b, std::memory_order_relaxed); });
    const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / reps;
    CHECK(sum.load() == int64_t(reps) * 2 * threads, "latency loop lost items");
    std::printf("threads=%d: %.2f us per parallel_for of %d items\n", threads, us, 2 * threads);
  }
  std::printf("thread pool ok\n");
  return 0;
}
