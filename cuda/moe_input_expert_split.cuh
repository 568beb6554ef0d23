// The sm_90 single-token kernel of the fused MoE input (cuda/moe_input_expert_split.cu): rmsnorm ->
// router GEMV -> top-k with the experts split over the blocks of one cluster. launch_moe_input_fused
// (cuda/dense_bf16.cu) takes it for T = 1 whenever it fits, the K-split cluster kernel
// (cuda/moe_input_cluster.cu) for other steps of up to 128 tokens.
#pragma once

#include <cuda_runtime.h>

#include "ops.h"

namespace gptoss {

// One token, E <= 256, K % 8 == 0, 32 experts' rows of W in one block's shared memory (K <= ~3000),
// the engine's layout, and a device and build that can run it (sm_90+ code, no
// GPT_OSS_C_FORCE_PORTABLE=1, no GPT_OSS_C_MOE_INPUT=cluster).
bool moe_input_expert_split_fits(const MoEInputParams& p);
Status launch_moe_input_expert_split(const MoEInputParams& p, bool pdl, cudaStream_t stream);

}  // namespace gptoss
