// AVX-512 micro-kernels (16 f32 lanes; compiled with -mavx512f/bw/vl/dq -mfma, run only when
// CPUID says so). See simd.h for the layouts.
//  * Weight streams are software-prefetched kPrefetchBytes ahead.
//  * bf16 GEMV: a tile of NR weight rows x NT tokens keeps NR*NT accumulators in registers; each
//    16-element weight chunk is widened (vpmovzxwd + shift) once and FMA'd with every token. The
//    K tail uses masked loads, so every (row, token) output sees the same operation sequence.
//  * MXFP4: a block's 16 bytes are zero-extended to 16 dwords; vpermps looks the low nibble (the
//    instruction only reads index bits 3:0) and the high nibble (after a shift by 4) up in a
//    16-entry FP4 table that was multiplied by the block's scale first, giving the block's even
//    and odd elements already scaled. They meet the permuted activations [evens | odds] directly.
#if defined(GPT_OSS_C_X86)

// GCC 12's AVX-512 headers build "undefined" vectors by self-initialisation (_mm512_undefined_*),
// which its own -Wuninitialized then flags at every inlined use (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "cpu/simd.h"

namespace gptoss {
namespace {

// Weight rows are streamed from memory at decode; each row stream is prefetched this far ahead
// (one prefetch per cache line). The hardware prefetcher alone restarts at every 4 KiB page of
// every row stream; measured +10-15% on a 2-core Xeon VM (13 GB/s, its single-stream read rate).
constexpr int kPrefetchBytes = 2048;

inline __m512 widen_bf16(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load_bf16(const uint16_t* p) {
  return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load_bf16_masked(const uint16_t* p, __mmask16 m) {
  return widen_bf16(_mm256_maskz_loadu_epi16(m, p));
}

template <int NR, int NT>
void gemv_bf16_tile(const uint16_t* w, size_t ldw, int K, const float* x, size_t ldx, float* out,
                    size_t ldo) {
  __m512 acc[NR][NT];
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  int k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 xv[NT];
    for (int t = 0; t < NT; ++t) xv[t] = _mm512_loadu_ps(x + size_t(t) * ldx + k);
    for (int r = 0; r < NR; ++r) {
      if ((k & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(w + size_t(r) * ldw + k) + kPrefetchBytes, _MM_HINT_T0);
      const __m512 wv = load_bf16(w + size_t(r) * ldw + k);
      for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  if (k < K) {
    const __mmask16 m = __mmask16((1u << (K - k)) - 1u);
    __m512 xv[NT];
    for (int t = 0; t < NT; ++t) xv[t] = _mm512_maskz_loadu_ps(m, x + size_t(t) * ldx + k);
    for (int r = 0; r < NR; ++r) {
      const __m512 wv = load_bf16_masked(w + size_t(r) * ldw + k, m);
      for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) out[size_t(t) * ldo + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <int NT>
void gemv_bf16_nt(const uint16_t* w, size_t ldw, int R, int K, const float* x, size_t ldx,
                  float* out, size_t ldo) {
  int r = 0;
  for (; r + 4 <= R; r += 4) gemv_bf16_tile<4, NT>(w + size_t(r) * ldw, ldw, K, x, ldx, out + r, ldo);
  for (; r < R; ++r) gemv_bf16_tile<1, NT>(w + size_t(r) * ldw, ldw, K, x, ldx, out + r, ldo);
}

void gemv_bf16(const uint16_t* w, size_t ldw, int R, int K, const float* x, size_t ldx, int T,
               float* out, size_t ldo) {
  switch (T) {
    case 1: gemv_bf16_nt<1>(w, ldw, R, K, x, ldx, out, ldo); break;
    case 2: gemv_bf16_nt<2>(w, ldw, R, K, x, ldx, out, ldo); break;
    case 3: gemv_bf16_nt<3>(w, ldw, R, K, x, ldx, out, ldo); break;
    default: gemv_bf16_nt<4>(w, ldw, R, K, x, ldx, out, ldo); break;
  }
}

template <int NR, int NT>
void gemv_mxfp4_tile(const uint8_t* blocks, const uint8_t* scales, int nb, const float* xp,
                     size_t ldx, float* out, size_t ldo) {
  const float* e8m0 = e8m0_scale_table();
  const __m512 lut = _mm512_loadu_ps(kFp4Value);
  const size_t ldb = size_t(nb) * 16;
  __m512 acc[NR][NT];
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int b = 0; b < nb; ++b) {
    __m512 xe[NT], xo[NT];
    for (int t = 0; t < NT; ++t) {
      xe[t] = _mm512_loadu_ps(xp + size_t(t) * ldx + b * 32);
      xo[t] = _mm512_loadu_ps(xp + size_t(t) * ldx + b * 32 + 16);
    }
    for (int r = 0; r < NR; ++r) {
      if ((b & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(blocks + r * ldb + b * 16) + kPrefetchBytes, _MM_HINT_T0);
      const __m512i q = _mm512_cvtepu8_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(blocks + r * ldb + b * 16)));
      const __m512 tab = _mm512_mul_ps(lut, _mm512_set1_ps(e8m0[scales[size_t(r) * nb + b]]));
      const __m512 lo = _mm512_permutexvar_ps(q, tab);
      const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), tab);
      for (int t = 0; t < NT; ++t) {
        acc[r][t] = _mm512_fmadd_ps(lo, xe[t], acc[r][t]);
        acc[r][t] = _mm512_fmadd_ps(hi, xo[t], acc[r][t]);
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) out[size_t(t) * ldo + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <int NT>
void gemv_mxfp4_nt(const uint8_t* blocks, const uint8_t* scales, int R, int nb, const float* xp,
                   size_t ldx, float* out, size_t ldo) {
  const size_t ldb = size_t(nb) * 16;
  int r = 0;
  for (; r + 2 <= R; r += 2)
    gemv_mxfp4_tile<2, NT>(blocks + r * ldb, scales + size_t(r) * nb, nb, xp, ldx, out + r, ldo);
  for (; r < R; ++r)
    gemv_mxfp4_tile<1, NT>(blocks + r * ldb, scales + size_t(r) * nb, nb, xp, ldx, out + r, ldo);
}

void gemv_mxfp4(const uint8_t* blocks, const uint8_t* scales, int R, int nb, const float* xp,
                size_t ldx, int T, float* out, size_t ldo) {
  switch (T) {
    case 1: gemv_mxfp4_nt<1>(blocks, scales, R, nb, xp, ldx, out, ldo); break;
    case 2: gemv_mxfp4_nt<2>(blocks, scales, R, nb, xp, ldx, out, ldo); break;
    case 3: gemv_mxfp4_nt<3>(blocks, scales, R, nb, xp, ldx, out, ldo); break;
    default: gemv_mxfp4_nt<4>(blocks, scales, R, nb, xp, ldx, out, ldo); break;
  }
}

// Attention: the n key (value) rows are widened to f32 once per call into a stack block, then each
// query head runs over them with its own registers.
void attn_scores(const float* q, int G, const uint16_t* const* k, int n, float* s, int lds) {
  alignas(64) float kf[kAttnMaxKeys][kAttnHeadDim];
  for (int j = 0; j < n; ++j)
    for (int c = 0; c < 4; ++c) _mm512_store_ps(&kf[j][16 * c], load_bf16(k[j] + 16 * c));
  for (int h = 0; h < G; ++h) {
    const float* qh = q + h * kAttnHeadDim;
    const __m512 q0 = _mm512_loadu_ps(qh), q1 = _mm512_loadu_ps(qh + 16);
    const __m512 q2 = _mm512_loadu_ps(qh + 32), q3 = _mm512_loadu_ps(qh + 48);
    for (int j = 0; j < n; ++j) {
      __m512 a = _mm512_mul_ps(q0, _mm512_load_ps(&kf[j][0]));
      __m512 b = _mm512_mul_ps(q1, _mm512_load_ps(&kf[j][16]));
      a = _mm512_fmadd_ps(q2, _mm512_load_ps(&kf[j][32]), a);
      b = _mm512_fmadd_ps(q3, _mm512_load_ps(&kf[j][48]), b);
      s[h * lds + j] = _mm512_reduce_add_ps(_mm512_add_ps(a, b));
    }
  }
}

void attn_accum(const float* p, int ldp, int G, const uint16_t* const* v, int n, float* acc) {
  alignas(64) float vf[kAttnMaxKeys][kAttnHeadDim];
  for (int j = 0; j < n; ++j)
    for (int c = 0; c < 4; ++c) _mm512_store_ps(&vf[j][16 * c], load_bf16(v[j] + 16 * c));
  for (int h = 0; h < G; ++h) {
    float* a = acc + h * kAttnHeadDim;
    __m512 a0 = _mm512_loadu_ps(a), a1 = _mm512_loadu_ps(a + 16);
    __m512 a2 = _mm512_loadu_ps(a + 32), a3 = _mm512_loadu_ps(a + 48);
    for (int j = 0; j < n; ++j) {
      const __m512 pj = _mm512_set1_ps(p[h * ldp + j]);
      a0 = _mm512_fmadd_ps(pj, _mm512_load_ps(&vf[j][0]), a0);
      a1 = _mm512_fmadd_ps(pj, _mm512_load_ps(&vf[j][16]), a1);
      a2 = _mm512_fmadd_ps(pj, _mm512_load_ps(&vf[j][32]), a2);
      a3 = _mm512_fmadd_ps(pj, _mm512_load_ps(&vf[j][48]), a3);
    }
    _mm512_storeu_ps(a, a0);
    _mm512_storeu_ps(a + 16, a1);
    _mm512_storeu_ps(a + 32, a2);
    _mm512_storeu_ps(a + 48, a3);
  }
}

}  // namespace

const SimdKernels& simd_avx512_kernels() {
  static const SimdKernels k = {"avx512", gemv_bf16, gemv_mxfp4, attn_scores, attn_accum};
  return k;
}

}  // namespace gptoss

#endif  // GPT_OSS_C_X86
