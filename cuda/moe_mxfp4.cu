// The MXFP4 mixture of experts on CUDA (ops.h MoEParams; weight layout in moe_mxfp4.cuh): input
// checks, the workspace, and the choice of kernel family per step size.
//
// Math per slot (token t, its j-th expert e, routing weight w):
//   u = W1[e] x[t] + b1[e] (2I rows: even glu, odd linear);  a = min(u_glu, limit),
//   l = clamp(u_lin, -limit, limit);  z = a * sigmoid(alpha a) * (l + 1)   (rounded to bf16)
//   y[t] += sum_j w (W2[e] z + b2[e])   (the k terms summed in slot order, then added to y)
// Paths:
//  * T * k <= kStreamMaxSlots (decode up to 8 tokens): moe_mxfp4_stream.cu, KS warps per (expert,
//    16-row tile) streaming its K through cp.async rings, two launches (mlp2 with PDL), no routing
//    pass; mlp2 fuses the combine (the last warp group of each output tile adds the partials onto y).
//  * T * k <= kStreamBatchMaxSlots (batched decode): expert_route.cu sorts the slots by expert and
//    cuts 16-row tiles; moe_mxfp4_stream_batch.cu streams each block's weight tiles once per route
//    tile (mlp2 with PDL); expert_combine adds the k partials per token.
//  * larger steps (prefill): expert_route.cu sorts and cuts tiles; mlp1 and mlp2 run as grouped
//    GEMMs over the tiles (moe_mxfp4_wgmma_rs.cu on sm_90a, moe_mxfp4_gemm.cu elsewhere or with
//    GPT_OSS_C_FORCE_PORTABLE=1); expert_combine adds the k partials per token.
// Every path is deterministic (fixed summation order, no float atomics) and allocation- and
// sync-free (capture-safe).
#include "moe_mxfp4.cuh"

#include <algorithm>
#include <string>

#include "cuda_check.cuh"
#include "device_common.cuh"
#include "expert_route.cuh"
#include "moe_mxfp4_impl.cuh"

namespace gptoss {

namespace {

constexpr size_t kWsAlign = 256;  // sub-buffer alignment within the workspace

size_t align_up(size_t v) { return (v + kWsAlign - 1) / kWsAlign * kWsAlign; }

// Workspace carve-up for S = T * k slots.
struct MoeWorkspace {
  int32_t* expert_off;
  int32_t* sorted_slot;
  int32_t* tile_expert;
  int32_t* tile_row0;
  int32_t* n_tiles;
  int32_t* counters;
  bf16_t* z;
  float* partial;
};

size_t workspace_layout(size_t S, size_t E, size_t H, size_t I, char* base, MoeWorkspace* w) {
  size_t off = 0;
  auto take = [&](size_t bytes) {
    char* p = base ? base + off : nullptr;
    off += align_up(bytes);
    return p;
  };
  char* p_off = take((E + 1) * 4);
  char* p_sorted = take(S * 4);
  char* p_te = take(S * 4);
  char* p_tr = take(S * 4);
  char* p_nt = take(4);
  char* p_cnt = take(H / kMxfp4TileRows * 4);  // the decode stream's arrival counter per mlp2 output tile
  char* p_z = take(S * I * 2);
  char* p_partial = take(S * H * 4);
  if (w) {
    w->expert_off = reinterpret_cast<int32_t*>(p_off);
    w->sorted_slot = reinterpret_cast<int32_t*>(p_sorted);
    w->tile_expert = reinterpret_cast<int32_t*>(p_te);
    w->tile_row0 = reinterpret_cast<int32_t*>(p_tr);
    w->n_tiles = reinterpret_cast<int32_t*>(p_nt);
    w->counters = reinterpret_cast<int32_t*>(p_cnt);
    w->z = reinterpret_cast<bf16_t*>(p_z);
    w->partial = reinterpret_cast<float*>(p_partial);
  }
  return off;
}

// The StreamArgs fields both streaming paths (moe_mxfp4_stream.cu, moe_mxfp4_stream_batch.cu)
// share; the caller sets the per-launch operands.
moe::StreamArgs stream_args(const MoEParams& p, const MoeWorkspace& w) {
  moe::StreamArgs g;
  g.expert_idx = p.expert_idx;
  g.expert_w = p.expert_w;
  g.T = p.T;
  g.k = p.k;
  g.E = p.E;
  g.z = w.z;
  g.I = p.I;
  g.alpha = p.swiglu_alpha;
  g.limit = p.swiglu_limit;
  g.fast_scales = p.scales_below_128;
  g.partial = w.partial;
  g.y = p.y;
  g.ldy = p.ldy;
  g.counters = w.counters;
  g.n_counters = p.H / kMxfp4TileRows;  // one per mlp2 output tile
  return g;
}

// A/B knob GPT_OSS_C_MOE_L2_NEXT=0: the decode mlp2 leaves MoEParams::next_read alone.
bool l2_next_enabled() {
  static const bool on = !env_knob_off("GPT_OSS_C_MOE_L2_NEXT");
  return on;
}

}  // namespace

size_t moe_workspace_bytes(const BackendLimits& limits) {
  const size_t S = size_t(std::max(limits.max_tokens, 1)) * size_t(std::max(limits.top_k, 1));
  return workspace_layout(S, size_t(std::max(limits.n_experts, 1)), size_t(std::max(limits.hidden, 0)),
                          size_t(std::max(limits.intermediate, 0)), nullptr, nullptr);
}

Status launch_moe_mxfp4(const MoEParams& p, void* workspace, size_t workspace_bytes, bool pdl, cudaStream_t stream) {
  const std::string shape = " (T=" + std::to_string(p.T) + ", E=" + std::to_string(p.E) + ", k=" + std::to_string(p.k) +
                            ", H=" + std::to_string(p.H) + ", I=" + std::to_string(p.I) + ")";
  if (p.x_type != DType::BF16)
    return make_error(StatusCode::Unsupported,
                      std::string("moe on CUDA takes bf16 activations, got x_type ") + dtype_name(p.x_type) + shape);
  if (p.T < 0 || p.k < 1 || p.E < 1 || p.E > kRouteMaxExperts)
    return make_error(StatusCode::InvalidArgument, "moe: need T >= 0, k >= 1 and 1 <= E <= 256" + shape);
  if (p.H <= 0 || p.I <= 0 || p.H % 32 != 0 || p.I % 32 != 0)
    return make_error(StatusCode::InvalidArgument, "moe: H and I must be positive multiples of 32" + shape);
  if (p.T == 0) return Status::Ok();
  if (!p.x || !p.expert_idx || !p.expert_w || !p.w1_blocks || !p.w1_scales || !p.b1 || !p.w2_blocks ||
      !p.w2_scales || !p.b2 || !p.y)
    return make_error(StatusCode::InvalidArgument, "moe: null input" + shape);
  if (p.ldx < p.H || p.ldx % 8 != 0 || !aligned_to(p.x, 16))
    return make_error(StatusCode::InvalidArgument,
                      "moe: x must be 16-byte aligned with ldx >= H and ldx % 8 == 0, got ldx=" + std::to_string(p.ldx) + shape);
  if (p.ldy < p.H) return make_error(StatusCode::InvalidArgument, "moe: ldy=" + std::to_string(p.ldy) + " < H" + shape);
  if (!aligned_to(p.w1_blocks, 16) || !aligned_to(p.w2_blocks, 16) || !aligned_to(p.w1_scales, 16) || !aligned_to(p.w2_scales, 16))
    return make_error(StatusCode::InvalidArgument, "moe: MXFP4 blocks and scales must be 16-byte aligned" + shape);

  const size_t S = size_t(p.T) * size_t(p.k);
  if (S > size_t(1) << 30) return make_error(StatusCode::InvalidArgument, "moe: too many slots" + shape);
  const size_t need = workspace_layout(S, size_t(p.E), size_t(p.H), size_t(p.I), nullptr, nullptr);
  if (!workspace || !aligned_to(workspace, 16))
    return make_error(StatusCode::InvalidArgument, "moe: the workspace must be a 16-byte aligned device buffer" + shape);
  if (workspace_bytes < need)
    return make_error(StatusCode::InvalidArgument, "moe: workspace of " + std::to_string(workspace_bytes) +
                                                       " bytes is too small: this step needs " + std::to_string(need) +
                                                       "; size it with moe_workspace_bytes" + shape);
  MoeWorkspace w;
  workspace_layout(S, size_t(p.E), size_t(p.H), size_t(p.I), static_cast<char*>(workspace), &w);

  if (S <= size_t(moe::kStreamMaxSlots)) {
    moe::StreamArgs g = stream_args(p, w);
    // mlp1: rows 2I, K = H, B = x rows of the slots' tokens.
    g.act = static_cast<const bf16_t*>(p.x);
    g.ld_act = p.ldx;
    g.wb = p.w1_blocks;
    g.ws = p.w1_scales;
    g.bias = p.b1;
    g.R = 2 * p.I;
    g.K = p.H;
    GPTOSS_RETURN_IF_ERROR(moe::launch_stream(g, true, pdl, stream));
    // mlp2: rows H, K = I, B = z rows of the slots; combine onto y.
    g.act = w.z;
    g.ld_act = p.I;
    g.wb = p.w2_blocks;
    g.ws = p.w2_scales;
    g.bias = p.b2;
    g.R = p.H;
    g.K = p.I;
    if (l2_next_enabled()) g.l2_next = p.next_read;
    return moe::launch_stream(g, false, pdl, stream);
  }

  const bool batch = S <= size_t(moe::kStreamBatchMaxSlots);
  const bool wg = !batch && moe::wgmma_available();
  const int bm = batch ? moe::kStreamRouteRows : wg ? moe::kRsTokenRows : moe::gemm_tile_rows(int(S), p.E);
  const int max_tiles = expert_route_max_tiles(int(S), p.E, bm);

  ExpertRouteParams rp;
  rp.expert_idx = p.expert_idx;
  rp.T = p.T;
  rp.k = p.k;
  rp.E = p.E;
  rp.tile_rows = bm;
  rp.expert_off = w.expert_off;
  rp.sorted_slot = w.sorted_slot;
  rp.tile_expert = w.tile_expert;
  rp.tile_row0 = w.tile_row0;
  rp.n_tiles = w.n_tiles;
  GPTOSS_RETURN_IF_ERROR(launch_expert_route(rp, stream));

  moe::GemmArgs a;
  a.sorted_slot = w.sorted_slot;
  a.expert_off = w.expert_off;
  a.tile_expert = w.tile_expert;
  a.tile_row0 = w.tile_row0;
  a.n_tiles = w.n_tiles;
  a.z = w.z;
  a.I = p.I;
  a.expert_w = p.expert_w;
  a.partial = w.partial;
  a.alpha = p.swiglu_alpha;
  a.limit = p.swiglu_limit;
  a.fast_scales = p.scales_below_128;
  // Batched decode: the streaming kernels over the route tiles, z and the partials in slot order,
  // mlp2 with PDL.
  moe::StreamArgs g = stream_args(p, w);
  const moe::RouteView rv{w.expert_off, w.sorted_slot, w.tile_expert, w.tile_row0, w.n_tiles, max_tiles};
  auto run = [&](bool mlp1) {
    if (batch) {
      g.act = mlp1 ? a.act : w.z;
      g.ld_act = mlp1 ? a.ld_act : p.I;
      g.wb = a.wb;
      g.ws = a.ws;
      g.bias = a.bias;
      g.R = a.R;
      g.K = a.K;
      return moe::launch_stream_routed(g, rv, mlp1, !mlp1 && pdl, stream);
    }
    if (wg) return moe::launch_gemm_wgmma_rs(mlp1, a, max_tiles, stream);
    return moe::launch_gemm_mma(bm, mlp1, a, max_tiles, stream);
  };

  // mlp1: rows 2I, K = H, B = x gathered by token. The wgmma GEMM reads x in prefill k order,
  // permuted into the partials' space (T * H bf16 <= S * H f32; mlp2 writes it only later).
  a.act = static_cast<const bf16_t*>(p.x);
  a.ld_act = p.ldx;
  if (wg) {
    bf16_t* xp = reinterpret_cast<bf16_t*>(w.partial);
    GPTOSS_RETURN_IF_ERROR(moe::launch_prefill_permute(a.act, p.ldx, xp, p.T, p.H, stream));
    a.act = xp;
    a.ld_act = p.H;
  }
  a.gather_k = p.k;
  a.wb = p.w1_blocks;
  a.ws = p.w1_scales;
  a.bias = p.b1;
  a.R = 2 * p.I;
  a.K = p.H;
  GPTOSS_RETURN_IF_ERROR(run(true));

  // mlp2: rows H, K = I, B = z in sorted order.
  a.act = w.z;
  a.ld_act = p.I;
  a.gather_k = 0;
  a.wb = p.w2_blocks;
  a.ws = p.w2_scales;
  a.bias = p.b2;
  a.R = p.H;
  a.K = p.I;
  GPTOSS_RETURN_IF_ERROR(run(false));

  ExpertCombineParams cp;
  cp.partial = w.partial;
  cp.expert_idx = p.expert_idx;
  cp.y = p.y;
  cp.ldy = p.ldy;
  cp.T = p.T;
  cp.k = p.k;
  cp.E = p.E;
  cp.H = p.H;
  return launch_expert_combine(cp, stream);
}

}  // namespace gptoss
