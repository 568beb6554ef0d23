// Dense bf16-weight matmul on CUDA: y[t, n] (+)= sum_k x[t, k] * w[n, k] + bias[n] (csrc/ops.h
// DenseParams), x bf16, w bf16 [N][K] row-major, accumulation in f32, y bf16 or f32 (accumulate=true
// adds onto an f32 y). Used for qkv (y bf16), the attention output projection (+= onto the f32
// residual), the router and the unembedding (y f32).
#pragma once

#include <cuda_runtime.h>

#include "common.h"
#include "ops.h"

namespace gptoss {

// Requirements (checked, InvalidArgument otherwise): x_type BF16 (else Unsupported), y_type BF16 or
// F32 (F32 when accumulate), K > 0, ldx >= K, ldy >= N, any T >= 0 and N >= 0. The fast kernels
// need K % 32 == 0, ldx % 8 == 0 and 16-byte aligned x and w (every dense layer of gpt-oss);
// anything else takes a slow but exact generic kernel. No allocation, no host sync: capture-safe.
Status launch_dense_bf16(const DenseParams& p, cudaStream_t stream);

}  // namespace gptoss
