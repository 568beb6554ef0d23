// The sm_90 thread-block-cluster kernel of the fused MoE input (cuda/moe_input_cluster.cu):
// rmsnorm -> router GEMV -> top-k for steps of up to 128 tokens. launch_moe_input_fused
// (cuda/dense_bf16.cu) takes it whenever it fits, and the GEMV fusion otherwise.
#pragma once

#include <cuda_runtime.h>

#include "ops.h"

namespace gptoss {

// What both sm_90 moe_input kernels (this one and cuda/moe_input_expert_split.cu) need of a call:
// 1 <= T <= max_tokens, 1 <= E <= max_experts, k <= min(E, kRouterMaxK), K % 8 == 0, bf16 xn feeding the
// gate, f32 logits feeding the router, the row strides and alignments of the engine's layout.
bool moe_input_sm90_call_ok(const MoEInputParams& p, int max_tokens, int max_experts);

// The call's shapes and buffers fit (T <= 128, E <= 128, K % 8 == 0, the engine's layout) and the
// device and build can run it (sm_90+ code, no GPT_OSS_C_FORCE_PORTABLE=1).
bool moe_input_cluster_fits(const MoEInputParams& p);
Status launch_moe_input_cluster(const MoEInputParams& p, bool pdl, cudaStream_t stream);

}  // namespace gptoss
