// KV append: writes this step's k/v (f32 [T][n_kv*64], stride ldkv) into the cache
// [slots][n_kv][len][64] at index pos % len: copied into an F32 cache (the CPU's kv_type), rounded
// to nearest even into a BF16 one. A sequence that brings more than `len` tokens writes only its
// last `len`: the earlier ones would be overwritten in the ring anyway, and skipping them makes the
// result independent of the order tokens are written in.
#include <cstring>

#include "cpu/cpu_ops.h"

namespace gptoss {

namespace {

inline void store_row(float* dst, const float* src) { std::memcpy(dst, src, kHeadDim * sizeof(float)); }
inline void store_row(bf16_t* dst, const float* src) {
  for (int d = 0; d < kHeadDim; ++d) dst[d] = f32_to_bf16(src[d]);
}

template <class KV>
void append(CpuContext& c, const KVAppendParams& p) {
  const BatchDesc& b = p.batch;
  const KVCacheView& cache = p.cache;
  KV* cache_k = static_cast<KV*>(cache.k);
  KV* cache_v = static_cast<KV*>(cache.v);
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
        store_row(cache_k + dst, k + src);
        store_row(cache_v + dst, v + src);
      }
    }
  }, 16);
}

}  // namespace

Status cpu_kv_append(CpuContext& c, const KVAppendParams& p) {
  GPTOSS_RETURN_IF_ERROR(need_f32(p.act_type, "kv_append", "act_type"));
  const KVCacheView& cache = p.cache;
  if (!cache.k || !cache.v || cache.slots < 1 || cache.len < 1 || cache.n_kv < 1)
    return invalid("kv_append: cache must be set, with slots, len and n_kv >= 1");
  if (cache.type != DType::F32 && cache.type != DType::BF16)
    return make_error(StatusCode::Unsupported,
                      std::string("kv_append: the cpu backend writes an F32 or BF16 KV cache, got ") +
                          dtype_name(cache.type));
  GPTOSS_RETURN_IF_ERROR(check_batch(p.batch, cache.slots, "kv_append"));
  if (!p.k || !p.v) return invalid("kv_append: k and v must be set");
  if (p.ldkv < cache.n_kv * kHeadDim) return invalid("kv_append: ldkv must be >= n_kv*64");
  if (cache.type == DType::F32)
    append<float>(c, p);
  else
    append<bf16_t>(c, p);
  return Status::Ok();
}

}  // namespace gptoss
