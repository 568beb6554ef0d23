// Dense bf16-weight matmul on CUDA: y[t, n] (+)= sum_k x[t, k] * w[n, k] + bias[n] (csrc/ops.h
// DenseParams), x bf16, w bf16 [N][K] row-major, accumulation in f32, y bf16 or f32 (accumulate=true
// adds onto an f32 y). Used for qkv (y bf16), the attention output projection (+= onto the f32
// residual), the router and the unembedding (y f32). The same decode GEMV also serves the fused
// families of ops.h (attn_input: rmsnorm + qkv + RoPE + KV append; moe_input: rmsnorm + router +
// top-k) for decode-sized steps.
#pragma once

#include <cuda_runtime.h>

#include "common.h"
#include "device_errors.cuh"
#include "ops.h"

namespace gptoss {

// Scratch for split-K: per-tile arrival counters (left at zero by the kernels; the backend zero-fills
// the region when it allocates it) and f32 partial tiles. Sized once by dense_workspace_bytes.
// With no workspace (ptr null) every launch still works, without cross-block split-K.
struct DenseWorkspace {
  void* ptr = nullptr;
  size_t bytes = 0;
  int num_sms = 0;                      // of the device: sizes the split-K grids (0: no split-K)
  bool pdl = false;                     // launch the GEMVs with programmatic dependent launch (sm_90+)
  DeviceErrorRecord* errors = nullptr;  // bad KV-cache slots met by the fused KV append
};

size_t dense_workspace_bytes(int num_sms);

// The fields every dense kernel's argument block starts with, as DenseParams gives them: DenseArgs
// (dense_bf16.cu), WgArgs (dense_bf16_wgmma.cu) and ResidentArgs (dense_gemv_resident.cu) extend it.
struct DenseCoreArgs {
  const bf16_t* x;
  int ldx;
  const bf16_t* w;
  const float* bias;
  void* y;
  int ldy;
  int T, K, N;
  int y_f32;       // 1: y is f32, 0: bf16
  int accumulate;  // 1: y (f32) += result
};

inline DenseCoreArgs dense_core_args(const DenseParams& p) {
  DenseCoreArgs a;
  a.x = static_cast<const bf16_t*>(p.x);
  a.ldx = p.ldx;
  a.w = p.w;
  a.bias = p.bias;
  a.y = p.y;
  a.ldy = p.ldy;
  a.T = p.T;
  a.K = p.K;
  a.N = p.N;
  a.y_f32 = p.y_type == DType::F32;
  a.accumulate = p.accumulate;
  return a;
}

// Requirements (checked, InvalidArgument otherwise): x_type BF16 (else Unsupported), y_type BF16 or
// F32 (F32 when accumulate), K > 0, ldx >= K, ldy >= N, any T >= 0 and N >= 0. The fast kernels
// need K % 32 == 0, ldx % 8 == 0 and 16-byte aligned x and w (every dense layer of gpt-oss);
// anything else takes a slow but exact generic kernel. No allocation, no host sync: capture-safe.
Status launch_dense_bf16(const DenseParams& p, const DenseWorkspace& ws, cudaStream_t stream);

// Whether the fused kernels serve this call (decode-sized steps, fused q|k|v weight, bf16
// activations, the buffer layout the engine uses); otherwise the backend runs the composition.
bool attn_input_fusable(const AttnInputParams& p);
bool moe_input_fusable(const MoEInputParams& p);
Status launch_attn_input_fused(const AttnInputParams& p, const DenseWorkspace& ws, cudaStream_t stream);
Status launch_moe_input_fused(const MoEInputParams& p, const DenseWorkspace& ws, cudaStream_t stream);

}  // namespace gptoss
