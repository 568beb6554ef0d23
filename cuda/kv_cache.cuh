// KV-cache append on the GPU (cuda/kv_cache.cu). Semantics: KVAppendParams in csrc/ops.h.
#pragma once

#include <cuda_runtime.h>

#include "device_errors.cuh"
#include "ops.h"

namespace gptoss {

// k/v [T][ldkv] BF16 or F32 (16-byte aligned, ldkv a multiple of 8) into the bf16 cache. A token
// whose sequence names a slot outside the cache is not written and is reported in `errors`.
Status launch_kv_append(const KVAppendParams& p, DeviceErrorRecord* errors, cudaStream_t stream);

}  // namespace gptoss
