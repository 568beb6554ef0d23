// Router top-k + softmax on the GPU (cuda/router_topk.cu). Semantics: RouterParams in csrc/ops.h.
#pragma once

#include <cuda_runtime.h>

#include "ops.h"

namespace gptoss {

constexpr int kRouterMaxExperts = 256;  // E <= 256 (gpt-oss: 32 or 128)
constexpr int kRouterMaxK = 8;          // k <= 8  (gpt-oss: 4)

Status launch_router_topk(const RouterParams& p, cudaStream_t stream);

}  // namespace gptoss
