// sm_90a warpgroup MMA helpers of the prefill GEMMs (moe_mxfp4_wgmma_rs.cu, dense_bf16_wgmma.cu). GPTOSS_WGMMA is
// defined only when compiling for sm_90a; elsewhere the kernels compile to a trap and are never
// launched (wgmma_available()).
#pragma once

#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GPTOSS_WGMMA 1
#endif

// The operand lists every m64nNk16 wrapper spells out (N / 2 f32 accumulators per thread): the
// accumulator placeholders of the instruction text and their "+f" constraints, in blocks of 32.
#define GPTOSS_WG_PH32_0 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define GPTOSS_WG_PH32_32 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define GPTOSS_WG_PH32_64 "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
#define GPTOSS_WG_PH32_96 "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define GPTOSS_WG_PH32 GPTOSS_WG_PH32_0
#define GPTOSS_WG_PH64 GPTOSS_WG_PH32_0 ", " GPTOSS_WG_PH32_32
#define GPTOSS_WG_PH128 GPTOSS_WG_PH64 ", " GPTOSS_WG_PH32_64 ", " GPTOSS_WG_PH32_96
#define GPTOSS_WG_ACC8(d, i) \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define GPTOSS_WG_ACC32(d, i) \
  GPTOSS_WG_ACC8(d, i), GPTOSS_WG_ACC8(d, i + 8), GPTOSS_WG_ACC8(d, i + 16), GPTOSS_WG_ACC8(d, i + 24)
#define GPTOSS_WG_ACC64(d) GPTOSS_WG_ACC32(d, 0), GPTOSS_WG_ACC32(d, 32)
#define GPTOSS_WG_ACC128(d) GPTOSS_WG_ACC64(d), GPTOSS_WG_ACC32(d, 64), GPTOSS_WG_ACC32(d, 96)

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
