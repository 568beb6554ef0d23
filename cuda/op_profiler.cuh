// Per-op GPU time for performance work: with GPT_OSS_C_PROFILE=1 the CUDA backend brackets every op
// it launches outside graph capture with a pair of CUDA events, and prints a table (total ms, calls,
// mean us, share) to stderr when it is destroyed. Set GPT_OSS_C_NO_GRAPHS=1 too, so decode steps run
// eagerly and are seen op by op. Off by default: then it costs one branch per op.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace gptoss {

class OpProfiler {
 public:
  OpProfiler() {
    const char* e = std::getenv("GPT_OSS_C_PROFILE");
    enabled_ = e && *e && std::string(e) != "0";
  }
  ~OpProfiler() {
    if (!enabled_) return;
    collect();
    print();
    for (auto& p : pending_) { cudaEventDestroy(p.a); cudaEventDestroy(p.b); }
    for (cudaEvent_t e : pool_) cudaEventDestroy(e);
  }
  bool enabled() const { return enabled_; }

  void begin(std::string key, cudaStream_t s) {
    Pending p{std::move(key), event(), event()};
    cudaEventRecord(p.a, s);
    pending_.push_back(std::move(p));
  }
  void end(cudaStream_t s) { cudaEventRecord(pending_.back().b, s); }

  // Call after the stream has synchronised: folds finished pairs into the totals.
  void collect() {
    for (auto& p : pending_) {
      float ms = 0.0f;
      if (cudaEventElapsedTime(&ms, p.a, p.b) == cudaSuccess) {
        Total& t = totals_[p.key];
        t.ms += ms;
        t.calls += 1;
      }
      cudaGetLastError();
      pool_.push_back(p.a);
      pool_.push_back(p.b);
    }
    pending_.clear();
  }

 private:
  struct Pending {
    std::string key;
    cudaEvent_t a, b;
  };
  struct Total {
    double ms = 0;
    long calls = 0;
  };
  cudaEvent_t event() {
    if (!pool_.empty()) {
      cudaEvent_t e = pool_.back();
      pool_.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    cudaEventCreate(&e);
    return e;
  }
  void print() const {
    std::vector<std::pair<std::string, Total>> rows(totals_.begin(), totals_.end());
    std::sort(rows.begin(), rows.end(), [](const auto& x, const auto& y) { return x.second.ms > y.second.ms; });
    double all = 0;
    for (auto& r : rows) all += r.second.ms;
    std::fprintf(stderr, "gpt_oss_c CUDA op profile (GPU time, eager ops only)\n%-44s %10s %8s %10s %6s\n", "op",
                 "total ms", "calls", "mean us", "share");
    for (auto& r : rows)
      std::fprintf(stderr, "%-44s %10.3f %8ld %10.2f %5.1f%%\n", r.first.c_str(), r.second.ms, r.second.calls,
                   1e3 * r.second.ms / double(r.second.calls), 100.0 * r.second.ms / (all > 0 ? all : 1));
  }

  bool enabled_ = false;
  std::vector<Pending> pending_;
  std::vector<cudaEvent_t> pool_;
  std::map<std::string, Total> totals_;
};

}  // namespace gptoss
