// Embedding lookup: out[t, :] = f32(table[ids[t], :]). table [V][H] bf16 (mmapped checkpoint rows),
// out [T][H] f32 residual. Exact (bf16 -> f32 is a shift).
#include "cpu/cpu_ops.h"

namespace gptoss {

Status cpu_embed(CpuContext& c, const EmbedParams& p) {
  if (p.T < 1 || p.H < 1 || p.V < 1) return invalid("embed: T, H and V must be >= 1");
  if (!p.ids || !p.table || !p.out) return invalid("embed: ids, table and out must be set");
  for (int t = 0; t < p.T; ++t)
    if (p.ids[t] < 0 || p.ids[t] >= p.V)
      return invalid("embed: token id " + std::to_string(p.ids[t]) + " at index " + std::to_string(t) +
                     " is outside [0, " + std::to_string(p.V) + ")");
  c.pool.parallel_for(p.T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const bf16_t* row = p.table + size_t(p.ids[t]) * p.H;
      float* o = p.out + size_t(t) * p.H;
      for (int i = 0; i < p.H; ++i) o[i] = bf16_to_f32(row[i]);
    }
  }, 8);
  return Status::Ok();
}

}  // namespace gptoss
