// MoE for batched decode (kStreamMaxSlots < T * k <= kStreamBatchMaxSlots) on expert_route tiles of
// kStreamRouteRows = 16 sorted rows. H200 kernel bench, 20b shapes: T = 64 215 us (the grouped GEMV
// it replaced: 466).
//
// Block (8 warps) = one route tile (16 token columns of one expert) x 8 consecutive 16-row weight
// tiles, one per warp, over the whole K. Per 64-wide k chunk a D-stage cp.async ring holds each
// warp's own 16 code bytes and scale word per lane (as in moe_mxfp4_stream.cu) and ONE copy of the
// route tile's 16 activation columns for the whole block (2 KB), so the activations cross L2 -> SM
// once per block instead of once per warp (per-warp copies would move ~4x the weight bytes at T = 64).
// The shared columns need one barrier per chunk: cp.async.wait_group + __syncthreads, then the
// refill of the stage every warp has finished.
// Math as moe_mxfp4_stream.cu: mlp1 z[slot] = swiglu(W1[e] x[slot / k] + b1[e]); mlp2
// partial[slot] = w[slot] (W2[e] z[slot] + b2[e]); launch_expert_combine then adds the partials onto
// y. mlp2 is launched with programmatic dependent launch: it puts its first weight chunks in flight
// and waits for mlp1 (pdl_wait) before copying z.
#include <cuda_bf16.h>

#include <algorithm>
#include <string>

#include "cuda_check.cuh"
#include "expert_route.cuh"
#include "moe_mxfp4_impl.cuh"

namespace gptoss {
namespace moe {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kDepth = 4;                      // ring stages: 3 chunks in flight
constexpr int kCols = kStreamRouteRows;        // 16 columns = two n8 mma tiles
// Stage: [activations: kCols columns x 128 bytes, 16-byte piece q of column n at (q ^ (n & 7)) * 16]
//        [warp w: 512 code bytes (lane l at 16 l), 128 scale bytes (lane l's word at 4 l)].
constexpr int kStageCols = kCols * 128;                      // 2048
constexpr int kWarpBytes = kMxfp4ChunkBytes + 128;           // 640
constexpr int kStageBytes = kStageCols + kWarps * kWarpBytes;  // 7168
constexpr size_t kSmem = size_t(kDepth) * kStageBytes;       // 28 KB

// grid.x = groups of kWarps weight tiles, grid.y = route-tile slots (max_tiles).
template <bool kMlp1, bool kFast>
__global__ void __launch_bounds__(kThreads) bf16_mxfp4w_moe_stream_batch(StreamArgs a, RouteView rv) {
  extern __shared__ __align__(16) uint8_t smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, r = lane >> 2, c = lane & 3;
  if (kMlp1) pdl_launch_dependents();  // mlp2 may start; it waits (pdl_wait) before reading z
  // The route tables were written before mlp1 started, so mlp2 may read them before pdl_wait.
  const int rt = blockIdx.y;
  if (rt >= __ldg(rv.n_tiles)) return;  // block-uniform
  const int e = __ldg(rv.tile_expert + rt), row0 = __ldg(rv.tile_row0 + rt);
  const int ncols = min(kCols, __ldg(rv.expert_off + e + 1) - row0);
  const int tiles = a.R / kMxfp4TileRows;
  const int tile = int(blockIdx.x) * kWarps + warp;
  const bool has_tile = tile < tiles;  // warp-uniform; warps without one still copy and sync
  const int chunks = mxfp4_chunks(a.K / 32);
  const size_t gtile = size_t(e) * tiles + (has_tile ? tile : 0);
  const uint8_t* wsrc = a.wb + mxfp4_block_offset(gtile, chunks, 0) + lane * 16;
  const uint8_t* ssrc = a.ws + mxfp4_scale_offset(gtile, chunks, 0) + r * 4;
  const uint32_t sbase = tc::smem_addr(smem);
  const uint32_t my_w = kStageCols + warp * kWarpBytes + 16 * lane;
  const uint32_t my_s = kStageCols + warp * kWarpBytes + kMxfp4ChunkBytes + 4 * lane;

  // Activation copier: threads < 128 copy piece q = tid & 7 of column n = tid >> 3.
  const int cn = tid >> 3, cq = tid & 7;
  const bool copier = tid < kCols * 8 && cn < ncols;
  const int cslot = __ldg(rv.sorted_slot + row0 + (copier ? cn : 0));
  const bf16_t* csrc = a.act + size_t(kMlp1 ? cslot / a.k : cslot) * a.ld_act + 8 * cq;
  const uint32_t cdst = uint32_t(cn * 128 + ((cq ^ (cn & 7)) << 4));

  auto issue_ws = [&](int j) {
    if (j >= chunks || !has_tile) return;
    const uint32_t st = sbase + uint32_t((j % kDepth) * kStageBytes);
    tc::cp_async_16(st + my_w, wsrc + size_t(j) * kMxfp4ChunkBytes, true);
    tc::cp_async_4(st + my_s, ssrc + size_t(j) * kMxfp4ScaleChunkBytes);
  };
  auto issue_b = [&](int j) {
    if (j >= chunks || !copier) return;
    const bool v = 64 * j + 8 * cq < a.K;  // the pad half of a last half chunk: zero-filled
    tc::cp_async_16(sbase + uint32_t((j % kDepth) * kStageBytes) + cdst, v ? csrc + 64 * j : csrc, v);
  };

  // Prologue: weights of chunks 0 .. D-2 (one group), then (after mlp1, for mlp2) the activations
  // of each (one group each): before chunk j, groups up to the one with its activations must be
  // complete, i.e. at most D - 2 newer ones pending.
  for (int j = 0; j < kDepth - 1; ++j) issue_ws(j);
  tc::cp_async_commit();
  if (!kMlp1) pdl_wait();  // z comes from mlp1
  for (int j = 0; j < kDepth - 1; ++j) {
    issue_b(j);
    tc::cp_async_commit();
  }

  float acc[2][2][4] = {};  // [column tile nt][k half h][mma C]: four independent mma chains
  for (int j = 0; j < chunks; ++j) {
    tc::cp_async_wait<kDepth - 2>();
    __syncthreads();  // chunk j's stage is complete for every thread; stage (j - 1) % D is free
    issue_ws(j + kDepth - 1);
    issue_b(j + kDepth - 1);
    tc::cp_async_commit();
    if (!has_tile) continue;
    const uint32_t st = sbase + uint32_t((j % kDepth) * kStageBytes);
    const uint4 w = tc::lds_128(st + my_w);
    const uint32_t sw = tc::lds_32(st + my_s);
    uint32_t A[4][4];
    dequant_steps<kFast, 4>(w, sw, 0, A);
    const bool hi = 64 * j + 32 < a.K;  // the chunk's second k32 block exists
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const int n = 8 * nt + r;  // this lane's B column
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (h == 1 && !hi) break;
        const uint4 b = tc::lds_128(st + uint32_t(n * 128 + (((4 * h + c) ^ (n & 7)) << 4)));
        tc::mma_bf16_16816(acc[nt][h], A[2 * h][0], A[2 * h][1], A[2 * h][2], A[2 * h][3], tc::word(b, 0), tc::word(b, 1));
        tc::mma_bf16_16816(acc[nt][h], A[2 * h + 1][0], A[2 * h + 1][1], A[2 * h + 1][2], A[2 * h + 1][3], tc::word(b, 2),
                           tc::word(b, 3));
      }
    }
  }
  tc::cp_async_wait<0>();
  if (!has_tile) return;

  // acc[nt][h] = rows r, r + 8 of the tile x columns 8 nt + 2c, + 1 of the route tile.
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int cc = 0; cc < 2; ++cc) {
      const int col = 8 * nt + 2 * c + cc;
      if (col >= ncols) continue;
      const int s = __ldg(rv.sorted_slot + row0 + col);
      const float x0 = acc[nt][0][cc] + acc[nt][1][cc], x1 = acc[nt][0][2 + cc] + acc[nt][1][2 + cc];
      if (kMlp1) {
        // Rows r / r + 8 = checkpoint rows 2u (glu) / 2u + 1 (linear) of unit u.
        const int unit = tile * 8 + r;
        const float* b = a.bias + size_t(e) * a.R + 2 * unit;
        reinterpret_cast<__nv_bfloat16*>(a.z)[size_t(s) * a.I + unit] =
            __float2bfloat16_rn(swiglu(x0 + b[0], x1 + b[1], a.alpha, a.limit));
      } else {
        // Rows r / r + 8 = output rows o / o + 1.
        const int o = tile * 16 + 2 * r;
        const float* b = a.bias + size_t(e) * a.R + o;
        const float wgt = __ldcg(a.expert_w + s);
        *reinterpret_cast<float2*>(a.partial + size_t(s) * a.R + o) = make_float2(wgt * (x0 + b[0]), wgt * (x1 + b[1]));
      }
    }
}

template <bool kMlp1, bool kFast>
Status launch(const StreamArgs& a, const RouteView& rv, bool pdl, cudaStream_t stream) {
  auto kernel = bf16_mxfp4w_moe_stream_batch<kMlp1, kFast>;
  GPTOSS_RETURN_IF_ERROR(ensure_smem(reinterpret_cast<const void*>(kernel), kSmem, "bf16_mxfp4w_moe_stream_batch"));
  const dim3 grid(unsigned((a.R / kMxfp4TileRows + kWarps - 1) / kWarps), unsigned(rv.max_tiles));
  return launch_pdl(kernel, grid, dim3(kThreads), kSmem, pdl, stream,
                    kMlp1 ? "bf16_mxfp4w_moe_stream_batch<mlp1>" : "bf16_mxfp4w_moe_stream_batch<mlp2>", a, rv);
}

}  // namespace

// Floor (gpt-oss-20b, T = 64, all 32 experts active): 423 MB of weights -> 100 us on the H200 for
// both launches; activations from L2 ~0.5x that (one 16-column copy per block and chunk); issue
// ~150 warp instructions per chunk and warp, ~0.8M warp-chunks per layer -> ~120M instructions.
Status launch_stream_routed(const StreamArgs& a, const RouteView& rv, bool mlp1, bool pdl, cudaStream_t stream) {
  const int S = a.T * a.k;
  if (S < 1 || S > kStreamBatchMaxSlots || a.E < 1 || a.E > kRouteMaxExperts || rv.max_tiles < 0)
    return make_error(StatusCode::InvalidArgument, "moe stream batch: need 1 <= T * k <= " +
                                                       std::to_string(kStreamBatchMaxSlots) + " and 1 <= E <= 256");
  if (a.R % kMxfp4TileRows != 0 || a.K % 32 != 0 || a.K <= 0 || a.R <= 0 || a.ld_act % 8 != 0)
    return make_error(StatusCode::InvalidArgument, "moe stream batch: rows must be a multiple of 16, K of 32, ld_act of 8");
  if (rv.max_tiles == 0) return Status::Ok();
  if (mlp1) return a.fast_scales ? launch<true, true>(a, rv, false, stream) : launch<true, false>(a, rv, false, stream);
  return a.fast_scales ? launch<false, true>(a, rv, pdl, stream) : launch<false, false>(a, rv, pdl, stream);
}

}  // namespace moe
}  // namespace gptoss
