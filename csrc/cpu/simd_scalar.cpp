// Portable micro-kernels: the reference the SIMD levels are tested against, and the code path on
// CPUs (or architectures) without AVX2. Plain loops in f32; the compiler may vectorise them.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/simd.h"

namespace gptoss {

const float kFp4Value[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                             -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

const float* e8m0_scale_table() {
  struct Table {
    float v[256];
    Table() {
      for (int s = 0; s < 256; ++s) {
        // Normal exponents are the byte itself; s = 0 is 2^-127, a subnormal (mantissa MSB).
        uint32_t u = s == 0 ? 0x00400000u : (uint32_t(s) << 23);
        std::memcpy(&v[s], &u, 4);
      }
    }
  };
  static const Table table;
  return table.v;
}

void mxfp4_permute(const float* x, int K, float* xp) {
  for (int b = 0; b < K; b += 32) {
    for (int j = 0; j < 16; ++j) {
      xp[b + j] = x[b + 2 * j];
      xp[b + 16 + j] = x[b + 2 * j + 1];
    }
  }
}

namespace {

inline float bf16f(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void gemv_bf16(const uint16_t* w, size_t ldw, int R, int K, const float* x, size_t ldx, int T,
               float* out, size_t ldo) {
  for (int r = 0; r < R; ++r) {
    const uint16_t* wr = w + size_t(r) * ldw;
    for (int t = 0; t < T; ++t) {
      const float* xt = x + size_t(t) * ldx;
      float acc = 0.0f;
      for (int k = 0; k < K; ++k) acc += bf16f(wr[k]) * xt[k];
      out[size_t(t) * ldo + r] = acc;
    }
  }
}

void gemv_mxfp4(const uint8_t* blocks, const uint8_t* scales, int R, int nb, const float* xp,
                size_t ldx, int T, float* out, size_t ldo) {
  const float* e8m0 = e8m0_scale_table();
  for (int r = 0; r < R; ++r) {
    const uint8_t* br = blocks + size_t(r) * nb * 16;
    const uint8_t* sr = scales + size_t(r) * nb;
    for (int t = 0; t < T; ++t) {
      const float* xt = xp + size_t(t) * ldx;
      float acc = 0.0f;
      for (int b = 0; b < nb; ++b) {
        const float scale = e8m0[sr[b]];
        const float* xe = xt + b * 32;
        float blk = 0.0f;
        for (int j = 0; j < 16; ++j) {
          const uint8_t byte = br[b * 16 + j];
          blk += kFp4Value[byte & 15] * xe[j] + kFp4Value[byte >> 4] * xe[16 + j];
        }
        acc += blk * scale;
      }
      out[size_t(t) * ldo + r] = acc;
    }
  }
}

inline float f32(float x) { return x; }
inline float f32(uint16_t b) { return bf16f(b); }

template <class KV>
void attn_scores(const float* q, int G, const KV* const* k, int n, float* s, int lds) {
  for (int h = 0; h < G; ++h) {
    for (int j = 0; j < n; ++j) {
      float acc = 0.0f;
      for (int d = 0; d < kAttnHeadDim; ++d) acc += q[h * kAttnHeadDim + d] * f32(k[j][d]);
      s[h * lds + j] = acc;
    }
  }
}

void attn_softmax(float* s, int lds, int G, int n, float scale, float* m, float* l, float* acc) {
  for (int h = 0; h < G; ++h) {
    float* sh = s + h * lds;
    float mb = m[h];
    for (int j = 0; j < n; ++j) mb = std::max(mb, sh[j] *= scale);
    if (mb > m[h]) {
      const float alpha = std::exp(m[h] - mb);
      l[h] *= alpha;
      for (int d = 0; d < kAttnHeadDim; ++d) acc[h * kAttnHeadDim + d] *= alpha;
      m[h] = mb;
    }
    float sum = 0.0f;
    for (int j = 0; j < n; ++j) sum += (sh[j] = std::exp(sh[j] - mb));
    l[h] += sum;
  }
}

template <class KV>
void attn_accum(const float* p, int ldp, int G, const KV* const* v, int n, float* acc) {
  for (int h = 0; h < G; ++h) {
    float* a = acc + h * kAttnHeadDim;
    for (int j = 0; j < n; ++j) {
      const float pj = p[h * ldp + j];
      for (int d = 0; d < kAttnHeadDim; ++d) a[d] += pj * f32(v[j][d]);
    }
  }
}

}  // namespace

const SimdKernels& simd_scalar_kernels() {
  static const SimdKernels k = {"scalar",           gemv_bf16,          gemv_mxfp4,
                                attn_scores<float>, attn_scores<uint16_t>, attn_softmax,
                                attn_accum<float>,  attn_accum<uint16_t>};
  return k;
}

}  // namespace gptoss
