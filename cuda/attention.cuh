// GQA attention with sinks and sliding window on the GPU (cuda/attention.cu).
// Semantics: AttentionParams in csrc/ops.h.
#pragma once

#include <cuda_runtime.h>

#include "device_errors.cuh"
#include "ops.h"

namespace gptoss {

// Scratch for the decode kernel's split-K partials, sized once by the backend's reserve().
// The first part holds per-(token, KV head) arrival counters that the kernels leave at zero; the
// backend zero-fills the region when it allocates it.
struct AttentionWorkspace {
  void* ptr = nullptr;
  size_t bytes = 0;
  int num_sms = 0;                      // of the device: sizes the split-K grid
  DeviceErrorRecord* errors = nullptr;  // bad slots / a cache too short for a sequence land here
  bool pdl = false;                     // decode: programmatic dependent launch (the backend's pdl_ decision)
};

// Bytes of scratch launch_attention needs for any step of at most `max_tokens` tokens (reserve),
// and for the step `p` itself.
size_t attention_workspace_bytes(int max_tokens, int n_q, int n_kv, int num_sms);
size_t attention_step_workspace_bytes(const AttentionParams& p, int num_sms);

// BF16 q/k/v/out (4-byte aligned q/out with even ldq/ldo; 16-byte aligned k/v with ldkv % 8 == 0),
// head_dim 64, n_q a multiple of n_kv with at most 16 query heads per KV head.
Status launch_attention(const AttentionParams& p, const AttentionWorkspace& ws, cudaStream_t stream);

}  // namespace gptoss
