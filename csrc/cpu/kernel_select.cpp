// Picks the micro-kernel table once per process from CPUID. $GPT_OSS_C_SIMD (scalar|avx2|avx512)
// may force a level this CPU supports, e.g. to benchmark the fallbacks; an unknown or unsupported
// value is reported on stderr and ignored.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "backend.h"
#include "cpu/simd.h"

namespace gptoss {

namespace {

bool cpu_has(const char* level) {
  if (std::strcmp(level, "scalar") == 0) return true;
#if defined(GPT_OSS_C_X86)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  if (std::strcmp(level, "avx2") == 0) return avx2;
  if (std::strcmp(level, "avx512") == 0)
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
  return false;
}

const SimdKernels& pick() {
  const char* forced = std::getenv("GPT_OSS_C_SIMD");
  if (forced && *forced) {
    if (const SimdKernels* k = simd_kernels_for(forced)) return *k;
    std::fprintf(stderr,
                 "gpt_oss_c: GPT_OSS_C_SIMD=%s is not a level this build and CPU can run "
                 "(scalar, avx2, avx512); using the best available\n",
                 forced);
  }
  for (const char* level : {"avx512", "avx2"})
    if (const SimdKernels* k = simd_kernels_for(level)) return *k;
  return simd_scalar_kernels();
}

}  // namespace

const SimdKernels* simd_kernels_for(const char* level) {
  if (!cpu_has(level)) return nullptr;
  if (std::strcmp(level, "scalar") == 0) return &simd_scalar_kernels();
#if defined(GPT_OSS_C_X86)
  if (std::strcmp(level, "avx2") == 0) return &simd_avx2_kernels();
  if (std::strcmp(level, "avx512") == 0) return &simd_avx512_kernels();
#endif
  return nullptr;
}

const SimdKernels& simd_kernels() {
  static const SimdKernels& k = pick();
  return k;
}

const char* cpu_simd_level() { return simd_kernels().name; }

}  // namespace gptoss
