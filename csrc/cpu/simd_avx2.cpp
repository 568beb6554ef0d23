// AVX2 + FMA micro-kernels (8 f32 lanes; run only when CPUID says so). See simd.h for layouts.
//  * bf16 GEMV: NR rows x NT tokens of accumulators (NR*NT <= 8 of the 16 ymm registers); the
//    K % 8 tail is added in scalar after the horizontal sum, the same way for every row.
//  * MXFP4: 8 bytes at a time are zero-extended to dwords; vpermps (index bits 2:0) looks the
//    nibble's magnitude up in an 8-entry table pre-multiplied by the block scale, and the nibble's
//    bit 3, shifted to bit 31, supplies the sign with one xor.
#if defined(GPT_OSS_C_X86)

#include <immintrin.h>

#include <cmath>
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

// ---- attention ------------------------------------------------------------------------------
// As in simd_avx512.cpp with 8 lanes: 8 dot-product vectors per head are summed horizontally by
// one hadd tree; accum keeps one head's 64 accumulators in 8 registers. Rows are prefetched
// kPrefetchBytes ahead; bf16 rows are widened into a stack block first.

// exp(x) lane-wise, within ~2 ulp of expf (Cephes expf, see simd_avx512.cpp). Without vscalefps,
// 2^n is built in the exponent field, so x is clamped to where n stays in [-126, 127] and results
// below the smallest normal (x < -87.33) are returned as 0. NaN stays NaN.
inline __m256 exp_ps(__m256 x) {
  const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33f), _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-87.33f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

// Lanes [0, n) set (all when n >= 8), for maskload/maskstore.
inline __m256i first(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Lane j of the result = the sum of the 8 lanes of v[j].
inline __m256 hsum8(const __m256* v) {
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

inline void prefetch_rows(const float* const* rows, int n) {
  for (int j = 0; j < n; ++j)
    for (int c = 0; c < kAttnHeadDim * 4; c += 64)
      _mm_prefetch(reinterpret_cast<const char*>(rows[j]) + kPrefetchBytes + c, _MM_HINT_T0);
}

void scores(const float* q, int G, const float* const* k, int n, float* s, int lds) {
  for (int h = 0; h < G; ++h) {
    const float* qh = q + h * kAttnHeadDim;
    for (int j0 = 0; j0 < n; j0 += 8) {
      __m256 d[8];
      for (int jj = 0; jj < 8; ++jj) {
        if (j0 + jj < n) {
          const float* kj = k[j0 + jj];
          __m256 a = _mm256_mul_ps(_mm256_loadu_ps(qh), _mm256_loadu_ps(kj));
          __m256 b = _mm256_mul_ps(_mm256_loadu_ps(qh + 8), _mm256_loadu_ps(kj + 8));
          for (int c = 16; c < kAttnHeadDim; c += 16) {
            a = _mm256_fmadd_ps(_mm256_loadu_ps(qh + c), _mm256_loadu_ps(kj + c), a);
            b = _mm256_fmadd_ps(_mm256_loadu_ps(qh + c + 8), _mm256_loadu_ps(kj + c + 8), b);
          }
          d[jj] = _mm256_add_ps(a, b);
        } else {
          d[jj] = _mm256_setzero_ps();
        }
      }
      _mm256_maskstore_ps(s + h * lds + j0, first(n - j0), hsum8(d));
    }
  }
}

void attn_scores_f32(const float* q, int G, const float* const* k, int n, float* s, int lds) {
  prefetch_rows(k, n);
  scores(q, G, k, n, s, lds);
}

void attn_softmax(float* s, int lds, int G, int n, float scale, float* m, float* l, float* acc) {
  const __m256 vscale = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
  for (int h = 0; h < G; ++h) {
    float* sh = s + h * lds;
    __m256 mx = _mm256_set1_ps(m[h]);
    for (int j = 0; j < n; j += 8) {
      const __m256i mk = first(n - j);
      const __m256 x = _mm256_mul_ps(_mm256_maskload_ps(sh + j, mk), vscale);
      _mm256_maskstore_ps(sh + j, mk, x);
      mx = _mm256_max_ps(mx, _mm256_blendv_ps(ninf, x, _mm256_castsi256_ps(mk)));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float mb = _mm_cvtss_f32(m4);
    if (mb > m[h]) {
      const __m256 alpha = exp_ps(_mm256_set1_ps(m[h] - mb));
      l[h] *= _mm256_cvtss_f32(alpha);
      float* a = acc + h * kAttnHeadDim;
      for (int c = 0; c < kAttnHeadDim; c += 8) _mm256_storeu_ps(a + c, _mm256_mul_ps(_mm256_loadu_ps(a + c), alpha));
      m[h] = mb;
    }
    const __m256 vm = _mm256_set1_ps(mb);
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < n; j += 8) {
      const __m256i mk = first(n - j);
      const __m256 x = _mm256_sub_ps(_mm256_maskload_ps(sh + j, mk), vm);
      const __m256 e = _mm256_and_ps(exp_ps(x), _mm256_castsi256_ps(mk));  // lanes past n add 0
      _mm256_maskstore_ps(sh + j, mk, e);
      sum = _mm256_add_ps(sum, e);
    }
    l[h] += hsum(sum);
  }
}

void accum(const float* p, int ldp, int G, const float* const* v, int n, float* acc) {
  for (int h = 0; h < G; ++h) {
    float* a = acc + h * kAttnHeadDim;
    __m256 av[8];
    for (int c = 0; c < 8; ++c) av[c] = _mm256_loadu_ps(a + 8 * c);
    for (int j = 0; j < n; ++j) {
      const __m256 pj = _mm256_set1_ps(p[h * ldp + j]);
      for (int c = 0; c < 8; ++c) av[c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v[j] + 8 * c), av[c]);
    }
    for (int c = 0; c < 8; ++c) _mm256_storeu_ps(a + 8 * c, av[c]);
  }
}

void attn_accum_f32(const float* p, int ldp, int G, const float* const* v, int n, float* acc) {
  prefetch_rows(v, n);
  accum(p, ldp, G, v, n, acc);
}

// bf16 rows (a BF16 cache): widened once into f32 rows on the stack, then the f32 kernels.
struct WidenedRows {
  alignas(32) float f[kAttnMaxKeys][kAttnHeadDim];
  const float* rows[kAttnMaxKeys];
  WidenedRows(const uint16_t* const* r, int n) {
    for (int j = 0; j < n; ++j) {
      for (int c = 0; c < 8; ++c) _mm256_store_ps(&f[j][8 * c], load_bf16(r[j] + 8 * c));
      rows[j] = f[j];
    }
  }
};

void attn_scores_bf16(const float* q, int G, const uint16_t* const* k, int n, float* s, int lds) {
  const WidenedRows w(k, n);
  scores(q, G, w.rows, n, s, lds);
}

void attn_accum_bf16(const float* p, int ldp, int G, const uint16_t* const* v, int n, float* acc) {
  const WidenedRows w(v, n);
  accum(p, ldp, G, w.rows, n, acc);
}

}  // namespace

const SimdKernels& simd_avx2_kernels() {
  static const SimdKernels k = {"avx2",           gemv_bf16,    gemv_mxfp4,     attn_scores_f32,
                                attn_scores_bf16, attn_softmax, attn_accum_f32, attn_accum_bf16};
  return k;
}

}  // namespace gptoss

#endif  // GPT_OSS_C_X86
