// KV append: writes this step's k/v (f32 [T][n_kv*64], stride ldkv) into the bf16 cache
// [slots][n_kv][len][64] at index pos % len (round to nearest even). A sequence that brings more
// than `len` tokens writes only its last `len`: the earlier ones would be overwritten in the ring
// anyway, and skipping them makes the result independent of the order tokens are written in.
#include "cpu/cpu_ops.h"

namespace gptoss {

Status cpu_kv_append(CpuContext& c, const KVAppendParams& p) {
  GPTOSS_RETURN_IF_ERROR(need_f32(p.act_type, "kv_append", "act_type"));
  const BatchDesc& b = p.batch;
  const KVCacheView& cache = p.cache;
  if (!cache.k || !cache.v || cache.slots < 1 || cache.len < 1 || cache.n_kv < 1)
    return invalid("kv_append: cache must be set, with slots, len and n_kv >= 1");
  GPTOSS_RETURN_IF_ERROR(check_batch(b, cache.slots, "kv_append"));
  if (!p.k || !p.v) return invalid("kv_append: k and v must be set");
  if (cache.type != DType::BF16) return make_error(StatusCode::Unsupported, std::string("kv_append: the cpu cache must be BF16, got ") + dtype_name(cache.type));
  bf16_t* cache_k = static_cast<bf16_t*>(cache.k);
  bf16_t* cache_v = static_cast<bf16_t*>(cache.v);
  if (p.ldkv < cache.n_kv * kHeadDim) return invalid("kv_append: ldkv must be >= n_kv*64");
  const float* k = static_cast<const float*>(p.k);
  const float* v = static_cast<const float*>(p.v);
  c.pool.parallel_for(b.T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int s = b.tok_seq[t];
      const int count = b.seq_tok0[s + 1] - b.seq_tok0[s];
      if (t - b.seq_tok0[s] < count - cache.len) continue;  // not among the sequence's last len
      const size_t idx = size_t(b.tok_pos[t] % cache.len);
      for (int g = 0; g < cache.n_kv; ++g) {
        const size_t dst = ((size_t(b.seq_slot[s]) * cache.n_kv + g) * cache.len + idx) * kHeadDim;
        const size_t src = size_t(t) * p.ldkv + size_t(g) * kHeadDim;
        for (int d = 0; d < kHeadDim; ++d) {
          cache_k[dst + d] = f32_to_bf16(k[src + d]);
          cache_v[dst + d] = f32_to_bf16(v[src + d]);
        }
      }
    }
  }, 16);
  return Status::Ok();
}

}  // namespace gptoss
