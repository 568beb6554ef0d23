// L2 prefetch: fire-and-forget pulls of read-only bytes toward L2 (prefetch.global.L2): a kernel's
// own weights before it waits for its predecessor, or the weights a later op will read (the
// PrefetchHint of csrc/ops.h). A decode step reads every weight once and its short kernels leave
// the memory system idle at their edges; the early-launched dependents of programmatic dependent
// launch cannot fill that time themselves when the running grid holds the SMs' registers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "ops.h"

namespace gptoss {

__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p)); }

// Bytes [ptr, ptr + bytes) split evenly over `parts` cooperating groups in 128-byte lines; group
// `part` pulls its piece with its `nthreads` threads (thread `tid`). Any part may be empty.
__device__ __forceinline__ void prefetch_l2_share(const void* ptr, size_t bytes, long part, long parts, int tid,
                                                  int nthreads) {
  if (ptr == nullptr || bytes == 0 || parts <= 0) return;
  const long lines = long((bytes + 127) / 128);
  const char* base = static_cast<const char*>(ptr);
  for (long i = part * lines / parts + tid, e = (part + 1) * lines / parts; i < e; i += nthreads)
    prefetch_l2(base + size_t(i) * 128);
}

}  // namespace gptoss
