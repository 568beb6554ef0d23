// YaRN RoPE on the GPU (cuda/rope_yarn.cu). Semantics: RopeParams in csrc/ops.h.
#pragma once

#include <cuda_runtime.h>

#include "ops.h"

namespace gptoss {

// q [T][ldq] and k [T][ldk], BF16 or F32, rotated in place; ldq, ldk even and bases 4-byte aligned.
Status launch_rope(const RopeParams& p, cudaStream_t stream);

}  // namespace gptoss
