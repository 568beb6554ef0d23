// YaRN RoPE, half-split (NeoX) pairing, in place on q [T][n_q*64] and k [T][n_kv*64] (f32):
//   x[i] <- x[i]*cos - x[i+32]*sin,  x[i+32] <- x[i+32]*cos + x[i]*sin   (i < 32)
// with cos/sin rows [max_context][32] (concentration folded in) at the token's absolute position.
#include "cpu/cpu_ops.h"

namespace gptoss {

namespace {

inline void rotate_heads(float* x, int heads, const float* cs, const float* sn) {
  for (int h = 0; h < heads; ++h) {
    float* v = x + h * kHeadDim;
    for (int i = 0; i < kHeadDim / 2; ++i) {
      const float a = v[i], b = v[i + kHeadDim / 2];
      v[i] = a * cs[i] - b * sn[i];
      v[i + kHeadDim / 2] = b * cs[i] + a * sn[i];
    }
  }
}

}  // namespace

Status cpu_rope(CpuContext& c, const RopeParams& p) {
  GPTOSS_RETURN_IF_ERROR(need_f32(p.type, "rope", "type"));
  const int T = p.batch.T;
  if (T < 1 || !p.batch.tok_pos) return invalid("rope: batch needs T >= 1 and tok_pos");
  if (!p.q || !p.k || !p.cos || !p.sin) return invalid("rope: q, k, cos and sin must be set");
  if (p.n_q < 1 || p.n_kv < 1) return invalid("rope: n_q and n_kv must be >= 1");
  if (p.ldq < p.n_q * kHeadDim || p.ldk < p.n_kv * kHeadDim)
    return invalid("rope: ldq must be >= n_q*64 and ldk >= n_kv*64");
  for (int t = 0; t < T; ++t)
    if (p.batch.tok_pos[t] < 0) return invalid("rope: negative position at token " + std::to_string(t));
  float* q = static_cast<float*>(p.q);
  float* k = static_cast<float*>(p.k);
  c.pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const size_t row = size_t(p.batch.tok_pos[t]) * (kHeadDim / 2);
      rotate_heads(q + size_t(t) * p.ldq, p.n_q, p.cos + row, p.sin + row);
      rotate_heads(k + size_t(t) * p.ldk, p.n_kv, p.cos + row, p.sin + row);
    }
  }, 8);
  return Status::Ok();
}

}  // namespace gptoss
