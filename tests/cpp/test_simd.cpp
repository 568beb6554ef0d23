// Every SIMD level this CPU supports against the scalar kernels on random data, at sizes that hit
// full tiles, partial row tiles, 1..4 tokens and K tails. Tolerance: 1e-5 of sum |a_i * b_i| (f32
// sums in different orders; the attention softmax: 1e-5 of each value). Also checks the property
// simd.h promises: an output is bitwise the same whatever the number of rows, tokens, keys or heads
// in the call.
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "backend.h"
#include "check.h"
#include "common.h"
#include "cpu/simd.h"

using namespace gptoss;

namespace {

std::mt19937 gen(3);

float randn() {
  static std::normal_distribution<float> n(0.0f, 1.0f);
  return n(gen);
}

std::vector<uint16_t> rand_bf16(size_t n, float scale) {
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = f32_to_bf16(randn() * scale);
  return v;
}

std::vector<float> rand_f32(size_t n) {
  std::vector<float> v(n);
  for (auto& x : v) x = randn();
  return v;
}

void close(float got, float want, double mag, const char* what, const char* level, int a, int b) {
  CHECK(std::fabs(double(got) - double(want)) <= 1e-5 * mag + 1e-30, "%s %s [%d, %d]: %.9g vs scalar %.9g (mag %g)",
        level, what, a, b, double(got), double(want), mag);
}

void test_gemv_bf16(const SimdKernels& k, const SimdKernels& s) {
  for (int R : {1, 3, 4, 5, 33})
    for (int K : {1, 7, 16, 100, 2880})
      for (int T = 1; T <= kSimdMaxTokens; ++T) {
        const size_t ldw = size_t(K) + 3, ldx = size_t(K) + 5, ldo = size_t(R) + 2;  // strides != sizes
        auto w = rand_bf16(R * ldw, 0.1f);
        auto x = rand_f32(T * ldx);
        std::vector<float> a(T * ldo), b(T * ldo);
        k.gemv_bf16(w.data(), ldw, R, K, x.data(), ldx, T, a.data(), ldo);
        s.gemv_bf16(w.data(), ldw, R, K, x.data(), ldx, T, b.data(), ldo);
        for (int t = 0; t < T; ++t)
          for (int r = 0; r < R; ++r) {
            double mag = 0;
            for (int i = 0; i < K; ++i) mag += std::fabs(double(bf16_to_f32(w[r * ldw + i])) * x[t * ldx + i]);
            close(a[t * ldo + r], b[t * ldo + r], mag, "gemv_bf16", k.name, r, t);
            float one;  // the same row and token alone: bitwise equal
            k.gemv_bf16(w.data() + r * ldw, ldw, 1, K, x.data() + t * ldx, ldx, 1, &one, 1);
            CHECK(std::memcmp(&one, &a[t * ldo + r], 4) == 0, "%s gemv_bf16 depends on tiling (R=%d K=%d T=%d)",
                  k.name, R, K, T);
          }
      }
}

void test_gemv_mxfp4(const SimdKernels& k, const SimdKernels& s) {
  const float* e8m0 = e8m0_scale_table();
  for (int R : {1, 2, 3, 33})
    for (int nb : {1, 3, 90})
      for (int T = 1; T <= kSimdMaxTokens; ++T) {
        const int K = nb * 32;
        const size_t ldx = size_t(K) + 32, ldo = size_t(R) + 1;
        std::vector<uint8_t> blocks(size_t(R) * nb * 16), scales(size_t(R) * nb);
        for (auto& b : blocks) b = uint8_t(gen());
        for (auto& sc : scales) sc = uint8_t(120 + gen() % 8);
        auto xp = rand_f32(T * ldx);
        std::vector<float> a(T * ldo), b(T * ldo);
        k.gemv_mxfp4(blocks.data(), scales.data(), R, nb, xp.data(), ldx, T, a.data(), ldo);
        s.gemv_mxfp4(blocks.data(), scales.data(), R, nb, xp.data(), ldx, T, b.data(), ldo);
        for (int t = 0; t < T; ++t)
          for (int r = 0; r < R; ++r) {
            double mag = 0;
            for (int g = 0; g < nb; ++g)
              for (int j = 0; j < 16; ++j) {
                const uint8_t byte = blocks[(size_t(r) * nb + g) * 16 + j];
                const double sc = e8m0[scales[size_t(r) * nb + g]];
                mag += sc * (std::fabs(kFp4Value[byte & 15] * xp[t * ldx + g * 32 + j]) +
                             std::fabs(kFp4Value[byte >> 4] * xp[t * ldx + g * 32 + 16 + j]));
              }
            close(a[t * ldo + r], b[t * ldo + r], mag, "gemv_mxfp4", k.name, r, t);
            float one;
            k.gemv_mxfp4(blocks.data() + size_t(r) * nb * 16, scales.data() + size_t(r) * nb, 1, nb,
                         xp.data() + t * ldx, ldx, 1, &one, 1);
            CHECK(std::memcmp(&one, &a[t * ldo + r], 4) == 0, "%s gemv_mxfp4 depends on tiling (R=%d nb=%d T=%d)",
                  k.name, R, nb, T);
          }
      }
}

// K/V rows of either element type, and the kernels that read them.
struct F32Rows {
  using T = float;
  static float make(float x) { return x; }
  static float value(float x) { return x; }
  static constexpr auto scores = &SimdKernels::attn_scores_f32;
  static constexpr auto accum = &SimdKernels::attn_accum_f32;
  static constexpr const char* name = "f32";
};
struct Bf16Rows {
  using T = uint16_t;
  static uint16_t make(float x) { return f32_to_bf16(x); }
  static float value(uint16_t x) { return bf16_to_f32(x); }
  static constexpr auto scores = &SimdKernels::attn_scores_bf16;
  static constexpr auto accum = &SimdKernels::attn_accum_bf16;
  static constexpr const char* name = "bf16";
};

// scores and accum against scalar, for G (1, 4 and 8 are full groups of 4 heads; 3 and 5 are not)
// and n (1, one tail, exactly 16, 16 + tail, the maximum). Each row is its own allocation, as the
// kernels take row pointers. A key's score and a head's accumulator must also be bitwise the same
// when computed alone (n = 1 or G = 1): the layout of a call never changes a result.
template <class R>
void test_attention_rows(const SimdKernels& k, const SimdKernels& s) {
  char what[64];
  for (int G : {1, 3, 4, 5, 8})
    for (int n : {1, 7, 16, 17, 33, kAttnMaxKeys}) {
      auto q = rand_f32(size_t(G) * kAttnHeadDim);
      std::vector<std::vector<typename R::T>> keys(n), vals(n);
      std::vector<const typename R::T*> kp, vp;
      for (int j = 0; j < n; ++j) {
        for (int d = 0; d < kAttnHeadDim; ++d) {
          keys[j].push_back(R::make(randn()));
          vals[j].push_back(R::make(randn()));
        }
        kp.push_back(keys[j].data());
        vp.push_back(vals[j].data());
      }
      const int lds = kAttnMaxKeys + 3;
      std::vector<float> sa(size_t(G) * lds), sb(size_t(G) * lds);
      (k.*R::scores)(q.data(), G, kp.data(), n, sa.data(), lds);
      (s.*R::scores)(q.data(), G, kp.data(), n, sb.data(), lds);
      std::snprintf(what, sizeof what, "attn_scores_%s G=%d n=%d", R::name, G, n);
      for (int h = 0; h < G; ++h)
        for (int j = 0; j < n; ++j) {
          double mag = 0;
          for (int d = 0; d < kAttnHeadDim; ++d) mag += std::fabs(q[h * kAttnHeadDim + d] * R::value(keys[j][d]));
          close(sa[h * lds + j], sb[h * lds + j], mag, what, k.name, h, j);
          float one;
          (k.*R::scores)(q.data() + h * kAttnHeadDim, 1, kp.data() + j, 1, &one, 1);
          CHECK(std::memcmp(&one, &sa[h * lds + j], 4) == 0, "%s %s depends on the call layout", k.name, what);
        }
      auto p = rand_f32(size_t(G) * lds);
      auto acc0 = rand_f32(size_t(G) * kAttnHeadDim);
      std::vector<float> aa = acc0, ab = acc0;
      (k.*R::accum)(p.data(), lds, G, vp.data(), n, aa.data());
      (s.*R::accum)(p.data(), lds, G, vp.data(), n, ab.data());
      std::snprintf(what, sizeof what, "attn_accum_%s G=%d n=%d", R::name, G, n);
      for (int h = 0; h < G; ++h) {
        std::vector<float> one(acc0.begin() + h * kAttnHeadDim, acc0.begin() + (h + 1) * kAttnHeadDim);
        (k.*R::accum)(p.data() + h * lds, lds, 1, vp.data(), n, one.data());
        CHECK(std::memcmp(one.data(), &aa[h * kAttnHeadDim], sizeof(float) * kAttnHeadDim) == 0,
              "%s %s depends on the number of heads in the call", k.name, what);
        for (int d = 0; d < kAttnHeadDim; ++d) {
          double mag = std::fabs(acc0[h * kAttnHeadDim + d]);
          for (int j = 0; j < n; ++j) mag += std::fabs(p[h * lds + j] * R::value(vals[j][d]));
          close(aa[h * kAttnHeadDim + d], ab[h * kAttnHeadDim + d], mag, what, k.name, h, d);
        }
      }
    }
}

// The online-softmax step against scalar (std::exp): tails, a new maximum (acc and l rescaled),
// an old maximum that stays (no rescale), and scores far below the maximum, where exp underflows
// to subnormals and 0 (an absolute 1e-30 covers a level that returns 0 for subnormal results).
// Tolerance: the SIMD exp is within a few ulp of expf, so 1e-5 relative to each value.
void test_attention_softmax(const SimdKernels& k, const SimdKernels& s) {
  char what[80];
  for (int G : {1, 3, 8})
    for (int n : {1, 7, 16, 17, kAttnMaxKeys})
      for (float m_old : {-1e30f, 0.5f, 40.0f}) {
        const int lds = kAttnMaxKeys + 1;
        std::vector<float> sc(size_t(G) * lds);
        for (size_t i = 0; i < sc.size(); ++i) sc[i] = randn() * (i % 5 == 0 ? 300.0f : 8.0f);
        std::vector<float> m(G, m_old), l(G), acc = rand_f32(size_t(G) * kAttnHeadDim);
        for (auto& x : l) x = std::fabs(randn());
        std::vector<float> sa = sc, ma = m, la = l, aa = acc, sb = sc, mb = m, lb = l, ab = acc;
        k.attn_softmax(sa.data(), lds, G, n, 0.125f, ma.data(), la.data(), aa.data());
        s.attn_softmax(sb.data(), lds, G, n, 0.125f, mb.data(), lb.data(), ab.data());
        std::snprintf(what, sizeof what, "attn_softmax G=%d n=%d m_old=%g", G, n, double(m_old));
        for (int h = 0; h < G; ++h) {
          CHECK(ma[h] == mb[h], "%s %s: m %.9g vs scalar %.9g", k.name, what, double(ma[h]), double(mb[h]));
          close(la[h], lb[h], std::fabs(lb[h]), what, k.name, h, -1);
          for (int j = 0; j < lds; ++j) {
            if (j < n) close(sa[h * lds + j], sb[h * lds + j], std::fabs(sb[h * lds + j]), what, k.name, h, j);
            else CHECK(sa[h * lds + j] == sc[h * lds + j], "%s %s wrote past n", k.name, what);
          }
          for (int d = 0; d < kAttnHeadDim; ++d)
            close(aa[h * kAttnHeadDim + d], ab[h * kAttnHeadDim + d], std::fabs(ab[h * kAttnHeadDim + d]), what, k.name,
                  h, d);
        }
      }
}

}  // namespace

int main() {
  const SimdKernels& scalar = simd_scalar_kernels();
  CHECK(simd_kernels_for("scalar") == &scalar, "scalar level must always exist");
  CHECK(simd_kernels_for("sse9") == nullptr, "unknown level");
  CHECK(std::strcmp(cpu_simd_level(), simd_kernels().name) == 0, "cpu_simd_level");
  std::printf("picked level: %s\n", cpu_simd_level());
  int tested = 0;
  for (const char* level : {"scalar", "avx2", "avx512"}) {
    const SimdKernels* k = simd_kernels_for(level);
    if (!k) {
      std::printf("%s: not available on this CPU, skipped\n", level);
      continue;
    }
    CHECK(std::strcmp(k->name, level) == 0, "level name %s", k->name);
    test_gemv_bf16(*k, scalar);
    test_gemv_mxfp4(*k, scalar);
    test_attention_rows<F32Rows>(*k, scalar);
    test_attention_rows<Bf16Rows>(*k, scalar);
    test_attention_softmax(*k, scalar);
    std::printf("%s: matches scalar\n", level);
    ++tested;
  }
  CHECK(tested >= 1, "no level tested");
  std::printf("simd ok\n");
  return 0;
}
