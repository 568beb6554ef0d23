// Router top-k + softmax on the GPU (cuda/router_topk.cu). Semantics: RouterParams in csrc/ops.h.
// The per-token warp routine lives here too, so that the fused routers (cuda/dense_bf16.cu,
// cuda/moe_input_cluster.cu) select experts with exactly the same code as the standalone op.
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cmath>

#include "ops.h"

namespace gptoss {

constexpr int kRouterMaxExperts = 256;  // E <= 256 (gpt-oss: 32 or 128)
constexpr int kRouterMaxK = 8;          // k <= 8  (gpt-oss: 4)

Status launch_router_topk(const RouterParams& p, cudaStream_t stream);

#if defined(__CUDACC__)
namespace router_detail {
// (v, i) ranks before (bv, bi): larger value, or equal value and lower index.
__device__ __forceinline__ bool ranks_before(float v, int i, float bv, int bi) { return v > bv || (v == bv && i < bi); }
}  // namespace router_detail

// One whole warp selects the k largest of row[0..E) (ties: lower index first; NaN ranks like -inf),
// sorted descending, and writes idx[0..k) and w[0..k) = softmax over those k logits:
//   w_j = exp(l_j - l_0) / sum_i exp(l_i - l_0).
// Lane l holds logits l, l+32, ... (E <= 256: 8 per lane); k rounds of a warp arg-max over the
// experts not yet taken, each a 5-step shuffle reduction on (value, index). `row` is read through
// L2 (ld.global.cg), so logits that other blocks of the same kernel wrote (and fenced) are seen;
// kShared: `row` is in shared memory (the fused router stages every token's logits there first).
template <bool kShared = false>
__device__ __forceinline__ void warp_router_topk(const float* row, int E, int k, int32_t* idx, float* w) {
  auto load = [&](int e) { return kShared ? row[e] : __ldcg(row + e); };
  using router_detail::ranks_before;
  constexpr int kPerLane = kRouterMaxExperts / 32;
  static_assert(kRouterMaxExperts % 32 == 0 && kPerLane <= 32, "experts per lane fit a bit mask");
  const int lane = threadIdx.x & 31;
  float key[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = j * 32 + lane;
    const float v = e < E ? load(e) : -INFINITY;
    key[j] = v != v ? -INFINITY : v;
  }
  unsigned taken = 0;
  int chosen[kRouterMaxK];
#pragma unroll
  for (int r = 0; r < kRouterMaxK; ++r) {
    chosen[r] = 0;
    if (r >= k) continue;
    float bv = -INFINITY;
    int bi = INT_MAX;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = j * 32 + lane;
      if (e < E && !(taken >> j & 1u) && ranks_before(key[j], e, bv, bi)) { bv = key[j]; bi = e; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ranks_before(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    if (bi % 32 == lane) taken |= 1u << (bi / 32);
    chosen[r] = bi;
  }
  // Softmax over the k raw logits (the max is the first one chosen).
  const float l0 = load(chosen[0]);
  float denom = 0.0f, mine = 0.0f;
#pragma unroll
  for (int r = 0; r < kRouterMaxK; ++r) {
    if (r >= k) continue;
    const float e = expf(load(chosen[r]) - l0);
    denom += e;
    if (r == lane) mine = e;
  }
  if (lane < k) {
    int id = 0;
#pragma unroll
    for (int r = 0; r < kRouterMaxK; ++r)
      if (r == lane) id = chosen[r];
    idx[lane] = id;
    w[lane] = mine / denom;
  }
}
#endif

}  // namespace gptoss
