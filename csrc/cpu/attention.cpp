// Causal GQA attention with sinks and an optional sliding window, for every token of a step
// (prefill chunks and decode tokens of several sequences mixed), in f32.
//
//   q     [T][n_q*64] f32 (stride ldq), after RoPE; k, v [T][n_kv*64] f32 (stride ldkv): this step's
//   cache [slots][n_kv][len][64] of cache.type: K (post-RoPE) and V of positions < seq_start, at p % len
//   out   [T][n_q*64] f32 (stride ldo)
//
// Precision: keys and values are used at the cache's precision. The CPU's cache is F32
// (kv_type()), so the whole path is f32 and this step's k/v are read in place. A BF16 cache (CUDA's
// type, accepted here for parity tests) makes this step's k/v round to bf16 first, exactly as
// kv_append will store them. Either way a token sees the same keys whether they arrive in this step
// or come from the cache later.
//
// Math: the keys [lo, pos] of a query are cut into chunks of kChunkKeys keys starting at lo. Each
// chunk gets its own online-softmax state per query head (m, l, acc[64]), started at m = sink, l = 0,
// and run over blocks of kAttnMaxKeys keys (simd.h: scores, softmax, accum). The chunk states are
// merged left to right and out = acc / (l + exp(sink - m)): the sink joins the denominator only.
// These operations depend on (lo, pos) alone, so a row's result is bitwise the same whatever the
// thread count, the other tokens of the step, and whether its chunks ran on one thread or several.
//
// Work: items are (token, kv head), so the G = n_q/n_kv query heads of a kv head share each K/V row
// read. When a step has too few items to occupy the pool (T*n_kv < 4*threads: decode of a few
// sequences) and some query has more than one chunk, items become (token, chunk, kv head): each
// writes its partial state to scratch, and a second pass merges every row's chunks in order.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/cpu_ops.h"

namespace gptoss {

namespace {

constexpr int kChunkKeys = 16 * kAttnMaxKeys;

// One chunk's softmax state for the G query heads of a kv head, in G * (64 + 2) floats:
// acc [G][64], then m [G], then l [G].
struct State {
  float* acc;
  float* m;
  float* l;
  State(float* p, int G) : acc(p), m(p + G * kHeadDim), l(p + G * kHeadDim + G) {}
};
inline size_t state_floats(int G) { return size_t(G) * (kHeadDim + 2); }

// Where the K/V rows of the step come from, and the kernels for their element type.
template <class KV>
struct Rows {
  const KV* cache_k;
  const KV* cache_v;
  const KV* step_k;  // [T][ld_step]: this step's keys, kv head g at + g*64
  const KV* step_v;
  size_t ld_step;
  void (*scores)(const float* q, int G, const KV* const* k, int n, float* s, int lds);
  void (*accum)(const float* p, int ldp, int G, const KV* const* v, int n, float* acc);
};

// The query range of token t: keys [lo, pos].
inline int first_key(const AttentionParams& p, int t) {
  return p.window ? std::max(0, p.batch.tok_pos[t] - p.window + 1) : 0;
}
inline int chunk_count(const AttentionParams& p, int t) {
  return (p.batch.tok_pos[t] - first_key(p, t)) / kChunkKeys + 1;
}

// Per-thread buffers for run_chunk.
template <class KV>
struct Workspace {
  std::vector<float> scores;
  const KV* k[kAttnMaxKeys];
  const KV* v[kAttnMaxKeys];
  explicit Workspace(int G) : scores(size_t(G) * kAttnMaxKeys) {}
};

// The state of token t, kv head g over keys [j_begin, j_end).
template <class KV>
void run_chunk(const AttentionParams& p, const Rows<KV>& r, const SimdKernels& simd, int G, int t, int g,
               int j_begin, int j_end, State st, Workspace<KV>& ws) {
  const BatchDesc& b = p.batch;
  const int s = b.tok_seq[t], start = b.seq_start[s], tok0 = b.seq_tok0[s];
  const size_t cache_base = (size_t(b.seq_slot[s]) * p.n_kv + g) * p.cache.len;
  for (int h = 0; h < G; ++h) {
    st.m[h] = p.sinks[g * G + h];
    st.l[h] = 0.0f;
  }
  std::fill(st.acc, st.acc + size_t(G) * kHeadDim, 0.0f);
  const float* qg = static_cast<const float*>(p.q) + size_t(t) * p.ldq + size_t(g) * G * kHeadDim;
  for (int j0 = j_begin; j0 < j_end; j0 += kAttnMaxKeys) {
    const int n = std::min(kAttnMaxKeys, j_end - j0);
    for (int jj = 0; jj < n; ++jj) {
      const int j = j0 + jj;
      if (j < start) {
        const size_t off = (cache_base + size_t(j % p.cache.len)) * kHeadDim;
        ws.k[jj] = r.cache_k + off;
        ws.v[jj] = r.cache_v + off;
      } else {
        const size_t off = size_t(tok0 + j - start) * r.ld_step + size_t(g) * kHeadDim;
        ws.k[jj] = r.step_k + off;
        ws.v[jj] = r.step_v + off;
      }
    }
    r.scores(qg, G, ws.k, n, ws.scores.data(), kAttnMaxKeys);
    simd.attn_softmax(ws.scores.data(), kAttnMaxKeys, G, n, p.scale, st.m, st.l, st.acc);
    r.accum(ws.scores.data(), kAttnMaxKeys, G, ws.v, n, st.acc);
  }
}

// a <- a merged with b, whose keys follow a's.
void merge(State a, State b, int G) {
  for (int h = 0; h < G; ++h) {
    const float m = std::max(a.m[h], b.m[h]);
    const float ea = std::exp(a.m[h] - m), eb = std::exp(b.m[h] - m);
    a.l[h] = a.l[h] * ea + b.l[h] * eb;
    float* x = a.acc + h * kHeadDim;
    const float* y = b.acc + h * kHeadDim;
    for (int d = 0; d < kHeadDim; ++d) x[d] = x[d] * ea + y[d] * eb;
    a.m[h] = m;
  }
}

// out rows of the G heads of kv head g of token t.
void finish(const AttentionParams& p, State st, int G, int t, int g) {
  float* o = static_cast<float*>(p.out) + size_t(t) * p.ldo + size_t(g) * G * kHeadDim;
  for (int h = 0; h < G; ++h) {
    const float inv = 1.0f / (st.l[h] + std::exp(p.sinks[g * G + h] - st.m[h]));
    for (int d = 0; d < kHeadDim; ++d) o[h * kHeadDim + d] = st.acc[h * kHeadDim + d] * inv;
  }
}

template <class KV>
Status attend(CpuContext& c, const AttentionParams& p, const Rows<KV>& r) {
  const BatchDesc& b = p.batch;
  const int T = b.T, n_kv = p.n_kv, G = p.n_q / p.n_kv;
  const size_t sf = state_floats(G);
  bool split = false;
  if (int64_t(T) * n_kv < 4 * int64_t(c.pool.threads()))
    for (int t = 0; t < T && !split; ++t) split = chunk_count(p, t) > 1;

  if (!split) {
    c.pool.parallel_for(int64_t(T) * n_kv, [&](int64_t i0, int64_t i1) {
      Workspace<KV> ws(G);
      std::vector<float> states(2 * sf);
      const State acc(states.data(), G), part(states.data() + sf, G);
      for (int64_t i = i0; i < i1; ++i) {
        const int t = int(i / n_kv), g = int(i % n_kv);
        const int lo = first_key(p, t), end = b.tok_pos[t] + 1;
        run_chunk(p, r, c.simd, G, t, g, lo, std::min(end, lo + kChunkKeys), acc, ws);
        for (int j = lo + kChunkKeys; j < end; j += kChunkKeys) {
          run_chunk(p, r, c.simd, G, t, g, j, std::min(end, j + kChunkKeys), part, ws);
          merge(acc, part, G);
        }
        finish(p, acc, G, t, g);
      }
    });
    return Status::Ok();
  }

  // Chunks of token t are [chunk0[t], chunk0[t+1]); their states are parts[(chunk * n_kv + g) * sf].
  int32_t* chunk0 = nullptr;
  GPTOSS_RETURN_IF_ERROR(grow_scratch(c.scratch.attn_chunk0, size_t(T) + 1, "attention chunk index", &chunk0));
  chunk0[0] = 0;
  for (int t = 0; t < T; ++t) chunk0[t + 1] = chunk0[t] + chunk_count(p, t);
  const int chunks = chunk0[T];
  float* parts = nullptr;
  GPTOSS_RETURN_IF_ERROR(
      grow_scratch(c.scratch.attn_parts, size_t(chunks) * n_kv * sf, "attention partial states", &parts));
  c.pool.parallel_for(int64_t(chunks) * n_kv, [&](int64_t i0, int64_t i1) {
    Workspace<KV> ws(G);
    for (int64_t i = i0; i < i1; ++i) {
      const int ci = int(i / n_kv), g = int(i % n_kv);
      const int t = int(std::upper_bound(chunk0, chunk0 + T + 1, ci) - chunk0) - 1;
      const int j = first_key(p, t) + (ci - chunk0[t]) * kChunkKeys;
      const int end = std::min(b.tok_pos[t] + 1, j + kChunkKeys);
      run_chunk(p, r, c.simd, G, t, g, j, end, State(parts + size_t(i) * sf, G), ws);
    }
  });
  c.pool.parallel_for(int64_t(T) * n_kv, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int t = int(i / n_kv), g = int(i % n_kv);
      const State acc(parts + (size_t(chunk0[t]) * n_kv + g) * sf, G);
      for (int ci = chunk0[t] + 1; ci < chunk0[t + 1]; ++ci)
        merge(acc, State(parts + (size_t(ci) * n_kv + g) * sf, G), G);
      finish(p, acc, G, t, g);
    }
  });
  return Status::Ok();
}

}  // namespace

size_t cpu_attention_partial_floats(int max_tokens, int n_q, int n_kv, int max_context, int threads) {
  const int64_t tokens = std::min<int64_t>(max_tokens, (4 * int64_t(threads) - 1) / std::max(n_kv, 1));
  if (tokens < 1 || max_context < 1) return 0;
  const int64_t chunks = (max_context - 1) / kChunkKeys + 1;
  return chunks < 2 ? 0 : size_t(tokens * chunks) * size_t(n_q) * (kHeadDim + 2);
}

Status cpu_attention(CpuContext& c, const AttentionParams& p) {
  GPTOSS_RETURN_IF_ERROR(need_f32(p.act_type, "attention", "act_type"));
  const BatchDesc& b = p.batch;
  const KVCacheView& cache = p.cache;
  if (!cache.k || !cache.v || cache.slots < 1 || cache.len < 1 || cache.n_kv != p.n_kv)
    return invalid("attention: cache must be set, with slots >= 1, len >= 1 and n_kv = " + std::to_string(p.n_kv));
  if (cache.type != DType::F32 && cache.type != DType::BF16)
    return make_error(StatusCode::Unsupported,
                      std::string("attention: the cpu backend reads an F32 or BF16 KV cache, got ") +
                          dtype_name(cache.type));
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

  const float* k = static_cast<const float*>(p.k);
  const float* v = static_cast<const float*>(p.v);
  if (cache.type == DType::F32) {
    const Rows<float> r{static_cast<const float*>(cache.k), static_cast<const float*>(cache.v), k, v,
                        size_t(p.ldkv), c.simd.attn_scores_f32, c.simd.attn_accum_f32};
    return attend(c, p, r);
  }
  // BF16 cache: this step's k/v rounded as kv_append will store them, [2][T][n_kv*64].
  const int T = b.T, row = p.n_kv * kHeadDim;
  bf16_t* kvb = nullptr;
  GPTOSS_RETURN_IF_ERROR(grow_scratch(c.scratch.attn_kv_bf16, size_t(2) * T * row, "attention k/v", &kvb));
  bf16_t* kb = kvb;
  bf16_t* vb = kvb + size_t(T) * row;
  c.pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int i = 0; i < row; ++i) {
        kb[t * row + i] = f32_to_bf16(k[size_t(t) * p.ldkv + i]);
        vb[t * row + i] = f32_to_bf16(v[size_t(t) * p.ldkv + i]);
      }
  }, 16);
  const Rows<bf16_t> r{static_cast<const bf16_t*>(cache.k), static_cast<const bf16_t*>(cache.v), kb, vb,
                       size_t(row), c.simd.attn_scores_bf16, c.simd.attn_accum_bf16};
  return attend(c, p, r);
}

}  // namespace gptoss
