// RMSNorm: out[r] = x[row(r)] * rsqrt(mean(x[row(r)]^2) + eps) * w. x is the f32 residual
// [*][H] (stride ldx), out [T][H] f32 (stride ldo). The mean of squares is summed in f64 (cheap
// at H = 2880 and it keeps the result within an ulp or two of the float64 reference).
#include <cmath>

#include "cpu/cpu_ops.h"

namespace gptoss {

Status cpu_rmsnorm(CpuContext& c, const RMSNormParams& p) {
  GPTOSS_RETURN_IF_ERROR(need_f32(p.out_type, "rmsnorm", "out_type"));
  if (p.T < 1 || p.H < 1) return invalid("rmsnorm: T and H must be >= 1");
  if (!p.x || !p.w || !p.out) return invalid("rmsnorm: x, w and out must be set");
  if (p.ldx < p.H || p.ldo < p.H) return invalid("rmsnorm: ldx and ldo must be >= H");
  if (!(p.eps >= 0.0f)) return invalid("rmsnorm: eps must be >= 0");
  float* out = static_cast<float*>(p.out);
  c.pool.parallel_for(p.T, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t row = p.rows ? p.rows[r] : r;
      const float* x = p.x + size_t(row) * p.ldx;
      double ss = 0.0;
      for (int i = 0; i < p.H; ++i) ss += double(x[i]) * double(x[i]);
      const float inv = float(1.0 / std::sqrt(ss / p.H + double(p.eps)));
      float* o = out + size_t(r) * p.ldo;
      for (int i = 0; i < p.H; ++i) o[i] = x[i] * inv * p.w[i];
    }
  }, 4);
  return Status::Ok();
}

}  // namespace gptoss
