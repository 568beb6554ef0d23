// Dense bf16-weight matmul on CUDA (implemented by cuda-b in cuda/dense_bf16.cu).
// PRIVATE COPY in branch cuda-a of the interface fixed in the team brief; cuda-b's header replaces
// it on merge.
#pragma once

#include <cuda_runtime.h>

#include "common.h"
#include "ops.h"

namespace gptoss {

Status launch_dense_bf16(const DenseParams& p, cudaStream_t stream);  // all dtype combos of CUDA

}  // namespace gptoss
