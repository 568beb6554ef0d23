// RMSNorm on the GPU (cuda/rmsnorm.cu). Semantics: RMSNormParams in csrc/ops.h.
#pragma once

#include <cuda_runtime.h>

#include "ops.h"

namespace gptoss {

// x f32 and out (BF16 or F32) with H, ldx, ldo multiples of 4 and 16-byte aligned bases.
Status launch_rmsnorm(const RMSNormParams& p, cudaStream_t stream);

}  // namespace gptoss
