// Dense bf16 GEMM for prefill-sized steps on sm_90a (warpgroup MMA, both operands from shared
// memory): y[t, n] (+)= sum_k x[t, k] * w[n, k] + bias[n], the same contract as launch_dense_bf16
// (dense_bf16.cuh), which calls it for T > 128 on a device that runs sm_90a code.
#pragma once

#include <cuda_runtime.h>

#include "common.h"
#include "ops.h"

namespace gptoss {

// An sm_90 device running this build's sm_90a code, not GPT_OSS_C_FORCE_PORTABLE=1, and not
// GPT_OSS_C_DENSE_WGMMA=0 (the A/B knob: the mma.sync GEMM instead).
bool dense_wgmma_available();

// Requirements (the caller checks them): x_type BF16, K % 32 == 0, ldx % 8 == 0, x and w 16-byte
// aligned, y_type BF16 or F32 (F32 when accumulate). Capture-safe.
Status launch_dense_bf16_wgmma(const DenseParams& p, cudaStream_t stream);

}  // namespace gptoss
