// Embedding lookup on the GPU (cuda/embed.cu). Semantics: EmbedParams in csrc/ops.h.
#pragma once

#include <cuda_runtime.h>

#include "ops.h"

namespace gptoss {

// table [V][H] bf16 and out [T][H] f32, both 16-byte aligned with H % 8 == 0.
Status launch_embed(const EmbedParams& p, cudaStream_t stream);

}  // namespace gptoss
