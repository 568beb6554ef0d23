// Device helpers shared by the kernels of cuda-a: warp and block reductions, bf16 pair packing,
// and the host/device ceil_div. Nothing here launches anything.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"

namespace gptoss {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

GPTOSS_HD int ceil_div(int a, int b) { return (a + b - 1) / b; }
GPTOSS_HD bool aligned_to(const void* p, size_t bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

// Share `share` of `shares` equal, 256-byte aligned pieces of [p, p + bytes) pulled into L2 by one
// bulk prefetch (the caller picks one thread per share). A hint (ops.h ReadHint): sm_90 only, a no-op
// elsewhere. p is 16-byte aligned; a last piece that is not a multiple of 16 bytes loses its tail.
__device__ __forceinline__ void l2_prefetch_share(const void* p, size_t bytes, size_t share, size_t shares) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const size_t piece = ((bytes + shares - 1) / shares + 255) & ~size_t(255);
  const size_t begin = share * piece;
  if (begin >= bytes) return;
  const uint32_t n = uint32_t(min(piece, bytes - begin)) & ~15u;
  if (n > 0)
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(static_cast<const char*>(p) + begin), "r"(n)
                 : "memory");
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Sum over the first `nwarps` warps of the block (all of them by default), returned to every thread;
// the other warps contribute nothing but must call it too (two block barriers). `red` is 32 floats
// of shared memory. The reduction tree is fixed, so the result is deterministic.
__device__ __forceinline__ float block_sum(float v, float* red, int nwarps = -1) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  if (nwarps < 0) nwarps = blockDim.x / kWarpSize;
  v = warp_sum(v);
  __syncthreads();  // `red` may still be read by a previous call
  if (lane == 0 && warp < nwarps) red[warp] = v;
  __syncthreads();
  v = lane < nwarps ? red[lane] : 0.0f;
  return warp_sum(v);
}

// RMSNorm of one f32 row x4[0 .. n4) (n4 = H / 4 float4s) times the weights g4, the first `nthreads`
// threads of the block taking part (all by default; a multiple of 32; every thread must call it):
// store(i, float4) receives elements 4i .. 4i + 3. The one loop and reduction order that
// f32_rmsnorm (cuda/rmsnorm.cu, 256 threads) and the fused decode prologues (cuda/dense_bf16.cu,
// cuda/moe_input_expert_split.cu) share, so the fused paths round exactly like the plain op. g4 may
// point to global or shared memory (plain loads). `red`: 32 floats of shared memory.
template <class Store>
__device__ __forceinline__ void rmsnorm_row(const float4* x4, const float4* g4, int n4, int H, float eps, float* red,
                                            Store store, int nthreads = -1) {
  if (nthreads < 0) nthreads = blockDim.x;
  const bool in = int(threadIdx.x) < nthreads;
  float ss = 0.0f;
  for (int i = threadIdx.x; in && i < n4; i += nthreads) {
    const float4 v = x4[i];
    ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
  }
  ss = block_sum(ss, red, nthreads / kWarpSize);
  const float inv = rsqrtf(ss / float(H) + eps);
  for (int i = threadIdx.x; in && i < n4; i += nthreads) {
    const float4 v = x4[i], g = g4[i];
    store(i, make_float4(v.x * inv * g.x, v.y * inv * g.y, v.z * inv * g.z, v.w * inv * g.w));
  }
}

// acc + sum_i w[i] x[i] over 8 weights (w: 4 unpacked bf16 pairs) and 8 f32 values (x0: 0-3, x1: 4-7),
// one fused multiply-add per element in index order (the router GEMVs of the fused moe_input kernels).
__device__ __forceinline__ float dot8(const float2 (&w)[4], const float4& x0, const float4& x1, float acc) {
  acc = fmaf(w[0].x, x0.x, acc);
  acc = fmaf(w[0].y, x0.y, acc);
  acc = fmaf(w[1].x, x0.z, acc);
  acc = fmaf(w[1].y, x0.w, acc);
  acc = fmaf(w[2].x, x1.x, acc);
  acc = fmaf(w[2].y, x1.y, acc);
  acc = fmaf(w[3].x, x1.z, acc);
  return fmaf(w[3].y, x1.w, acc);
}

// Two floats -> one 32-bit bf16 pair, `lo` in the low half (the lower element index), RNE.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ float2 unpack_bf16x2(uint32_t u) {
  return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}

}  // namespace gptoss
