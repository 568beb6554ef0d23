// AVX2 + FMA micro-kernels (8 f32 lanes; run only when CPUID says so). See simd.h for layouts.
//  * bf16 GEMV: NR rows x NT tokens of accumulators (NR*NT <= 8 of the 16 ymm registers); the
//    K % 8 tail is added in scalar after the horizontal sum, the same way for every row.
//  * MXFP4: 8 bytes at a time are zero-extended to dwords; vpermps (index bits 2:0) looks the
//    nibble's magnitude up in an 8-entry table pre-multiplied by the block scale, and the nibble's
//    bit 3, shifted to bit 31, supplies the sign with one xor.
#if defined(GPT_OSS_C_X86)

#include <immintrin.h>

#include <cstring>

#include "cpu/simd.h"

namespace gptoss {
namespace {

// Weight row streams are prefetched this far ahead, one prefetch per cache line (see simd_avx512.cpp).
constexpr int kPrefetchBytes = 2048;

inline __m256 load_bf16(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float bf16f(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <int NR, int NT>
void gemv_bf16_tile(const uint16_t* w, size_t ldw, int K, const float* x, size_t ldx, float* out,
                    size_t ldo) {
  __m256 acc[NR][NT];
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm256_setzero_ps();
  int k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 xv[NT];
    for (int t = 0; t < NT; ++t) xv[t] = _mm256_loadu_ps(x + size_t(t) * ldx + k);
    for (int r = 0; r < NR; ++r) {
      if ((k & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(w + size_t(r) * ldw + k) + kPrefetchBytes, _MM_HINT_T0);
      const __m256 wv = load_bf16(w + size_t(r) * ldw + k);
      for (int t = 0; t < NT; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < NR; ++r) {
    for (int t = 0; t < NT; ++t) {
      float s = hsum(acc[r][t]);
      for (int kk = k; kk < K; ++kk) s += bf16f(w[size_t(r) * ldw + kk]) * x[size_t(t) * ldx + kk];
      out[size_t(t) * ldo + r] = s;
    }
  }
}

template <int NR, int NT>
void gemv_bf16_nt(const uint16_t* w, size_t ldw, int R, int K, const float* x, size_t ldx,
                  float* out, size_t ldo) {
  int r = 0;
  for (; r + NR <= R; r += NR) gemv_bf16_tile<NR, NT>(w + size_t(r) * ldw, ldw, K, x, ldx, out + r, ldo);
  for (; r < R; ++r) gemv_bf16_tile<1, NT>(w + size_t(r) * ldw, ldw, K, x, ldx, out + r, ldo);
}

void gemv_bf16(const uint16_t* w, size_t ldw, int R, int K, const float* x, size_t ldx, int T,
               float* out, size_t ldo) {
  switch (T) {
    case 1: gemv_bf16_nt<4, 1>(w, ldw, R, K, x, ldx, out, ldo); break;
    case 2: gemv_bf16_nt<4, 2>(w, ldw, R, K, x, ldx, out, ldo); break;
    case 3: gemv_bf16_nt<2, 3>(w, ldw, R, K, x, ldx, out, ldo); break;
    default: gemv_bf16_nt<2, 4>(w, ldw, R, K, x, ldx, out, ldo); break;
  }
}

template <int NR, int NT>
void gemv_mxfp4_tile(const uint8_t* blocks, const uint8_t* scales, int nb, const float* xp,
                     size_t ldx, float* out, size_t ldo) {
  const float* e8m0 = e8m0_scale_table();
  const __m256 mag = _mm256_loadu_ps(kFp4Value);  // the 8 non-negative values
  const __m256i sign = _mm256_set1_epi32(int(0x80000000u));
  const size_t ldb = size_t(nb) * 16;
  __m256 acc[NR][NT];
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm256_setzero_ps();
  for (int b = 0; b < nb; ++b) {
    for (int r = 0; r < NR; ++r) {
      if ((b & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(blocks + r * ldb + b * 16) + kPrefetchBytes, _MM_HINT_T0);
      const __m256 tab = _mm256_mul_ps(mag, _mm256_set1_ps(e8m0[scales[size_t(r) * nb + b]]));
      for (int half = 0; half < 2; ++half) {
        const __m256i q = _mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blocks + r * ldb + b * 16 + half * 8)));
        const __m256i qh = _mm256_srli_epi32(q, 4);
        const __m256 lo = _mm256_xor_ps(_mm256_permutevar8x32_ps(tab, q),
                                        _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(q, 28), sign)));
        const __m256 hi = _mm256_xor_ps(_mm256_permutevar8x32_ps(tab, qh),
                                        _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(qh, 28), sign)));
        for (int t = 0; t < NT; ++t) {
          const float* xb = xp + size_t(t) * ldx + b * 32 + half * 8;
          acc[r][t] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xb), acc[r][t]);
          acc[r][t] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xb + 16), acc[r][t]);
        }
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) out[size_t(t) * ldo + r] = hsum(acc[r][t]);
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

void attn_scores(const float* q, int G, const uint16_t* const* k, int n, float* s, int lds) {
  alignas(32) float kf[kAttnMaxKeys][kAttnHeadDim];
  for (int j = 0; j < n; ++j)
    for (int c = 0; c < 8; ++c) _mm256_store_ps(&kf[j][8 * c], load_bf16(k[j] + 8 * c));
  for (int h = 0; h < G; ++h) {
    const float* qh = q + h * kAttnHeadDim;
    for (int j = 0; j < n; ++j) {
      __m256 a = _mm256_mul_ps(_mm256_loadu_ps(qh), _mm256_load_ps(&kf[j][0]));
      __m256 b = _mm256_mul_ps(_mm256_loadu_ps(qh + 8), _mm256_load_ps(&kf[j][8]));
      for (int c = 2; c < 8; c += 2) {
        a = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 8 * c), _mm256_load_ps(&kf[j][8 * c]), a);
        b = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 8 * c + 8), _mm256_load_ps(&kf[j][8 * c + 8]), b);
      }
      s[h * lds + j] = hsum(_mm256_add_ps(a, b));
    }
  }
}

void attn_accum(const float* p, int ldp, int G, const uint16_t* const* v, int n, float* acc) {
  alignas(32) float vf[kAttnMaxKeys][kAttnHeadDim];
  for (int j = 0; j < n; ++j)
    for (int c = 0; c < 8; ++c) _mm256_store_ps(&vf[j][8 * c], load_bf16(v[j] + 8 * c));
  for (int h = 0; h < G; ++h) {
    float* a = acc + h * kAttnHeadDim;
    __m256 av[8];
    for (int c = 0; c < 8; ++c) av[c] = _mm256_loadu_ps(a + 8 * c);
    for (int j = 0; j < n; ++j) {
      const __m256 pj = _mm256_set1_ps(p[h * ldp + j]);
      for (int c = 0; c < 8; ++c) av[c] = _mm256_fmadd_ps(pj, _mm256_load_ps(&vf[j][8 * c]), av[c]);
    }
    for (int c = 0; c < 8; ++c) _mm256_storeu_ps(a + 8 * c, av[c]);
  }
}

}  // namespace

const SimdKernels& simd_avx2_kernels() {
  static const SimdKernels k = {"avx2", gemv_bf16, gemv_mxfp4, attn_scores, attn_accum};
  return k;
}

}  // namespace gptoss

#endif  // GPT_OSS_C_X86
