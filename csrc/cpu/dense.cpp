// Dense layer with bf16 weights: y[t, n] (+)= sum_k x[t, k] * w[n, k] + bias[n], f32 accumulate.
// x [T][K] f32 (stride ldx), w [N][K] bf16 row-major (the checkpoint's (out, in) rows), y [T][N] f32.
//
// Work items are (token block of 64) x (row block of 32 rows). Inside an item the SIMD kernel
// streams each weight row once per 4-token tile; the row block (32 x K x 2 bytes, 184 KB at
// K = 2880) stays in L2 across the tiles of a token block, so prefill reads the weights from
// memory about T/64 times and decode (T <= 4) exactly once. Items are claimed dynamically.
#include <algorithm>

#include "cpu/cpu_ops.h"

namespace gptoss {

namespace {
constexpr int kRowBlock = 32;
constexpr int kTokBlock = 64;
}  // namespace

Status cpu_dense(CpuContext& c, const DenseParams& p) {
  GPTOSS_RETURN_IF_ERROR(need_f32(p.x_type, "dense", "x_type"));
  GPTOSS_RETURN_IF_ERROR(need_f32(p.y_type, "dense", "y_type"));
  if (p.T < 1 || p.K < 1 || p.N < 1) return invalid("dense: T, K and N must be >= 1");
  if (!p.x || !p.w || !p.y) return invalid("dense: x, w and y must be set");
  if (p.ldx < p.K || p.ldy < p.N) return invalid("dense: ldx must be >= K and ldy >= N");
  const float* x = static_cast<const float*>(p.x);
  float* y = static_cast<float*>(p.y);
  const int64_t nrb = (p.N + kRowBlock - 1) / kRowBlock;
  const int64_t ntb = (p.T + kTokBlock - 1) / kTokBlock;
  c.pool.parallel_for(nrb * ntb, [&](int64_t i0, int64_t i1) {
    float tmp[kSimdMaxTokens * kRowBlock];
    for (int64_t i = i0; i < i1; ++i) {
      const int n0 = int(i % nrb) * kRowBlock, rows = std::min(kRowBlock, p.N - n0);
      const int tb0 = int(i / nrb) * kTokBlock, tb1 = std::min(p.T, tb0 + kTokBlock);
      for (int t0 = tb0; t0 < tb1; t0 += kSimdMaxTokens) {
        const int nt = std::min(kSimdMaxTokens, tb1 - t0);
        c.simd.gemv_bf16(p.w + size_t(n0) * p.K, size_t(p.K), rows, p.K, x + size_t(t0) * p.ldx,
                         size_t(p.ldx), nt, tmp, kRowBlock);
        for (int t = 0; t < nt; ++t) {
          float* yr = y + size_t(t0 + t) * p.ldy + n0;
          const float* a = tmp + t * kRowBlock;
          for (int r = 0; r < rows; ++r) {
            const float v = a[r] + (p.bias ? p.bias[n0 + r] : 0.0f);
            yr[r] = p.accumulate ? yr[r] + v : v;
          }
        }
      }
    }
  });
  return Status::Ok();
}

}  // namespace gptoss
