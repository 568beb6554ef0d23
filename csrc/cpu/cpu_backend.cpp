// The CPU backend: host memory, f32 activations, weights used in place (mmapped checkpoint pages),
// one thread pool, the SIMD kernel table picked at start-up, and scratch buffers the ops share.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

#include "backend.h"
#include "cpu/cpu_ops.h"

namespace gptoss {

namespace {

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  return "unknown CPU";
}

// Free physical memory, for out-of-memory messages (0 where the OS does not say).
size_t free_host_bytes() {
#if defined(_SC_AVPHYS_PAGES)
  const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? size_t(pages) * size_t(page) : 0;
#else
  return 0;
#endif
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : pool_(threads), simd_(simd_kernels()) {}

  const char* name() const override { return "cpu"; }
  DType act_type() const override { return DType::F32; }
  // F32: the CPU path is f32 end to end; bf16 K/V alone would cost ~5% relative logit error.
  DType kv_type() const override { return DType::F32; }
  bool host_memory() const override { return true; }
  std::string device_name() const override {
    return cpu_model_name() + " (" + std::to_string(pool_.threads()) + " threads, " + simd_.name + ")";
  }

  Status alloc(void** ptr, size_t bytes, const char* what) override {
    // 64-byte alignment: a cache line, and the widest vector the kernels load.
    const size_t rounded = (std::max<size_t>(bytes, 1) + 63) & ~size_t(63);
    *ptr = std::aligned_alloc(64, rounded);
    if (!*ptr)
      return make_error(StatusCode::OutOfMemory, std::string("cpu backend: cannot allocate ") +
                                                     std::to_string(bytes) + " bytes for " + what + " (" +
                                                     std::to_string(free_host_bytes()) + " bytes free)");
    return Status::Ok();
  }
  void free(void* ptr) override { std::free(ptr); }
  Status copy_to_device(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  Status copy_to_host(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  Status memset(void* dst, int value, size_t bytes) override {
    if (bytes) std::memset(dst, value, bytes);
    return Status::Ok();
  }
  Status synchronize() override { return Status::Ok(); }

  Status place_weight(WeightKind, const void* host, size_t, const int64_t*, int, const char* name,
                      const void** out) override {
    if (!host) return make_error(StatusCode::InvalidArgument, std::string("place_weight: ") + name + " has no data");
    *out = host;  // used in place: no copy, no layout change
    return Status::Ok();
  }
  void release_weights() override {}

  Status reserve(const BackendLimits& lim) override {
    // Sizes the scratch the ops would otherwise grow on their first big step.
    const size_t T = size_t(std::max(lim.max_tokens, 1)), A = T * size_t(std::max(lim.top_k, 1));
    float* f = nullptr;
    int32_t* i = nullptr;
    GPTOSS_RETURN_IF_ERROR(grow_scratch(scratch_.moe_x, A * lim.hidden, "moe activations", &f));
    GPTOSS_RETURN_IF_ERROR(grow_scratch(scratch_.moe_z, A * lim.intermediate, "moe swiglu outputs", &f));
    GPTOSS_RETURN_IF_ERROR(grow_scratch(scratch_.moe_y, A * lim.hidden, "moe expert outputs", &f));
    GPTOSS_RETURN_IF_ERROR(grow_scratch(scratch_.moe_index, 2 * (size_t(lim.n_experts) + 1) + 2 * A, "moe index", &i));
    // Attention on the F32 cache (kv_type) needs no k/v copy, only the states of split decode rows.
    const size_t parts = cpu_attention_partial_floats(int(T), lim.n_q, lim.n_kv, lim.max_context, pool_.threads());
    GPTOSS_RETURN_IF_ERROR(grow_scratch(scratch_.attn_parts, parts, "attention partial states", &f));
    GPTOSS_RETURN_IF_ERROR(grow_scratch(scratch_.attn_chunk0, T + 1, "attention chunk index", &i));
    GPTOSS_RETURN_IF_ERROR(grow_scratch(scratch_.sample, 2 * size_t(std::max(lim.max_seqs, 1)) * lim.vocab, "sampling", &f));
    return Status::Ok();
  }

  Status embed(const EmbedParams& p) override { return cpu_embed(ctx_, p); }
  Status rmsnorm(const RMSNormParams& p) override { return cpu_rmsnorm(ctx_, p); }
  Status dense(const DenseParams& p) override { return cpu_dense(ctx_, p); }
  Status rope(const RopeParams& p) override { return cpu_rope(ctx_, p); }
  Status attention(const AttentionParams& p) override { return cpu_attention(ctx_, p); }
  Status kv_append(const KVAppendParams& p) override { return cpu_kv_append(ctx_, p); }
  Status router_topk(const RouterParams& p) override { return cpu_router_topk(ctx_, p); }
  Status moe(const MoEParams& p) override { return cpu_moe(ctx_, p); }
  Status sample(const SampleParams& p) override { return cpu_sample(ctx_, p); }

 private:
  ThreadPool pool_;
  const SimdKernels& simd_;
  CpuScratch scratch_;
  CpuContext ctx_{pool_, simd_, scratch_};
};

}  // namespace

int cpu_default_threads() {
  if (const char* env = std::getenv("GPT_OSS_C_THREADS"); env && *env) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (*end == '\0' && n >= 1 && n <= 4096) return int(n);
    std::fprintf(stderr, "gpt_oss_c: ignoring GPT_OSS_C_THREADS=%s (expected an integer in [1, 4096])\n", env);
  }
#if defined(__linux__)
  // The cores this process may run on (a container's cpuset), not every core of the host.
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? int(hw) : 1;
}

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace gptoss
