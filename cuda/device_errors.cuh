// Errors that kernels find in device-resident inputs: KV-cache slots, positions against the cache
// length, sampling settings. The host cannot check these without a synchronisation (which would
// break graph capture and stall the pipeline), so a kernel that meets one records the first such
// error here and carries on in a memory-safe way (it skips the bad sequence or clamps to a safe
// path). The backend reads the record whenever it synchronises anyway (synchronize, copy_to_host)
// and returns it as an InvalidArgument status naming the op, the sequence and the values.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace gptoss {

enum DeviceErrorCode : int32_t {
  kDevErrNone = 0,
  kDevErrAttentionSlot,     // seq, slot, slots
  kDevErrKVAppendSlot,      // seq, slot, slots
  kDevErrCacheTooShort,     // seq, lo, start, len: keys [lo, start) needed, the cache holds `len`
  kDevErrSamplingSetting,   // seq, field (0 temperature, 1 top_k, 2 top_p, 3 min_p), value bits
};

struct DeviceErrorRecord {
  int32_t code;  // first error wins (atomicCAS from kDevErrNone)
  int32_t seq;
  int32_t v0, v1, v2;
};

#if defined(__CUDACC__)
__device__ __forceinline__ void record_device_error(DeviceErrorRecord* r, int32_t code, int32_t seq, int32_t v0,
                                                    int32_t v1 = 0, int32_t v2 = 0) {
  if (r == nullptr) return;
  if (atomicCAS(&r->code, int32_t(kDevErrNone), int32_t(-1)) != kDevErrNone) return;  // not the first
  r->seq = seq;
  r->v0 = v0;
  r->v1 = v1;
  r->v2 = v2;
  __threadfence();
  atomicExch(&r->code, code);
}
#endif

}  // namespace gptoss
