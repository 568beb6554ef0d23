// PTX wrappers for the sm_80 tensor-core path shared by dense_bf16.cu and moe_mxfp4.cu:
// mma.sync m16n8k16 (bf16 in, f32 accumulate), 16-byte global loads, cp.async with zero fill, and
// 16-byte shared loads. All of it runs unchanged on sm_90a.
//
// The "lane layout" every kernel of cuda-b uses (it is the layout of mma.sync m16n8k16 itself):
// lane = 4*r + c (r = lane/4 in 0..7, c = lane%4 in 0..3). In one k16 step the lane holds
//   A: (row r, kk 2c..2c+1), (row r+8, kk 2c..2c+1), (row r, kk 2c+8..2c+9), (row r+8, kk 2c+8..2c+9)
//   B: (kk 2c..2c+1, col r), (kk 2c+8..2c+9, col r)
//   C: (row r, col 2c..2c+1), (row r+8, col 2c..2c+1)
// Since a dot product does not care in which order k is summed, our kernels map the logical kk of
// a step to physical k so that each lane reads contiguous 16-byte pieces. Within a 64-wide k chunk
// starting at k0, step s = 2h + q (h, q in 0..1) maps lane (r, c)
//   kk 2c, 2c+1   -> k0 + 32h + 8c + 4q + 0, 1
//   kk 2c+8, 2c+9 -> k0 + 32h + 8c + 4q + 2, 3
// for A and B alike, so a lane's 8 consecutive elements at k0 + 32h + 8c (one 16-byte load) are
// exactly its operands for steps 2h and 2h+1: words 0,1 for q = 0 and words 2,3 for q = 1. A quad
// of lanes (same r) covers 64 contiguous bytes per load, so every global load is fully coalesced,
// and each step stays inside one 32-element half of the chunk (one MXFP4 scale block).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace gptoss {
namespace tc {

// d += a * b for one m16n8k16 tile: a = 4 bf16x2 registers, b = 2 bf16x2 registers.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                               uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 16 bytes of data read once (weights): not kept in L1, so L1 stays for the activations.
__device__ __forceinline__ uint4 ldg_stream_128(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// 16 bytes of data that other warps of the SM read too (activations): cached in L1.
__device__ __forceinline__ uint4 ldg_128(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t ldg_stream_32(const void* p) {
  uint32_t v;
  asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];\n" : "=r"(v) : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; when `valid` is false nothing is read and the 16 shared
// bytes are zero-filled (src must still be a mapped address; callers pass a base pointer).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}

// 4-byte async copy global -> shared (cp.async.ca: sizes below 16 bytes exist only with .ca).
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ uint4 lds_128(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}

__device__ __forceinline__ uint32_t lds_32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr));
  return v;
}

// Shared tiles of 64 bf16 per row (128 bytes = 8 chunks of 16 bytes) are stored with chunk q of
// row n at position q ^ (4 * (n & 1)). A fragment load reads chunk 4h + c of rows r (and r + 8):
// the 8 lanes of a quarter warp (two adjacent rows, c = 0..3) then hit 8 distinct 16-byte bank
// groups, so the 16-byte shared loads are conflict-free without padding.
__device__ __forceinline__ int swizzle_chunk(int row, int chunk) { return chunk ^ ((row & 1) << 2); }

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

}  // namespace tc
}  // namespace gptoss
