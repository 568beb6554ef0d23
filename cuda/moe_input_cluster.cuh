// The sm_90 thread-block-cluster kernel of the fused MoE input (cuda/moe_input_cluster.cu):
// rmsnorm -> router GEMV -> top-k for steps of up to 128 tokens. launch_moe_input_fused
// (cuda/dense_bf16.cu) takes it whenever it fits, and the GEMV fusion otherwise.
#pragma once

#include <cuda_runtime.h>

#include "ops.h"

namespace gptoss {

// The call's shapes and buffers fit (T <= 128, E <= 128, K % 8 == 0, the engine's layout) and the
// device and build can run it (sm_90+ code, no GPT_OSS_C_FORCE_PORTABLE=1).
bool moe_input_cluster_fits(const MoEInputParams& p);
Status launch_moe_input_cluster(const MoEInputParams& p, bool pdl, cudaStream_t stream);

}  // namespace gptoss
