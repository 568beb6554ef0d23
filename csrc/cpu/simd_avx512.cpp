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

// ---- attention ------------------------------------------------------------------------------
// Scores: per head, 16 keys at a time: 16 dot-product vectors (q . k_j lane-wise, 4 FMAs each)
// are summed horizontally together by one transpose-and-add tree (hsum16) instead of 16 separate
// reductions. K rows are read from L1 after the first head (64 rows of f32 are 16 KiB).
// Accum: heads in groups of 4 (16 accumulator registers), so each V row is loaded once per group.
// K/V rows stream from memory at long context; each row stream is prefetched kPrefetchBytes ahead
// (rows of a cache slot and kv head are contiguous). bf16 rows (a BF16 cache, for parity tests)
// are first widened into a stack block, then take the f32 path.

// exp(x) lane-wise, within ~2 ulp of expf (Cephes expf): x = n ln2 + r with |r| <= ln2/2 (ln2 in
// two parts), exp(r) by a degree-6 polynomial, times 2^n by vscalefps, which also produces the
// subnormal results and 0 below them. The clamp keeps r small for huge |x|; NaN stays NaN (vmaxps
// and vminps return their second operand when either is NaN).
inline __m512 exp_ps(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(88.7f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

inline __mmask16 first(int n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }

// Lane j of the result = the sum of the 16 lanes of v[j].
inline __m512 hsum16(const __m512* v) {
  __m512 a[8], b[4];
  for (int i = 0; i < 8; ++i)
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // b[i], 128-bit block L: lane L's partial sums of keys 4i..4i+3
    const __m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);
    b[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(b[0], b[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(b[2], b[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(3, 1, 3, 1)));
}

// One prefetch per cache line of each row, kPrefetchBytes ahead in its stream.
inline void prefetch_rows(const float* const* rows, int n) {
  for (int j = 0; j < n; ++j)
    for (int c = 0; c < kAttnHeadDim * 4; c += 64)
      _mm_prefetch(reinterpret_cast<const char*>(rows[j]) + kPrefetchBytes + c, _MM_HINT_T0);
}

void scores(const float* q, int G, const float* const* k, int n, float* s, int lds) {
  for (int h = 0; h < G; ++h) {
    const float* qh = q + h * kAttnHeadDim;
    const __m512 q0 = _mm512_loadu_ps(qh), q1 = _mm512_loadu_ps(qh + 16);
    const __m512 q2 = _mm512_loadu_ps(qh + 32), q3 = _mm512_loadu_ps(qh + 48);
    for (int j0 = 0; j0 < n; j0 += 16) {
      __m512 d[16];
      for (int jj = 0; jj < 16; ++jj) {
        if (j0 + jj < n) {
          const float* kj = k[j0 + jj];
          __m512 a = _mm512_mul_ps(q0, _mm512_loadu_ps(kj));
          __m512 b = _mm512_mul_ps(q1, _mm512_loadu_ps(kj + 16));
          a = _mm512_fmadd_ps(q2, _mm512_loadu_ps(kj + 32), a);
          b = _mm512_fmadd_ps(q3, _mm512_loadu_ps(kj + 48), b);
          d[jj] = _mm512_add_ps(a, b);
        } else {
          d[jj] = _mm512_setzero_ps();
        }
      }
      _mm512_mask_storeu_ps(s + h * lds + j0, first(n - j0), hsum16(d));
    }
  }
}

void attn_scores_f32(const float* q, int G, const float* const* k, int n, float* s, int lds) {
  prefetch_rows(k, n);
  scores(q, G, k, n, s, lds);
}

void attn_softmax(float* s, int lds, int G, int n, float scale, float* m, float* l, float* acc) {
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int h = 0; h < G; ++h) {
    float* sh = s + h * lds;
    __m512 mx = _mm512_set1_ps(m[h]);
    for (int j = 0; j < n; j += 16) {
      const __mmask16 mk = first(n - j);
      const __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, sh + j), vscale);
      _mm512_mask_storeu_ps(sh + j, mk, x);
      mx = _mm512_mask_max_ps(mx, mk, mx, x);
    }
    const float mb = _mm512_reduce_max_ps(mx);
    if (mb > m[h]) {
      const float alpha = _mm512_cvtss_f32(exp_ps(_mm512_set1_ps(m[h] - mb)));
      l[h] *= alpha;
      float* a = acc + h * kAttnHeadDim;
      for (int c = 0; c < kAttnHeadDim; c += 16)
        _mm512_storeu_ps(a + c, _mm512_mul_ps(_mm512_loadu_ps(a + c), _mm512_set1_ps(alpha)));
      m[h] = mb;
    }
    const __m512 vm = _mm512_set1_ps(mb);
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < n; j += 16) {
      const __mmask16 mk = first(n - j);
      const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, sh + j), vm));
      _mm512_mask_storeu_ps(sh + j, mk, e);
      sum = _mm512_mask_add_ps(sum, mk, sum, e);
    }
    l[h] += _mm512_reduce_add_ps(sum);
  }
}

template <int NH>
void accum_heads(const float* p, int ldp, const float* const* v, int n, float* acc) {
  __m512 a[NH][4];
  for (int h = 0; h < NH; ++h)
    for (int c = 0; c < 4; ++c) a[h][c] = _mm512_loadu_ps(acc + h * kAttnHeadDim + 16 * c);
  for (int j = 0; j < n; ++j) {
    __m512 vj[4];
    for (int c = 0; c < 4; ++c) vj[c] = _mm512_loadu_ps(v[j] + 16 * c);
    for (int h = 0; h < NH; ++h) {
      const __m512 pj = _mm512_set1_ps(p[h * ldp + j]);
      for (int c = 0; c < 4; ++c) a[h][c] = _mm512_fmadd_ps(pj, vj[c], a[h][c]);
    }
  }
  for (int h = 0; h < NH; ++h)
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(acc + h * kAttnHeadDim + 16 * c, a[h][c]);
}

void accum(const float* p, int ldp, int G, const float* const* v, int n, float* acc) {
  int h = 0;
  for (; h + 4 <= G; h += 4) accum_heads<4>(p + h * ldp, ldp, v, n, acc + h * kAttnHeadDim);
  for (; h < G; ++h) accum_heads<1>(p + h * ldp, ldp, v, n, acc + h * kAttnHeadDim);
}

void attn_accum_f32(const float* p, int ldp, int G, const float* const* v, int n, float* acc) {
  prefetch_rows(v, n);
  accum(p, ldp, G, v, n, acc);
}

// bf16 rows: widened once into f32 rows on the stack, then the f32 kernels.
struct WidenedRows {
  alignas(64) float f[kAttnMaxKeys][kAttnHeadDim];
  const float* rows[kAttnMaxKeys];
  WidenedRows(const uint16_t* const* r, int n) {
    for (int j = 0; j < n; ++j) {
      for (int c = 0; c < 4; ++c) _mm512_store_ps(&f[j][16 * c], load_bf16(r[j] + 16 * c));
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

const SimdKernels& simd_avx512_kernels() {
  static const SimdKernels k = {"avx512",        gemv_bf16,      gemv_mxfp4,     attn_scores_f32,
                                attn_scores_bf16, attn_softmax, attn_accum_f32, attn_accum_bf16};
  return k;
}

}  // namespace gptoss

#endif  // GPT_OSS_C_X86
