// Decode GEMV with the whole weight matrix resident in shared memory (cuda/dense_gemv_resident.cu):
// y[t, n] (+)= sum_k x[t, k] w[n, k] + bias[n] for T <= 8, each block holding its rows of w, copied
// before the grid dependency resolves. launch_dense_bf16 (cuda/dense_bf16.cu) takes it for decode
// steps whose weights fit in one block per SM (at 20b and 120b: the attention output projection).
#pragma once

#include <cuda_runtime.h>

#include "dense_bf16.cuh"
#include "ops.h"

namespace gptoss {

// 1 <= T <= 8, K % 32 == 0, ldx % 8 == 0, 16-byte aligned x and w (launch_dense_bf16 checks the
// rest), programmatic dependent launch on (ws.pdl: the kernel exists to load its weights while its
// predecessor runs), K <= 4096, ceil(N / SMs) <= 24 rows of w per block within 192 KB and the
// device's per-block shared memory, and GPT_OSS_C_GEMV_RESIDENT is not 0.
bool dense_gemv_resident_fits(const DenseParams& p, const DenseWorkspace& ws);
Status launch_dense_gemv_resident(const DenseParams& p, const DenseWorkspace& ws, cudaStream_t stream);

}  // namespace gptoss
