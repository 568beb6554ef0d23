// SASS probe for the e4m3 decode-MoE plan (bench/NOTES.md, end of session 8): the instructions per
// 1,024-weight chunk (one 16-row x 64-k tile per warp, 32 FP4 weights per lane) of three inner loops,
// counted from the compiled code, no GPU needed:
//   nvcc -std=c++17 -O3 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Icsrc -Icuda \
//     -cubin -o /tmp/probe.cubin bench/e4m3_sass_probe.cu && cuobjdump -sass /tmp/probe.cubin
// and count each function's loop body (between the backward BRA and its target).
//   probe_bf16:   today's dequantisation (moe::dequant_steps) and 4 mma.sync m16n8k16 bf16
//   probe_mma_e4m3: the e4m3 layout (5 integer ops per 8 weights) and 2 mma.sync m16n8k32 e4m3 --
//                 on sm_90 ptxas emulates it (F2FP conversions of A and B + f16 HMMA)
//   probe_wgmma_e4m3: the same weights as the register A operand of wgmma m64n8k32 e4m3 (native
//                 QGMMA), B (the activation terms) from shared memory, scale-d = 0 per MXFP4 block
//                 and the block scale applied to the f32 result (4 FFMA per block)
// e4m3 layout: byte b of a word holds two FP4 codes, one at bits (7, 4, 3, 2) for (sign, e1, e0, m)
// -- already an e4m3 byte times 2^6 -- and one at bits (5, 6, 1, 0), which a rotate by 2 and one by
// 30 bring to the same places. The scale factor of block scale byte s is 2^(s - 127 + 6).
#include <cstdint>

#include "mma_sm80.cuh"
#include "moe_mxfp4_impl.cuh"

using namespace gptoss;

__device__ __forceinline__ void unpack_e4m3(uint32_t u, uint32_t& lo, uint32_t& hi) {
  lo = u & 0x9C9C9C9Cu;
  hi = (__funnelshift_l(u, u, 2) & 0x8C8C8C8Cu) | (__funnelshift_l(u, u, 30) & 0x10101010u);
}

// A lane's 16 code bytes of one chunk -> the 8 e4m3 registers of its two k32 MMA steps.
__device__ __forceinline__ void unpack_chunk(const uint4& w, uint32_t (&A)[8]) {
  unpack_e4m3(w.x, A[0], A[1]);
  unpack_e4m3(w.y, A[2], A[3]);
  unpack_e4m3(w.z, A[4], A[5]);
  unpack_e4m3(w.w, A[6], A[7]);
}

__device__ __forceinline__ void block_factors(uint32_t sw, float (&f)[4]) {
  const uint32_t v = sw + 0x06060606u;  // s + 6 per byte (s <= 249)
  f[0] = __uint_as_float((v << 23) & 0x7F800000u);
  f[1] = __uint_as_float((v << 15) & 0x7F800000u);
  f[2] = __uint_as_float((v << 7) & 0x7F800000u);
  f[3] = __uint_as_float((v >> 1) & 0x7F800000u);
}

__device__ __forceinline__ void scale_add(float (&acc)[4], const float (&c)[4], float f_lo, float f_hi) {
  acc[0] = fmaf(c[0], f_lo, acc[0]);
  acc[1] = fmaf(c[1], f_lo, acc[1]);
  acc[2] = fmaf(c[2], f_hi, acc[2]);
  acc[3] = fmaf(c[3], f_hi, acc[3]);
}

extern "C" __global__ void probe_bf16(const uint4* __restrict__ w, const uint32_t* __restrict__ s,
                                      const uint4* __restrict__ b, float* out, int n) {
  float acc0[4] = {0, 0, 0, 0}, acc1[4] = {0, 0, 0, 0};
  for (int j = 0; j < n; ++j) {
    const uint4 ww = w[j * 32 + threadIdx.x];
    const uint32_t sw = s[j * 8 + (threadIdx.x >> 2)];
    const uint4 b0 = b[j * 8 + (threadIdx.x & 3)], b1 = b[j * 8 + 4 + (threadIdx.x & 3)];
    uint32_t A[4][4];
    moe::dequant_steps<true, 4>(ww, sw, 0, A);
    tc::mma_bf16_16816(acc0, A[0][0], A[0][1], A[0][2], A[0][3], b0.x, b0.y);
    tc::mma_bf16_16816(acc0, A[1][0], A[1][1], A[1][2], A[1][3], b0.z, b0.w);
    tc::mma_bf16_16816(acc1, A[2][0], A[2][1], A[2][2], A[2][3], b1.x, b1.y);
    tc::mma_bf16_16816(acc1, A[3][0], A[3][1], A[3][2], A[3][3], b1.z, b1.w);
  }
  for (int i = 0; i < 4; ++i) out[threadIdx.x * 4 + i] = acc0[i] + acc1[i];
}

__device__ __forceinline__ void mma_e4m3(float (&d)[4], const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%10,%10,%10};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.0f));
}

extern "C" __global__ void probe_mma_e4m3(const uint4* __restrict__ w, const uint32_t* __restrict__ s,
                                          const uint4* __restrict__ b, float* out, int n) {
  float acc[4] = {0, 0, 0, 0};
  for (int j = 0; j < n; ++j) {
    const uint4 ww = w[j * 32 + threadIdx.x];
    const uint4 bb = b[j * 4 + (threadIdx.x & 3)];
    uint32_t A[8];
    unpack_chunk(ww, A);
    float f[4], c0[4], c1[4];
    block_factors(s[j * 8 + (threadIdx.x >> 2)], f);
    mma_e4m3(c0, A, bb.x, bb.y);
    mma_e4m3(c1, A + 4, bb.z, bb.w);
    scale_add(acc, c0, f[0], f[1]);
    scale_add(acc, c1, f[2], f[3]);
  }
  for (int i = 0; i < 4; ++i) out[threadIdx.x * 4 + i] = acc[i];
}

// D[64][8] = A[64][32] (registers) x B[32][8] (shared memory descriptor), not accumulated (scale-d 0).
__device__ __forceinline__ void wgmma_e4m3_n8(float (&d)[4], const uint32_t* a, uint64_t bdesc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 0, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k32.f32.e4m3.e4m3 {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, p, 1, 1;\n}\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(bdesc));
}

extern "C" __global__ void probe_wgmma_e4m3(const uint4* __restrict__ w, const uint32_t* __restrict__ s,
                                            uint64_t bdesc, float* out, int n) {
  float acc[4] = {0, 0, 0, 0};
  for (int j = 0; j < n; ++j) {
    const uint4 ww = w[j * 128 + threadIdx.x];
    uint32_t A[8];
    unpack_chunk(ww, A);
    float f[4], c0[4], c1[4];
    block_factors(s[j * 32 + (threadIdx.x >> 2)], f);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    wgmma_e4m3_n8(c0, A, bdesc + 2 * j);
    wgmma_e4m3_n8(c1, A + 4, bdesc + 2 * j + 1);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    scale_add(acc, c0, f[0], f[1]);
    scale_add(acc, c1, f[2], f[3]);
  }
  for (int i = 0; i < 4; ++i) out[threadIdx.x * 4 + i] = acc[i];
}
