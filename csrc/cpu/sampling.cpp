// Sampling over the full vocabulary, one sequence per parallel item (semantics in ops.h):
//   logits [S][V] f32 (stride ldl); per sequence a SamplingConfig and a Philox counter.
// q_i = exp((l_i - max l) / temperature) are the unnormalised probabilities; the filters zero the
// q of the tokens they drop, so "kept" means q > 0 from then on:
//   top_k: keep l_i >= the k-th largest logit (found with nth_element on a copy, ties kept);
//   top_p: the threshold is the q at which the descending cumulative mass first reaches
//          top_p * sum(q). Only candidates in the float binades that can contain it are sorted:
//          one pass builds a per-exponent mass histogram, the binade where the mass from the top
//          reaches the target bounds the candidates;
//   min_p: keep q_i >= min_p * max(q).
// The draw walks the kept tokens in id order with f64 running sums and takes the first id whose
// running mass exceeds u * total, u = philox_uniform(seed, counter). NaN logits count as -inf.
// logprob = log_softmax(raw logits)[token]. Greedy (temperature 0) is the argmax, lowest id on ties.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "cpu/cpu_ops.h"
#include "philox.h"

namespace gptoss {

namespace {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

Status check_config(const SamplingConfig& c, int s) {
  const std::string seq = "sample: sequence " + std::to_string(s) + ": ";
  if (!(c.temperature >= 0.0f) || !std::isfinite(c.temperature))
    return invalid(seq + "temperature must be finite and >= 0, got " + std::to_string(c.temperature));
  if (c.top_k < 0) return invalid(seq + "top_k must be >= 0 (0 = off), got " + std::to_string(c.top_k));
  if (!(c.top_p > 0.0f && c.top_p <= 1.0f))
    return invalid(seq + "top_p must be in (0, 1], got " + std::to_string(c.top_p));
  if (!(c.min_p >= 0.0f && c.min_p <= 1.0f))
    return invalid(seq + "min_p must be in [0, 1], got " + std::to_string(c.min_p));
  return Status::Ok();
}

// q [V] (filtered in place), work [V]. Returns the token.
int32_t draw(const float* l, int V, float lmax, const SamplingConfig& cfg, int64_t counter, float* q,
             float* work) {
  for (int i = 0; i < V; ++i) q[i] = std::isnan(l[i]) ? 0.0f : std::exp((l[i] - lmax) / cfg.temperature);

  if (cfg.top_k > 0 && cfg.top_k < V) {
    for (int i = 0; i < V; ++i) work[i] = std::isnan(l[i]) ? -INFINITY : l[i];
    std::nth_element(work, work + cfg.top_k - 1, work + V, std::greater<float>());
    const float kth = work[cfg.top_k - 1];
    for (int i = 0; i < V; ++i)
      if (!(l[i] >= kth)) q[i] = 0.0f;
  }

  if (cfg.top_p < 1.0f) {
    double total = 0.0, hist[256] = {};
    for (int i = 0; i < V; ++i) {
      total += q[i];
      hist[float_bits(q[i]) >> 23] += q[i];  // q in [0, 1]: the sign bit is clear
    }
    const double target = double(cfg.top_p) * total;
    int binade = 0;
    double cum = 0.0;
    for (int b = 255; b >= 0; --b) {
      cum += hist[b];
      if (cum >= target) { binade = b; break; }
    }
    int n = 0;
    for (int i = 0; i < V; ++i)
      if (q[i] > 0.0f && int(float_bits(q[i]) >> 23) >= binade) work[n++] = q[i];
    std::sort(work, work + n, std::greater<float>());
    float thr = n ? work[n - 1] : 0.0f;  // if rounding keeps the sum below target, keep them all
    cum = 0.0;
    for (int j = 0; j < n; ++j) {
      cum += work[j];
      if (cum >= target) { thr = work[j]; break; }
    }
    for (int i = 0; i < V; ++i)
      if (q[i] < thr) q[i] = 0.0f;
  }

  if (cfg.min_p > 0.0f) {
    float qmax = 0.0f;
    for (int i = 0; i < V; ++i) qmax = std::max(qmax, q[i]);
    const float thr = cfg.min_p * qmax;
    for (int i = 0; i < V; ++i)
      if (q[i] < thr) q[i] = 0.0f;
  }

  double total = 0.0;
  for (int i = 0; i < V; ++i) total += q[i];
  const double target = double(philox_uniform(cfg.seed, uint64_t(counter))) * total;
  double run = 0.0;
  int32_t last = 0;
  for (int i = 0; i < V; ++i) {
    if (q[i] <= 0.0f) continue;
    run += q[i];
    last = i;
    if (run > target) return i;
  }
  return last;  // only reachable through rounding at the very end of the CDF
}

}  // namespace

Status cpu_sample(CpuContext& c, const SampleParams& p) {
  if (p.S < 1 || p.V < 1) return invalid("sample: S and V must be >= 1");
  if (!p.logits || !p.cfg || !p.counter || !p.out_token) return invalid("sample: logits, cfg, counter and out_token must be set");
  if (p.ldl < p.V) return invalid("sample: ldl must be >= V");
  for (int s = 0; s < p.S; ++s) {
    GPTOSS_RETURN_IF_ERROR(check_config(p.cfg[s], s));
    if (p.counter[s] < 0) return invalid("sample: sequence " + std::to_string(s) + ": negative counter");
  }
  float* scratch = nullptr;
  GPTOSS_RETURN_IF_ERROR(grow_scratch(c.scratch.sample, size_t(2) * p.S * p.V, "sampling", &scratch));
  c.pool.parallel_for(p.S, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const float* l = p.logits + size_t(s) * p.ldl;
      const SamplingConfig& cfg = p.cfg[s];
      float lmax = -INFINITY;
      int32_t argmax = 0;
      for (int i = 0; i < p.V; ++i)
        if (l[i] > lmax) { lmax = l[i]; argmax = i; }  // strict >: lowest id on ties; skips NaN
      int32_t tok = argmax;
      if (cfg.temperature > 0.0f && lmax > -INFINITY)
        tok = draw(l, p.V, lmax, cfg, p.counter[s], scratch + size_t(2 * s) * p.V,
                   scratch + size_t(2 * s + 1) * p.V);
      p.out_token[s] = tok;
      if (p.out_logprob) {
        double z = 0.0;
        for (int i = 0; i < p.V; ++i)
          if (!std::isnan(l[i])) z += std::exp(l[i] - lmax);
        p.out_logprob[s] = float(double(l[tok]) - double(lmax) - std::log(z));
      }
    }
  });
  return Status::Ok();
}

}  // namespace gptoss
