// Router selection: for each token, the k largest of logits[t, 0..E) (ties: lower expert index
// first), sorted descending, and w = softmax over those k logits only:
//   w_j = exp(l_j - l_0) / sum_i exp(l_i - l_0)            (l_0 the largest selected logit)
// A NaN logit ranks like -inf, so k valid experts are always chosen (its weight is then NaN).
//
// Layout: logits [T][ldl] f32, expert_idx / expert_w [T][k]. One warp per token, running
// warp_router_topk (cuda/router_topk.cuh: k rounds of a warp arg-max, 8 logits per lane).
#include "cuda_check.cuh"
#include "device_common.cuh"
#include "router_topk.cuh"

namespace gptoss {
namespace {

constexpr int kRouterWarps = 4;

// ------------------------------------------------------------------------------------------------
// kernels
// ------------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(kRouterWarps * kWarpSize) f32_router_topk_softmax(RouterParams p) {
  const int t = blockIdx.x * kRouterWarps + threadIdx.x / kWarpSize;
  if (t >= p.T) return;
  warp_router_topk(p.logits + size_t(t) * p.ldl, p.E, p.k, p.expert_idx + size_t(t) * p.k, p.expert_w + size_t(t) * p.k);
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
