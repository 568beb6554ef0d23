// Causal GQA attention with sinks and an optional sliding window, for every token of a step
// (prefill chunks and decode tokens of several sequences mixed), in f32 with K/V read as bf16.
//
//   q    [T][n_q*64] f32 (stride ldq), after RoPE; k, v [T][n_kv*64] f32 (stride ldkv): this step's
//   cache [slots][n_kv][len][64] bf16: K (post-RoPE) and V of positions < seq_start, at p % len
//   out  [T][n_q*64] f32 (stride ldo)
//
// Precision: every key and value is used at bf16 precision, the cache's storage type. This step's
// k/v are rounded to bf16 first (exactly what kv_append will store), so a token sees the same
// keys whether they arrive in this step or come from the cache later, and prefilling in one
// chunk or several gives the same result up to f32 summation order.
//
// Work items are (token, kv head): the G = n_q/n_kv query heads of one kv head share each K/V row
// the kernel widens. Keys are visited in blocks of 64 with an online softmax per head, started at
// m = sink so the sink's exp(sink - m) joins the denominator at the end: no value row for it.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/cpu_ops.h"

namespace gptoss {

Status cpu_attention(CpuContext& c, const AttentionParams& p) {
  GPTOSS_RETURN_IF_ERROR(need_f32(p.act_type, "attention", "act_type"));
  const BatchDesc& b = p.batch;
  const KVCacheView& cache = p.cache;
  if (!cache.k || !cache.v || cache.slots < 1 || cache.len < 1 || cache.n_kv != p.n_kv)
    return invalid("attention: cache must be set, with slots >= 1, len >= 1 and n_kv = " + std::to_string(p.n_kv));
  if (cache.type != DType::BF16) return make_error(StatusCode::Unsupported, std::string("attention: the cpu cache must be BF16, got ") + dtype_name(cache.type));
  const bf16_t* cache_k = static_cast<const bf16_t*>(cache.k);
  const bf16_t* cache_v = static_cast<const bf16_t*>(cache.v);
  GPTOSS_RETURN_IF_ERROR(check_batch(b, cache.slots, "attention"));
  if (p.n_q < 1 || p.n_kv < 1 || p.n_q % p.n_kv != 0)
    return invalid("attention: n_q must be a positive multiple of n_kv (n_q=" + std::to_string(p.n_q) +
                   ", n_kv=" + std::to_string(p.n_kv) + ")");
  if (!p.q || !p.k || !p.v || !p.out || !p.sinks) return invalid("attention: q, k, v, out and sinks must be set");
  if (p.ldq < p.n_q * kHeadDim || p.ldo < p.n_q * kHeadDim || p.ldkv < p.n_kv * kHeadDim)
    return invalid("attention: ldq and ldo must be >= n_q*64 and ldkv >= n_kv*64");
  if (p.window < 0) return invalid("attention: window must be >= 0 (0 = full causal)");
  for (int s = 0; s < b.S; ++s) {
    const int start = b.seq_start[s];
    const int lo = p.window ? std::max(0, start - p.window + 1) : 0;
    if (start - lo > cache.len)
      return invalid("attention: sequence " + std::to_string(s) + " needs cached positions [" + std::to_string(lo) +
                     ", " + std::to_string(start) + ") but the cache holds only the last " +
                     std::to_string(cache.len));
  }

  const int T = b.T, n_kv = p.n_kv, G = p.n_q / p.n_kv, row = n_kv * kHeadDim;
  bf16_t* kvb = nullptr;
  GPTOSS_RETURN_IF_ERROR(grow_scratch(c.scratch.attn_kv, size_t(2) * T * row, "attention k/v", &kvb));
  bf16_t* kb = kvb;
  bf16_t* vb = kvb + size_t(T) * row;
  const float* k = static_cast<const float*>(p.k);
  const float* v = static_cast<const float*>(p.v);
  c.pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int i = 0; i < row; ++i) {
        kb[t * row + i] = f32_to_bf16(k[size_t(t) * p.ldkv + i]);
        vb[t * row + i] = f32_to_bf16(v[size_t(t) * p.ldkv + i]);
      }
  }, 16);

  const float* q = static_cast<const float*>(p.q);
  float* out = static_cast<float*>(p.out);
  c.pool.parallel_for(int64_t(T) * n_kv, [&](int64_t i0, int64_t i1) {
    std::vector<float> sc(size_t(G) * kAttnMaxKeys), acc(size_t(G) * kHeadDim), m(G), l(G);
    const bf16_t* kp[kAttnMaxKeys];
    const bf16_t* vp[kAttnMaxKeys];
    for (int64_t i = i0; i < i1; ++i) {
      const int t = int(i / n_kv), g = int(i % n_kv);
      const int s = b.tok_seq[t], pos = b.tok_pos[t], start = b.seq_start[s], tok0 = b.seq_tok0[s];
      const size_t cache_base = (size_t(b.seq_slot[s]) * n_kv + g) * cache.len;
      const int lo = p.window ? std::max(0, pos - p.window + 1) : 0;
      const float* qg = q + size_t(t) * p.ldq + size_t(g) * G * kHeadDim;
      for (int h = 0; h < G; ++h) {
        m[h] = p.sinks[g * G + h];
        l[h] = 0.0f;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int j0 = lo; j0 <= pos; j0 += kAttnMaxKeys) {
        const int n = std::min(kAttnMaxKeys, pos + 1 - j0);
        for (int jj = 0; jj < n; ++jj) {
          const int j = j0 + jj;
          if (j < start) {
            const size_t off = (cache_base + size_t(j % cache.len)) * kHeadDim;
            kp[jj] = cache_k + off;
            vp[jj] = cache_v + off;
          } else {
            const size_t off = size_t(tok0 + j - start) * row + size_t(g) * kHeadDim;
            kp[jj] = kb + off;
            vp[jj] = vb + off;
          }
        }
        c.simd.attn_scores(qg, G, kp, n, sc.data(), kAttnMaxKeys);
        for (int h = 0; h < G; ++h) {
          float* sh = sc.data() + h * kAttnMaxKeys;
          float mb = m[h];
          for (int jj = 0; jj < n; ++jj) mb = std::max(mb, sh[jj] *= p.scale);
          if (mb > m[h]) {
            const float alpha = std::exp(m[h] - mb);
            l[h] *= alpha;
            for (int d = 0; d < kHeadDim; ++d) acc[h * kHeadDim + d] *= alpha;
            m[h] = mb;
          }
          float sum = 0.0f;
          for (int jj = 0; jj < n; ++jj) sum += (sh[jj] = std::exp(sh[jj] - mb));
          l[h] += sum;
        }
        c.simd.attn_accum(sc.data(), kAttnMaxKeys, G, vp, n, acc.data());
      }
      float* o = out + size_t(t) * p.ldo + size_t(g) * G * kHeadDim;
      for (int h = 0; h < G; ++h) {
        const float inv = 1.0f / (l[h] + std::exp(p.sinks[g * G + h] - m[h]));
        for (int d = 0; d < kHeadDim; ++d) o[h * kHeadDim + d] = acc[h * kHeadDim + d] * inv;
      }
    }
  });
  return Status::Ok();
}

}  // namespace gptoss
