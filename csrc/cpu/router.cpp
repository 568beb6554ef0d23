// Router selection: per token, the k largest of E logits (ties: lower expert index first; a NaN
// logit is never preferred), sorted descending, and softmax over those k only.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/cpu_ops.h"

namespace gptoss {

Status cpu_router_topk(CpuContext& c, const RouterParams& p) {
  if (p.T < 1 || p.E < 1) return invalid("router_topk: T and E must be >= 1");
  if (p.k < 1 || p.k > p.E)
    return invalid("router_topk: k=" + std::to_string(p.k) + " must be in [1, E], E=" + std::to_string(p.E));
  if (!p.logits || !p.expert_idx || !p.expert_w) return invalid("router_topk: logits, expert_idx and expert_w must be set");
  if (p.ldl < p.E) return invalid("router_topk: ldl must be >= E");
  c.pool.parallel_for(p.T, [&](int64_t t0, int64_t t1) {
    std::vector<char> taken(size_t(p.E));
    for (int64_t t = t0; t < t1; ++t) {
      const float* l = p.logits + size_t(t) * p.ldl;
      int32_t* idx = p.expert_idx + size_t(t) * p.k;
      float* w = p.expert_w + size_t(t) * p.k;
      std::fill(taken.begin(), taken.end(), 0);
      for (int j = 0; j < p.k; ++j) {
        int best = -1;
        for (int e = 0; e < p.E; ++e) {
          if (taken[e]) continue;
          // Strict >: the lower index wins ties. A NaN never beats a number.
          if (best < 0 || l[e] > l[best] || (std::isnan(l[best]) && !std::isnan(l[e]))) best = e;
        }
        taken[best] = 1;
        idx[j] = best;
      }
      const float m = l[idx[0]];
      float sum = 0.0f;
      for (int j = 0; j < p.k; ++j) sum += (w[j] = std::exp(l[idx[j]] - m));
      for (int j = 0; j < p.k; ++j) w[j] /= sum;
    }
  }, 16);
  return Status::Ok();
}

}  // namespace gptoss
