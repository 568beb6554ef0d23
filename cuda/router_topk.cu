// Router selection: for each token, the k largest of logits[t, 0..E) (ties: lower expert index
// first), sorted descending, and w = softmax over those k logits only:
//   w_j = exp(l_j - l_0) / sum_i exp(l_i - l_0)            (l_0 the largest selected logit)
// A NaN logit ranks like -inf, so k valid experts are always chosen (its weight is then NaN).
//
// Layout: logits [T][ldl] f32, expert_idx / expert_w [T][k]. One warp per token: lane l holds
// logits l, l+32, ... (E <= 256: 8 per lane); k rounds of a warp arg-max over the experts not yet
// taken, each a 5-step shuffle reduction on (value, index).
#include <climits>
#include <cmath>

#include "cuda_check.cuh"
#include "device_common.cuh"
#include "router_topk.cuh"

namespace gptoss {
namespace {

constexpr int kRouterWarps = 4;
constexpr int kPerLane = kRouterMaxExperts / kWarpSize;

// ------------------------------------------------------------------------------------------------
// kernels
// ------------------------------------------------------------------------------------------------

// (v, i) ranks before (bv, bi): larger value, or equal value and lower index.
__device__ __forceinline__ bool ranks_before(float v, int i, float bv, int bi) { return v > bv || (v == bv && i < bi); }

__global__ void __launch_bounds__(kRouterWarps * kWarpSize) f32_router_topk_softmax(RouterParams p) {
  static_assert(kRouterMaxExperts % kWarpSize == 0 && kPerLane <= 32, "experts per lane fit a bit mask");
  const int lane = threadIdx.x % kWarpSize;
  const int t = blockIdx.x * kRouterWarps + threadIdx.x / kWarpSize;
  if (t >= p.T) return;
  const float* row = p.logits + size_t(t) * p.ldl;
  float key[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = j * kWarpSize + lane;
    const float v = e < p.E ? row[e] : -INFINITY;
    key[j] = v != v ? -INFINITY : v;
  }
  unsigned taken = 0;
  int chosen[kRouterMaxK];
#pragma unroll
  for (int r = 0; r < kRouterMaxK; ++r) {
    chosen[r] = 0;
    if (r >= p.k) continue;
    float bv = -INFINITY;
    int bi = INT_MAX;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = j * kWarpSize + lane;
      if (e < p.E && !(taken >> j & 1u) && ranks_before(key[j], e, bv, bi)) { bv = key[j]; bi = e; }
    }
#pragma unroll
    for (int o = kWarpSize / 2; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(kFullMask, bv, o);
      const int oi = __shfl_xor_sync(kFullMask, bi, o);
      if (ranks_before(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    if (bi % kWarpSize == lane) taken |= 1u << (bi / kWarpSize);
    chosen[r] = bi;
  }
  // Softmax over the k raw logits (the max is the first one chosen).
  const float l0 = row[chosen[0]];
  float denom = 0.0f, mine = 0.0f;
#pragma unroll
  for (int r = 0; r < kRouterMaxK; ++r) {
    if (r >= p.k) continue;
    const float e = expf(row[chosen[r]] - l0);
    denom += e;
    if (r == lane) mine = e;
  }
  if (lane < p.k) {
    int idx = 0;
#pragma unroll
    for (int r = 0; r < kRouterMaxK; ++r)
      if (r == lane) idx = chosen[r];
    p.expert_idx[size_t(t) * p.k + lane] = idx;
    p.expert_w[size_t(t) * p.k + lane] = mine / denom;
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// launchers
// ------------------------------------------------------------------------------------------------

// Floor: T*E*4 bytes read (decode: 128 B at E = 32) -- launch latency, ~2 us; compute is k*5
// shuffle rounds per token.
Status launch_router_topk(const RouterParams& p, cudaStream_t stream) {
  if (p.T < 0) return make_error(StatusCode::InvalidArgument, "router_topk: negative T");
  if (p.E < 1 || p.E > kRouterMaxExperts || p.k < 1 || p.k > kRouterMaxK || p.k > p.E)
    return make_error(StatusCode::InvalidArgument,
                      "router_topk: CUDA needs 1 <= k <= min(E, 8) and E <= 256, got E=" + std::to_string(p.E) +
                          ", k=" + std::to_string(p.k));
  if (p.T == 0) return Status::Ok();
  if (!p.logits || !p.expert_idx || !p.expert_w)
    return make_error(StatusCode::InvalidArgument, "router_topk: null pointer");
  if (p.ldl < p.E)
    return make_error(StatusCode::InvalidArgument, "router_topk: ldl (" + std::to_string(p.ldl) + ") < E");
  f32_router_topk_softmax<<<ceil_div(p.T, kRouterWarps), kRouterWarps * kWarpSize, 0, stream>>>(p);
  GPTOSS_CUDA_LAUNCH_CHECK("f32_router_topk_softmax");
  return Status::Ok();
}

}  // namespace gptoss
