// Expert routing for the MoE: a stable counting sort of the step's (token, slot) pairs by expert,
// the tiles each expert's rows are cut into, and the deterministic weighted combine back onto the
// residual. Layouts and semantics in expert_route.cuh.
//
// i32_expert_route is one block (1024 threads; one warp when the step has at most 32 slots, i.e.
// decode, where a 1024-thread block's barriers would dominate): shared-memory histogram, a warp scan of the counts (and of the tile counts),
// then the stable placement in chunks of 1024 slots: within a warp __match_any_sync gives each
// slot's rank among equal experts, across warps a [32 warps][E] table of per-warp counts. Every
// position is a function of expert_idx alone (integer atomics only count), so the order is fixed.
#include "expert_route.cuh"

#include <algorithm>
#include <string>

#include "cuda_check.cuh"

namespace gptoss {
namespace {

// ---------------------------------------------------------------------------------------------
// kernels
// ---------------------------------------------------------------------------------------------
template <int kRouteThreads>
__global__ void __launch_bounds__(kRouteThreads) i32_expert_route(ExpertRouteParams p) {
  constexpr int kRouteWarps = kRouteThreads / 32;
  static_assert(kRouteThreads % 32 == 0, "whole warps");
  __shared__ int s_count[kRouteMaxExperts];  // slot counts, then running placement counts
  __shared__ int s_off[kRouteMaxExperts + 1];
  __shared__ int s_tile[kRouteMaxExperts + 1];
  __shared__ int s_warp[kRouteWarps][kRouteMaxExperts];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int S = p.T * p.k, E = p.E, BM = p.tile_rows;

  for (int e = tid; e < E; e += kRouteThreads) s_count[e] = 0;
  for (int i = tid; i < kRouteWarps * kRouteMaxExperts; i += kRouteThreads) (&s_warp[0][0])[i] = 0;
  __syncthreads();
  for (int i = tid; i < S; i += kRouteThreads) {
    const int e = p.expert_idx[i];
    if (unsigned(e) < unsigned(E)) atomicAdd(&s_count[e], 1);
  }
  __syncthreads();

  // Exclusive prefix sums of the counts and of the tiles per expert.
  if (warp == 0) {
    int carry = 0, tcarry = 0;
    for (int base = 0; base < E; base += 32) {
      const int e = base + lane;
      const int v = e < E ? s_count[e] : 0, tv = (v + BM - 1) / BM;
      int inc = v, tinc = tv;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int a = __shfl_up_sync(0xffffffffu, inc, o), b = __shfl_up_sync(0xffffffffu, tinc, o);
        if (lane >= o) {
          inc += a;
          tinc += b;
        }
      }
      if (e < E) {
        s_off[e] = carry + inc - v;
        s_tile[e] = tcarry + tinc - tv;
      }
      carry += __shfl_sync(0xffffffffu, inc, 31);
      tcarry += __shfl_sync(0xffffffffu, tinc, 31);
    }
    if (lane == 0) {
      s_off[E] = carry;
      s_tile[E] = tcarry;
    }
  }
  __syncthreads();

  for (int e = tid; e <= E; e += kRouteThreads) p.expert_off[e] = s_off[e];
  if (tid == 0) *p.n_tiles = s_tile[E];
  const int tiles = s_tile[E];
  for (int ti = tid; ti < tiles; ti += kRouteThreads) {
    int lo = 0, hi = E;  // s_tile[lo] <= ti < s_tile[hi]
    while (hi - lo > 1) {
      const int mid = (lo + hi) >> 1;
      if (s_tile[mid] <= ti) lo = mid; else hi = mid;
    }
    p.tile_expert[ti] = lo;
    p.tile_row0[ti] = s_off[lo] + (ti - s_tile[lo]) * BM;
  }
  for (int e = tid; e < E; e += kRouteThreads) s_count[e] = 0;
  __syncthreads();

  // Stable placement, 1024 slots at a time.
  for (int base = 0; base < S; base += kRouteThreads) {
    const int i = base + tid;
    const int e = i < S ? p.expert_idx[i] : -1;
    const bool valid = unsigned(e) < unsigned(E);
    const unsigned peers = __match_any_sync(0xffffffffu, valid ? e : -1);
    const int rank = __popc(peers & ((1u << lane) - 1u));
    if (valid && rank == 0) s_warp[warp][e] = __popc(peers);
    __syncthreads();
    if (valid) {
      int pos = s_off[e] + s_count[e] + rank;
      for (int w = 0; w < warp; ++w) pos += s_warp[w][e];
      p.sorted_slot[pos] = i;
    }
    __syncthreads();
    for (int e2 = tid; e2 < E; e2 += kRouteThreads) {
      int total = 0;
      for (int w = 0; w < kRouteWarps; ++w) {
        total += s_warp[w][e2];
        s_warp[w][e2] = 0;
      }
      s_count[e2] += total;
    }
    __syncthreads();
  }
}

// One thread per 4 (kVec) or 1 columns of one token; grid.x = tokens.
template <bool kVec>
__global__ void __launch_bounds__(256) f32_expert_combine(ExpertCombineParams p) {
  constexpr int kCols = kVec ? 4 : 1;
  const int t = blockIdx.x;
  const int n = (blockIdx.y * blockDim.x + threadIdx.x) * kCols;
  if (n >= p.H) return;
  float acc[kCols];
#pragma unroll
  for (int i = 0; i < kCols; ++i) acc[i] = 0.0f;
  for (int j = 0; j < p.k; ++j) {
    const int slot = t * p.k + j;
    if (unsigned(p.expert_idx[slot]) >= unsigned(p.E)) continue;
    const float* src = p.partial + size_t(slot) * p.H + n;
    if (kVec) {
      const float4 v = *reinterpret_cast<const float4*>(src);
      acc[0] += v.x;
      acc[kCols > 1 ? 1 : 0] += v.y;
      acc[kCols > 2 ? 2 : 0] += v.z;
      acc[kCols > 3 ? 3 : 0] += v.w;
    } else {
      acc[0] += src[0];
    }
  }
  float* y = p.y + size_t(t) * p.ldy + n;
  if (kVec) {
    float4 v = *reinterpret_cast<float4*>(y);
    v.x += acc[0];
    v.y += acc[kCols > 1 ? 1 : 0];
    v.z += acc[kCols > 2 ? 2 : 0];
    v.w += acc[kCols > 3 ? 3 : 0];
    *reinterpret_cast<float4*>(y) = v;
  } else {
    y[0] += acc[0];
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// launchers
// ---------------------------------------------------------------------------------------------
int expert_route_max_tiles(int slots, int E, int tile_rows) {
  if (slots <= 0 || tile_rows <= 0) return 0;
  const int64_t active = std::min(slots, E);
  const int64_t bound = (int64_t(slots) + active * (tile_rows - 1)) / tile_rows;
  return int(std::min<int64_t>(slots, bound));
}

// Cost: one block reads T*k indices a few times and writes T*k + 2 * tiles ints: ~5-10 us at
// prefill sizes (latency bound); a few us at decode.
Status launch_expert_route(const ExpertRouteParams& p, cudaStream_t stream) {
  if (p.E < 1 || p.E > kRouteMaxExperts)
    return make_error(StatusCode::InvalidArgument, "expert route: E=" + std::to_string(p.E) + " must be in [1, 256]");
  if (p.T < 0 || p.k < 1 || p.tile_rows < 1)
    return make_error(StatusCode::InvalidArgument, "expert route: need T >= 0, k >= 1 and tile_rows >= 1");
  if (!p.expert_idx || !p.expert_off || !p.sorted_slot || !p.tile_expert || !p.tile_row0 || !p.n_tiles)
    return make_error(StatusCode::InvalidArgument, "expert route: null buffer");
  if (p.T * p.k <= 32) {
    i32_expert_route<32><<<1, 32, 0, stream>>>(p);
  } else {
    i32_expert_route<1024><<<1, 1024, 0, stream>>>(p);
  }
  GPTOSS_CUDA_LAUNCH_CHECK("i32_expert_route");
  return Status::Ok();
}

// Floor: reads T*k*H*4 + T*H*4 bytes and writes T*H*4 (T = 1, H = 2880: 58 KB, latency bound;
// T = 2048: 141 MB -> ~50 us at 2.9 TB/s).
Status launch_expert_combine(const ExpertCombineParams& p, cudaStream_t stream) {
  if (p.T == 0) return Status::Ok();
  if (p.T < 0 || p.k < 1 || p.H < 1 || p.ldy < p.H || !p.partial || !p.expert_idx || !p.y)
    return make_error(StatusCode::InvalidArgument, "expert combine: bad shape or null buffer");
  const bool vec = p.H % 4 == 0 && p.ldy % 4 == 0 && (reinterpret_cast<uintptr_t>(p.y) & 15u) == 0 &&
                   (reinterpret_cast<uintptr_t>(p.partial) & 15u) == 0;
  const int cols = vec ? (p.H + 3) / 4 : p.H;
  const dim3 grid(p.T, (cols + 255) / 256);
  if (vec) {
    f32_expert_combine<true><<<grid, 256, 0, stream>>>(p);
  } else {
    f32_expert_combine<false><<<grid, 256, 0, stream>>>(p);
  }
  GPTOSS_CUDA_LAUNCH_CHECK("f32_expert_combine");
  return Status::Ok();
}

}  // namespace gptoss
