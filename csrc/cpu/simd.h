// The CPU hot loops, as a table of micro-kernels with one implementation per instruction set:
// simd_scalar.cpp (portable), simd_avx2.cpp (-mavx2 -mfma -mf16c) and simd_avx512.cpp
// (-mavx512f/bw/vl/dq). The best level the CPU supports is picked once at run time from CPUID
// (kernel_select.cpp); $GPT_OSS_C_SIMD=scalar|avx2|avx512 forces a lower one (for benchmarks).
//
// Layouts the kernels assume:
//  * bf16 values are raw bits (uint16_t); a bf16 -> f32 conversion is a 16-bit left shift.
//  * MXFP4 rows are the checkpoint's: nb blocks of 16 bytes (byte j: element 2j in the low
//    nibble, 2j+1 in the high nibble) plus nb E8M0 scale bytes. The activations that meet them are
//    given *permuted per 32-block* as [x0 x2 ... x30 | x1 x3 ... x31] (mxfp4_permute): then the low
//    nibbles of a block's 16 bytes line up with the first 16 floats and the high nibbles with the
//    last 16, and no kernel needs an interleaving shuffle.
//  * Every kernel computes each (row, token) output with the same sequence of operations whatever
//    the number of rows or tokens in the call, so results never depend on how callers tile work
//    (and so not on the thread count either).
// These translation units include nothing with external-linkage inline code beyond this header,
// so no AVX-512 instance of a shared inline function can be picked by the linker for generic code.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gptoss {

constexpr int kSimdMaxTokens = 4;  // tokens per kernel call (weights are read once per call)
constexpr int kAttnMaxKeys = 64;   // keys per attention kernel call
constexpr int kAttnHeadDim = 64;

struct SimdKernels {
  const char* name;  // "scalar", "avx2" or "avx512"

  // out[t*ldo + r] = sum_k f32(w[r*ldw + k]) * x[t*ldx + k]   for r < R, t < T (1 <= T <= 4), any K.
  void (*gemv_bf16)(const uint16_t* w, size_t ldw, int R, int K, const float* x, size_t ldx, int T,
                    float* out, size_t ldo);

  // out[t*ldo + r] = sum_k W[r][k] * x[t][k]  for r < R, t < T (1 <= T <= 4), K = 32*nb, where
  // row r is blocks[r*nb*16 ...] with scales[r*nb ...] and xp holds the T activation rows
  // (stride ldx) permuted per block by mxfp4_permute.
  void (*gemv_mxfp4)(const uint8_t* blocks, const uint8_t* scales, int R, int nb, const float* xp,
                     size_t ldx, int T, float* out, size_t ldo);

  // Attention over a block of n <= kAttnMaxKeys keys for the G query heads that share one kv head,
  // as three steps (q [G][64] f32; k[j], v[j] point at 64-element key/value rows):
  //   scores:  s[h*lds + j] = sum_d q[h*64 + d] * k[j][d]
  //   softmax: the online-softmax update of each head's state (m[h], l[h], acc[h*64 ...]):
  //              s[h*lds + j] *= scale;  mb = max(m[h], max_j s[h*lds + j]);
  //              if mb > m[h]: alpha = exp(m[h] - mb), l[h] *= alpha, acc[h*64 + d] *= alpha, m[h] = mb;
  //              s[h*lds + j] = exp(s[h*lds + j] - mb);  l[h] += sum_j s[h*lds + j]
  //   accum:   acc[h*64 + d] += sum_j s[h*lds + j] * v[j][d]
  // with K/V rows in f32 (the CPU's KV cache) or bf16 bits (a BF16 cache, for parity with CUDA).
  void (*attn_scores_f32)(const float* q, int G, const float* const* k, int n, float* s, int lds);
  void (*attn_scores_bf16)(const float* q, int G, const uint16_t* const* k, int n, float* s, int lds);
  void (*attn_softmax)(float* s, int lds, int G, int n, float scale, float* m, float* l, float* acc);
  void (*attn_accum_f32)(const float* p, int ldp, int G, const float* const* v, int n, float* acc);
  void (*attn_accum_bf16)(const float* p, int ldp, int G, const uint16_t* const* v, int n, float* acc);
};

// x [K] -> xp [K] permuted per 32-element block as described above (K % 32 == 0).
void mxfp4_permute(const float* x, int K, float* xp);
// Index of element i of a block in the permuted order.
inline int mxfp4_permuted_index(int i) { return (i & ~31) + ((i & 1) ? 16 : 0) + ((i & 31) >> 1); }

// [256]: 2^(s-127) for every E8M0 byte (s = 255 gives +inf, as the reference's ldexp does in bf16).
const float* e8m0_scale_table();
// FP4 E2M1 code -> value, codes 0..15 (bit 3 is the sign).
extern const float kFp4Value[16];

const SimdKernels& simd_scalar_kernels();
#if defined(GPT_OSS_C_X86)
const SimdKernels& simd_avx2_kernels();
const SimdKernels& simd_avx512_kernels();
#endif

// The kernels picked for this process (best supported level, or $GPT_OSS_C_SIMD). Chosen once.
const SimdKernels& simd_kernels();
// The kernels of a named level when this build and this CPU can run them, else nullptr.
const SimdKernels* simd_kernels_for(const char* level);

}  // namespace gptoss
