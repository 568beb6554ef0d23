// Streaming MoE GEMV for decode (T * k <= kStreamMaxSlots = 32 slots): one warp per (active expert
// rank, 16-row weight tile) over the whole K, weights streamed through a register ring, no shared
// memory and no block-wide synchronisation. The alternative to moe_mxfp4_gemv.cu's decode shape
// (GPT_OSS_C_MOE_DECODE=stream selects it, see moe_mxfp4.cu).
//
// Why (bench/NOTES.md, H200 runs 7-8): the shared-memory GEMV waits for each block's whole weight
// slab and splits K over 8 warps, so prologue, cross-warp reduction and epilogue cost as much as the
// dequantisation, and its time fell only with more resident warps. Here every warp is independent
// and long-lived: all (rank, tile) items of a 20b layer fit in one wave (mlp1: 4 x 360 warps, ~11
// per SM), each keeps kStreamDepth 16-byte loads per lane in flight and overlaps them with the
// dequantisation and mma of earlier chunks.
//
// Math and layout as moe_mxfp4_gemv.cu (ops.h MoEParams; weight layout in mxfp4_layout.cuh):
//   mlp1: z[i, u] = swiglu(W1[e] x[t] + b1[e])[u];  mlp2: partial[i, :] = w[i] (W2[e] z[i] + b2[e]);
//   y[t, :] += sum_j partial[t*k + j, :] (j in slot order) by the last warp to finish each output tile.
// Per warp: lane i reads slot i's expert (S <= 32), the warp finds the rank-th smallest distinct
// expert e and the mask of its slots (slot order = lane order); B columns are the slots (8 per pass;
// a second pass re-streams the tile, which only happens when one expert has > 8 slots).
// mlp2 is launched with programmatic dependent launch: it puts its first weight chunks in flight,
// then waits for mlp1 (pdl_wait) before reading z and the counters mlp1 zeroed.
#include <cuda_bf16.h>

#include <algorithm>
#include <string>

#include "cuda_check.cuh"
#include "expert_route.cuh"
#include "moe_mxfp4_impl.cuh"

namespace gptoss {
namespace moe {
namespace {

constexpr int kStreamWarps = 4;  // independent warps per block
constexpr int kStreamDepth = 8;  // 64-wide k chunks in flight per warp (8 x 512 bytes)

struct WarpExpert {
  int e = -1;          // the expert, or -1 when fewer than rank + 1 experts are active
  unsigned slots = 0;  // its slots (bit i = slot i)
  int n = 0;           // popcount(slots)
  int n_active = 0;    // distinct active experts of the step
};

// Lane i holds slot i (i < S <= 32). The expert of rank `rank` among the step's distinct experts in
// ascending id order (the same order moe_mxfp4_gemv.cu's blockIdx.y ranks use). Warp-uniform.
__device__ WarpExpert warp_expert(const int32_t* expert_idx, int S, int E, int rank, int lane) {
  const int ei = lane < S ? __ldcg(expert_idx + lane) : -1;
  const bool valid = lane < S && unsigned(ei) < unsigned(E);
  // Lanes with equal valid ids are peers; invalid lanes get distinct negative keys.
  const unsigned peers = __match_any_sync(0xffffffffu, valid ? ei : -1 - lane);
  const bool first = valid && __ffs(int(peers)) - 1 == lane;
  int below = 0;  // distinct ids smaller than mine
  for (int j = 0; j < 32; ++j) {
    const int v = __shfl_sync(0xffffffffu, ei, j);
    const int fj = __shfl_sync(0xffffffffu, int(first), j);
    below += fj && v < ei;
  }
  WarpExpert w;
  w.n_active = __popc(__ballot_sync(0xffffffffu, first));
  const unsigned hit = __ballot_sync(0xffffffffu, first && below == rank);
  if (hit == 0u) return w;
  w.e = __shfl_sync(0xffffffffu, ei, __ffs(int(hit)) - 1);
  w.slots = __ballot_sync(0xffffffffu, valid && ei == w.e);
  w.n = __popc(w.slots);
  return w;
}

// Index of the col-th set bit of m (col < popcount(m)).
__device__ __forceinline__ int nth_set_bit(unsigned m, int col) {
  for (int q = 0; q < col; ++q) m &= m - 1u;
  return __ffs(int(m)) - 1;
}

template <bool kMlp1>
__global__ void __launch_bounds__(kStreamWarps * 32) bf16_mxfp4w_moe_stream(GemvArgs a) {
  constexpr int D = kStreamDepth;
  const int lane = threadIdx.x & 31, r = lane >> 2, c = lane & 3;
  const int tiles = a.R / kMxfp4TileRows;
  const int item = int(blockIdx.x) * kStreamWarps + int(threadIdx.x >> 5);
  const int S = a.T * a.k;

  if (kMlp1) {
    // Zero mlp2's arrival counters (mlp2 touches them only after pdl_wait, i.e. after this grid
    // completed), then let mlp2 launch: it can only start once every block of this grid runs.
    if (blockIdx.x == 0)
      for (int i = int(threadIdx.x); i < a.n_counters; i += kStreamWarps * 32) a.counters[i] = 0;
    pdl_launch_dependents();
  }
  // expert_idx was written before mlp1 started (the router), so mlp2 may read it before pdl_wait.
  const WarpExpert we = warp_expert(a.expert_idx, S, a.E, item / tiles, lane);
  if (we.e < 0) return;  // warp-uniform; no block-wide barrier follows
  const int tile = item % tiles;
  const int chunks = mxfp4_chunks(a.K / 32);
  const size_t gtile = size_t(we.e) * tiles + tile;
  const uint8_t* wsrc = a.wb + mxfp4_block_offset(gtile, chunks, 0) + lane * 16;
  const uint8_t* ssrc = a.ws + mxfp4_scale_offset(gtile, chunks, 0) + r * 4;

  uint4 wbuf[D];
  uint32_t sbuf[D];
  auto fetch = [&](int d, int j) {
    wbuf[d] = tc::ldg_stream_128(wsrc + size_t(j) * kMxfp4ChunkBytes);
    sbuf[d] = tc::ldg_stream_32(ssrc + size_t(j) * kMxfp4ScaleChunkBytes);
  };
  auto prefetch = [&] {
#pragma unroll
    for (int d = 0; d < D; ++d)
      if (d < chunks) fetch(d, d);
  };
  prefetch();
  if (!kMlp1) pdl_wait();  // z and the counters come from mlp1

  for (int p0 = 0; p0 < we.n; p0 += 8) {
    if (p0 > 0) prefetch();
    // B column r of this pass is slot nth(p0 + r); columns past n repeat the pass's first slot
    // (finite data, products land in columns that are never stored).
    const int col = p0 + r < we.n ? p0 + r : p0;
    const int slot = nth_set_bit(we.slots, col);
    const bf16_t* brow = a.act + size_t(kMlp1 ? slot / a.k : slot) * a.ld_act + 8 * c;
    auto load_b = [&](int j, uint4 (&bv)[2]) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        int k = 64 * j + 32 * h;
        if (k >= a.K) k = 0;  // the pad half of a last half chunk: not used
        bv[h] = kMlp1 ? tc::ldg_128(brow + k) : ldg_cg_128(brow + k);  // z: written by mlp1, read from L2
      }
    };
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    uint4 bcur[2], bnext[2];
    load_b(0, bcur);
    for (int j0 = 0; j0 < chunks; j0 += D) {
#pragma unroll
      for (int d = 0; d < D; ++d) {
        const int j = j0 + d;
        if (j >= chunks) break;  // warp-uniform
        if (j + 1 < chunks) load_b(j + 1, bnext);
        uint32_t A[4][4];
        dequant_chunk(wbuf[d], sbuf[d], A);
        if (j + D < chunks) fetch(d, j + D);  // refill the ring slot just consumed
        const bool hi = 64 * j + 32 < a.K;    // the chunk's second k32 block exists
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          if (s >= 2 && !hi) break;
          tc::mma_bf16_16816(acc, A[s][0], A[s][1], A[s][2], A[s][3], tc::word(bcur[s >> 1], 2 * (s & 1)),
                             tc::word(bcur[s >> 1], 2 * (s & 1) + 1));
        }
        bcur[0] = bnext[0];
        bcur[1] = bnext[1];
      }
    }
    // acc = rows r, r + 8 of the tile x columns 2c, 2c + 1 of the pass.
#pragma unroll
    for (int cc = 0; cc < 2; ++cc) {
      const int pc = p0 + 2 * c + cc;
      if (pc >= we.n) continue;
      const int s = nth_set_bit(we.slots, pc);
      if (kMlp1) {
        // Rows r / r + 8 = checkpoint rows 2u (glu) / 2u + 1 (linear) of unit u.
        const int unit = tile * 8 + r;
        const float* b = a.bias + size_t(we.e) * a.R + 2 * unit;
        const float zv = swiglu(acc[cc] + b[0], acc[2 + cc] + b[1], a.alpha, a.limit);
        reinterpret_cast<__nv_bfloat16*>(a.z)[size_t(s) * a.I + unit] = __float2bfloat16_rn(zv);
      } else {
        // Rows r / r + 8 = output rows o / o + 1.
        const int o = tile * 16 + 2 * r;
        const float* b = a.bias + size_t(we.e) * a.R + o;
        const float w = __ldcg(a.expert_w + s);
        *reinterpret_cast<float2*>(a.partial + size_t(s) * a.R + o) =
            make_float2(w * (acc[cc] + b[0]), w * (acc[2 + cc] + b[1]));
      }
    }
  }

  if (!kMlp1) {
    // The last of the tile's n_active warps adds every token's k partials (slot order) onto y.
    __threadfence();
    __syncwarp();
    int last = 0;
    if (lane == 0) last = atomicAdd(a.counters + tile, 1) == we.n_active - 1;
    if (!__shfl_sync(0xffffffffu, last, 0)) return;
    __threadfence();
    for (int q = lane; q < a.T * kMxfp4TileRows; q += 32) {
      const int t = q / kMxfp4TileRows, row = tile * kMxfp4TileRows + q % kMxfp4TileRows;
      float sum = 0.0f;
      for (int j = 0; j < a.k; ++j) {
        const int s = t * a.k + j;
        if (unsigned(__ldcg(a.expert_idx + s)) < unsigned(a.E)) sum += __ldcg(a.partial + size_t(s) * a.R + row);
      }
      a.y[size_t(t) * a.ldy + row] += sum;
    }
  }
}

}  // namespace

// Floors (gpt-oss-20b, T = 1, H200 ~4.2 TB/s): 52.9 MB of weights per layer -> 12.6 us for both
// launches; the dequantisation (~2 instructions per weight) spread over all SMs is ~6 us of issue.
Status launch_stream(const GemvArgs& a, bool mlp1, bool pdl, cudaStream_t stream) {
  const int S = a.T * a.k;
  if (S < 1 || S > kStreamMaxSlots || a.E < 1 || a.E > kRouteMaxExperts)
    return make_error(StatusCode::InvalidArgument,
                      "moe stream: need 1 <= T * k <= " + std::to_string(kStreamMaxSlots) + " and 1 <= E <= 256");
  if (a.R % kMxfp4TileRows != 0 || a.K % 32 != 0 || a.K <= 0 || a.R <= 0 || a.ld_act % 8 != 0)
    return make_error(StatusCode::InvalidArgument, "moe stream: rows must be a multiple of 16, K of 32, ld_act of 8");
  if (!mlp1 && a.n_counters < a.R / kMxfp4TileRows)
    return make_error(StatusCode::InvalidArgument, "moe stream: one arrival counter per output tile needed");
  const int items = std::min(a.E, S) * (a.R / kMxfp4TileRows);
  const dim3 grid(unsigned((items + kStreamWarps - 1) / kStreamWarps));
  if (mlp1)
    return launch_pdl(bf16_mxfp4w_moe_stream<true>, grid, dim3(kStreamWarps * 32), 0, false, stream,
                      "bf16_mxfp4w_moe_stream<mlp1>", a);
  return launch_pdl(bf16_mxfp4w_moe_stream<false>, grid, dim3(kStreamWarps * 32), 0, pdl, stream,
                    "bf16_mxfp4w_moe_stream<mlp2>", a);
}

}  // namespace moe
}  // namespace gptoss
