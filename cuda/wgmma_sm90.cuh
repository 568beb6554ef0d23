// sm_90a warpgroup MMA helpers of the prefill GEMMs (moe_mxfp4_wgmma_rs.cu, dense_bf16_wgmma.cu). GPTOSS_WGMMA is
// defined only when compiling for sm_90a; elsewhere the kernels compile to a trap and are never
// launched (wgmma_available()).
#pragma once

#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GPTOSS_WGMMA 1
#endif

namespace gptoss {
namespace moe {

#ifdef GPTOSS_WGMMA
// Shared memory matrix descriptor: K-major, 128-byte swizzle (layout type 1), stride between
// 8-row core-matrix groups 1024 bytes, leading offset unused (1), base offset 0 (1024-aligned
// tiles; the k16 steps add 32 bytes to the start address).
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr) {
  return (uint64_t(1) << 62) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 16) | uint64_t((addr & 0x3FFFFu) >> 4);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void wgmma_wait0() { wgmma_wait<0>(); }
// Generic-proxy writes to shared memory (st.shared, cp.async) -> visible to wgmma's async proxy.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Pins the accumulators around the asynchronous MMA (the compiler must not move them between the
// wgmma issue and its wait).
template <int N>
__device__ __forceinline__ void fence_acc(float (&acc)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(acc[i])::"memory");
}
#endif  // GPTOSS_WGMMA

}  // namespace moe
}  // namespace gptoss
