// Grouped GEMV for the MXFP4 MoE at decode sizes (T * k <= kGemvMaxSlots slots): each block reads
// its weight rows of ONE active expert once, for all of that expert's tokens; no routing pass.
//
// Math (ops.h MoEParams), slot i = t * k + j of token t and expert e = expert_idx[i]:
//   mlp1: z[i, u] = swiglu(W1[e] x[t] + b1[e])[u]   (rows 2u glu / 2u + 1 linear; z rounded to bf16)
//   mlp2: partial[i, :] = w[i] * (W2[e] z[i] + b2[e]);  y[t, :] += sum_j partial[t*k + j, :] (j in order)
//
// Grid: x = row group (RT = TPW * TG 16-row tiles of the expert, tiles of moe_mxfp4.cuh's layout),
// y = rank of the block's expert among the step's active experts (min(E, T*k) blocks; the surplus
// exits at once). Prologue: expert_idx -> shared bitmask of active experts -> this block's expert e
// (the blockIdx.y-th set bit) -> its slots in slot order (ballots), all in shared memory.
// Weights: every lane copies its own 16 bytes of each (tile, chunk) of its warp's share into shared
// memory with cp.async (the kernel's whole weight slab, ~47-94 KB per block, is in flight at once:
// no register staging, no per-chunk load latency), in two commit groups so compute starts on the
// first half. Warp w = tg + TG * ks owns tiles tg*TPW .. +TPW-1 and the ks-th of KS contiguous
// k-chunk ranges. Per chunk: A = the dequantised, scaled tile (dequant_steps, once per pass), B =
// up to 8 * NT token columns of x (mlp1, gathered by token) or z (mlp2) read from global memory
// (L1 / L2 resident; one chunk prefetched ahead), mma.sync m16n8k16 with f32 accumulation. The KS
// partial tiles are summed through shared memory in ks order (deterministic). More than 8 * NT
// tokens: further passes over the weights already in shared memory.
// mlp2 is launched with programmatic dependent launch when available: its blocks start while mlp1
// still runs (once every mlp1 block has started), put their whole weight slab in flight, and
// consume z chunk by chunk as mlp1's row groups publish it: each mlp1 block resets its ready flag
// before it lets the dependent grid start and sets it (release) once its z rows are written; an
// mlp2 warp acquires the flags of a chunk's units before reading them from L2. Without PDL mlp2
// starts after mlp1 and finds every flag set. The combine needs no extra launch: each block
// stores its weighted partial rows, and the last of the row group's blocks to arrive (atomic
// counter, zeroed by mlp1; touched only after griddepcontrol.wait) adds the k partials of every
// token onto y in slot order -- fixed arithmetic whichever block does it. No block ever waits for
// a block of its own grid, and mlp1 waits for nothing, so the hand-off cannot deadlock.
#include <cuda_bf16.h>

#include <algorithm>
#include <string>

#include "cuda_check.cuh"
#include "expert_route.cuh"
#include "moe_mxfp4_impl.cuh"

namespace gptoss {
namespace moe {
namespace {

// TPW tiles per warp, TG tile groups and KS k-splits per block (TG * KS warps), NT n8 token tiles
// per pass, MINB blocks per SM to aim for (register budget).
template <int TPW, int TG, int KS, int NT, int MINB>
struct GemvCfg {
  static constexpr int kTPW = TPW, kTG = TG, kKS = KS, kNT = NT, kMinBlocks = MINB;
  static constexpr int kRT = TPW * TG;  // row tiles per block
  static constexpr int kWarps = TG * KS;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kCols = 8 * NT;  // token columns per pass
};
// Decode: 32 rows per block, x shared by both tiles of a warp, 8 warps splitting k. The build option
// GPT_OSS_C_MOE_GEMV_DECODE (CMake; -DGPTOSS_MOE_GEMV_DECODE=... for the kernel bench) overrides the
// shape, for tuning runs that compare shapes on one card: five digits TPW TG KS NT MINB (a number,
// because nvcc splits -D values at commas).
#ifndef GPTOSS_MOE_GEMV_DECODE
#define GPTOSS_MOE_GEMV_DECODE 21813
#endif
constexpr int kDecodeShape = GPTOSS_MOE_GEMV_DECODE;
static_assert(kDecodeShape >= 11111 && kDecodeShape <= 99999, "GPTOSS_MOE_GEMV_DECODE: five digits TPW TG KS NT MINB");
using DecodeCfg = GemvCfg<kDecodeShape / 10000, kDecodeShape / 1000 % 10, kDecodeShape / 100 % 10, kDecodeShape / 10 % 10,
                          kDecodeShape % 10>;
// Batched decode: 64 rows per block (x read once per 64 weight rows), 16 token columns per pass.
using BatchCfg = GemvCfg<1, 4, 2, 2, 2>;

// Dynamic shared memory (byte offsets): codes [RT][chunks][512], scales [RT][chunks][32],
// reduction [warps][TPW][NT][4][32] f32, expert_idx copy [S], the expert's slots [S].
struct GemvSmem {
  size_t codes, scales, red, idx, list, total;
};

template <class C>
GPTOSS_HD GemvSmem gemv_smem(int chunks, int S) {
  GemvSmem m;
  m.codes = 0;
  m.scales = m.codes + size_t(C::kRT) * chunks * kMxfp4ChunkBytes;
  m.red = m.scales + size_t(C::kRT) * chunks * kMxfp4ScaleChunkBytes;
  m.idx = m.red + size_t(C::kWarps) * C::kTPW * C::kNT * 4 * 32 * sizeof(float);
  m.list = m.idx + size_t(S) * sizeof(int32_t);
  m.total = m.list + size_t(S) * sizeof(int32_t);
  return m;
}

// ---------------------------------------------------------------------------------------------
// kernels
// ---------------------------------------------------------------------------------------------
template <class C, bool kMlp1, bool kFast>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) bf16_mxfp4w_moe_gemv(GemvArgs a) {
  constexpr int TPW = C::kTPW, NT = C::kNT, RT = C::kRT;
  static_assert(kMxfp4TileRows == 16 && kMxfp4ChunkK == 64, "one mma m16 tile x 4 k16 steps per chunk");
  static_assert(kMxfp4ChunkBytes == 32 * 16 && kMxfp4ScaleChunkBytes == 32, "16 code bytes per lane, 4 scale bytes per lane row");
  static_assert(kRouteMaxExperts == 256, "the active-expert bitmask is 8 words");
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ uint32_t s_mask[kRouteMaxExperts / 32];
  __shared__ int s_e, s_active, s_n, s_last;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, r = lane >> 2, c = lane & 3;
  const int S = a.T * a.k;
  const int chunks = mxfp4_chunks(a.K / 32);
  const GemvSmem L = gemv_smem<C>(chunks, S);
  int32_t* s_idx = reinterpret_cast<int32_t*>(smem + L.idx);
  int32_t* s_list = reinterpret_cast<int32_t*>(smem + L.list);
  float* s_red = reinterpret_cast<float*>(smem + L.red);
  const uint32_t codes_s = tc::smem_addr(smem + L.codes), scales_s = tc::smem_addr(smem + L.scales);

  if (kMlp1) {
    // Before the dependent mlp2 grid may start (it starts once every block of this grid has
    // passed pdl_launch_dependents): reset this block's ready flag, and block (0, 0) the combine
    // counters; the fence makes both visible to it.
    if (blockIdx.x == 0 && blockIdx.y == 0)
      for (int i = tid; i < a.n_counters; i += C::kThreads) a.counters[i] = 0;
    if (tid == 0) a.ready[blockIdx.y * a.ready_stride + blockIdx.x] = 0;
    __threadfence();
    __syncthreads();
    pdl_launch_dependents();
  }

  // This block's expert: the blockIdx.y-th set bit of the step's active-expert mask.
  if (tid < kRouteMaxExperts / 32) s_mask[tid] = 0u;
  __syncthreads();
  for (int i = tid; i < S; i += C::kThreads) {
    const int e = __ldcg(a.expert_idx + i);
    s_idx[i] = e;
    if (unsigned(e) < unsigned(a.E)) atomicOr(&s_mask[e >> 5], 1u << (e & 31));
  }
  __syncthreads();
  if (warp == 0) {
    const uint32_t m = lane < kRouteMaxExperts / 32 ? s_mask[lane] : 0u;
    const int cnt = __popc(m);
    int incl = cnt;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    const int rank = int(blockIdx.y);
    if (rank >= incl - cnt && rank < incl) {
      uint32_t mm = m;
      for (int q = rank - (incl - cnt); q > 0; --q) mm &= mm - 1u;  // drop the lower set bits
      s_e = lane * 32 + __ffs(int(mm)) - 1;
    }
    if (lane == 31) s_active = incl;
  }
  __syncthreads();
  const int n_active = s_active;
  if (int(blockIdx.y) >= n_active) return;
  const int e = s_e;

  // This warp's tiles and k chunks.
  const int tiles = a.R / kMxfp4TileRows;
  const int tg = warp % C::kTG, ks = warp / C::kTG;
  const int lt0 = tg * TPW;                      // first local tile (of RT)
  const int tile0 = int(blockIdx.x) * RT + lt0;  // its index within the expert
  bool vt[TPW];
#pragma unroll
  for (int i = 0; i < TPW; ++i) vt[i] = tile0 + i < tiles;
  const int jb = ks * chunks / C::kKS, je = (ks + 1) * chunks / C::kKS, jm = jb + (je - jb + 1) / 2;

  // cp.async of chunks [j0, j1) of the warp's tiles (each lane its own 16 bytes per chunk), plus
  // the scales of the warp's whole range (16-byte pieces spread over the lanes), as one group.
  auto issue = [&](int j0, int j1, bool with_scales) {
#pragma unroll
    for (int i = 0; i < TPW; ++i) {
      if (!vt[i]) continue;
      const size_t gtile = size_t(e) * tiles + tile0 + i;
      const uint8_t* src = a.wb + mxfp4_block_offset(gtile, chunks, 0) + lane * 16;
      const uint32_t dst = codes_s + uint32_t((lt0 + i) * chunks) * kMxfp4ChunkBytes + lane * 16;
      for (int j = j0; j < j1; ++j) tc::cp_async_16(dst + j * kMxfp4ChunkBytes, src + size_t(j) * kMxfp4ChunkBytes, true);
      if (with_scales) {
        const uint8_t* ssrc = a.ws + mxfp4_scale_offset(gtile, chunks, jb);
        const uint32_t sdst = scales_s + uint32_t((lt0 + i) * chunks + jb) * kMxfp4ScaleChunkBytes;
        for (int p = lane; p < 2 * (je - jb); p += 32) tc::cp_async_16(sdst + p * 16, ssrc + p * 16, true);
      }
    }
    tc::cp_async_commit();
  };
  issue(jb, jm, true);
  issue(jm, je, false);

  // The expert's slots, in slot order.
  if (warp == 0) {
    int n = 0;
    for (int base = 0; base < S; base += 32) {
      const int i = base + lane;
      const bool hit = i < S && s_idx[i] == e;
      const unsigned m = __ballot_sync(0xffffffffu, hit);
      if (hit) s_list[n + __popc(m & ((1u << lane) - 1u))] = i;
      n += __popc(m);
    }
    if (lane == 0) s_n = n;
  }
  __syncthreads();
  const int n = s_n;

  const int act_div = kMlp1 ? a.k : 1;
  const bf16_t* xrow[NT];
  auto load_x = [&](int j, uint4 (&xv)[NT][2]) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        int k = 64 * j + 32 * h;
        if (k >= a.K) k = 0;  // the pad half of a last half chunk: skipped below
        xv[nt][h] = kMlp1 ? tc::ldg_128(xrow[nt] + k) : ldg_cg_128(xrow[nt] + k);
      }
  };
  // mlp2, first pass: z units [64j, 64j + 64) come from mlp1 row groups of this expert rank that may
  // still be running; lane 0 waits for their ready flags (acquire), then the warp reads z from L2.
  auto wait_z = [&](int j) {
    if (kMlp1) return;
    if (lane == 0) {
      const int u1 = min(64 * j + 64, a.K) - 1;
      const int32_t* f = a.ready + blockIdx.y * a.ready_stride;
      for (int g = 64 * j / a.z_group_units; g <= u1 / a.z_group_units; ++g)
        while (ld_acquire_gpu(f + g) == 0) __nanosleep(100);
    }
    __syncwarp();
  };
  float acc[TPW][NT][4];
  auto compute = [&](int j, const uint4 (&xv)[NT][2]) {
    const bool hi = 64 * j + 32 < a.K;  // the chunk's second k32 block exists
#pragma unroll
    for (int i = 0; i < TPW; ++i) {
      if (!vt[i]) continue;
      const uint32_t off = uint32_t((lt0 + i) * chunks + j);
      const uint4 w = tc::lds_128(codes_s + off * kMxfp4ChunkBytes + lane * 16);
      const uint32_t sw = tc::lds_32(scales_s + off * kMxfp4ScaleChunkBytes + r * 4);
      uint32_t A[4][4];
      dequant_steps<kFast, 4>(w, sw, 0, A);
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        if (s >= 2 && !hi) break;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
          tc::mma_bf16_16816(acc[i][nt], A[s][0], A[s][1], A[s][2], A[s][3], tc::word(xv[nt][s >> 1], 2 * (s & 1)),
                             tc::word(xv[nt][s >> 1], 2 * (s & 1) + 1));
      }
    }
  };

  for (int p0 = 0; p0 < n; p0 += C::kCols) {
    // B column r of n8 tile nt is the pass's column 8 nt + r; columns past n read the first
    // slot's row (finite data whose products land in columns that are never stored).
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int col = p0 + nt * 8 + r;
      const int slot = s_list[col < n ? col : 0];
      xrow[nt] = a.act + size_t(slot / act_div) * a.ld_act + 8 * c;
    }
#pragma unroll
    for (int i = 0; i < TPW; ++i)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) acc[i][nt][0] = acc[i][nt][1] = acc[i][nt][2] = acc[i][nt][3] = 0.0f;

    const bool first = p0 == 0;
    if (first) {
      tc::cp_async_wait<1>();  // group 0: the first half of the codes and all of the warp's scales
      __syncwarp();            // scales were copied by other lanes
    }
    uint4 xa[NT][2], xb[NT][2];
    if (jb < je) {
      if (first) wait_z(jb);
      load_x(jb, xa);
    }
    for (int j = jb; j < je; j += 2) {
      if (j + 1 < je) {
        if (first) wait_z(j + 1);
        load_x(j + 1, xb);
      }
      if (first && j == jm) {
        tc::cp_async_wait<0>();
        __syncwarp();
      }
      compute(j, xa);
      if (j + 1 >= je) break;
      if (j + 2 < je) {
        if (first) wait_z(j + 2);
        load_x(j + 2, xa);
      }
      if (first && j + 1 == jm) {
        tc::cp_async_wait<0>();
        __syncwarp();
      }
      compute(j + 1, xb);
    }

    // Sum the KS partial tiles in ks order; thread f finishes fragment (local tile, nt, lane).
#pragma unroll
    for (int i = 0; i < TPW; ++i)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int v = 0; v < 4; ++v) s_red[(((warp * TPW + i) * NT + nt) * 4 + v) * 32 + lane] = acc[i][nt][v];
    __syncthreads();
    for (int f = tid; f < RT * NT * 32; f += C::kThreads) {
      const int l = f & 31, nt = (f >> 5) % NT, lt = (f >> 5) / NT;
      const int tile = int(blockIdx.x) * RT + lt;
      if (tile >= tiles) continue;
      const int ftg = lt / TPW, fi = lt % TPW;
      float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int kk = 0; kk < C::kKS; ++kk) {
        const int w = ftg + C::kTG * kk;
#pragma unroll
        for (int q = 0; q < 4; ++q) v[q] += s_red[(((w * TPW + fi) * NT + nt) * 4 + q) * 32 + l];
      }
      // v = rows fr, fr + 8 (mma) x columns 2 fc, 2 fc + 1 of n8 tile nt.
      const int fr = l >> 2, fc = l & 3;
#pragma unroll
      for (int cc = 0; cc < 2; ++cc) {
        const int col = p0 + nt * 8 + 2 * fc + cc;
        if (col >= n) continue;
        const int slot = s_list[col];
        if (kMlp1) {
          // mma rows fr / fr + 8 = checkpoint rows 2u (glu) / 2u + 1 (linear) of unit u.
          const int unit = tile * 8 + fr;
          const float* b = a.bias + size_t(e) * a.R + 2 * unit;
          const float zv = swiglu(v[cc] + b[0], v[2 + cc] + b[1], a.alpha, a.limit);
          reinterpret_cast<__nv_bfloat16*>(a.z)[size_t(slot) * a.I + unit] = __float2bfloat16_rn(zv);
        } else {
          // mma rows fr / fr + 8 = output rows o / o + 1.
          const int o = tile * 16 + 2 * fr;
          const float* b = a.bias + size_t(e) * a.R + o;
          const float w = __ldcg(a.expert_w + slot);
          *reinterpret_cast<float2*>(a.partial + size_t(slot) * a.R + o) =
              make_float2(w * (v[cc] + b[0]), w * (v[2 + cc] + b[1]));
        }
      }
    }
    __syncthreads();  // s_red is rewritten by the next pass
  }

  if (kMlp1) {
    // Publish this row group's z: every thread's stores, then the flag (release).
    __threadfence();
    __syncthreads();
    if (tid == 0) st_release_gpu(a.ready + blockIdx.y * a.ready_stride + blockIdx.x, 1);
  } else {
    // Last arrival of this row group adds sum_j partial[t*k + j] (slot order) onto y, which (with
    // the counters) may only be touched once mlp1 has completed.
    pdl_wait();
    __threadfence();
    __syncthreads();
    if (tid == 0) s_last = atomicAdd(a.counters + blockIdx.x, 1) == n_active - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const int row0 = int(blockIdx.x) * RT * kMxfp4TileRows;
    const int nrows = min(RT * kMxfp4TileRows, a.R - row0);
    for (int q = tid; q < a.T * nrows; q += C::kThreads) {
      const int t = q / nrows, row = row0 + q % nrows;
      float sum = 0.0f;
      for (int j = 0; j < a.k; ++j) {
        const int slot = t * a.k + j;
        if (unsigned(s_idx[slot]) < unsigned(a.E)) sum += __ldcg(a.partial + size_t(slot) * a.R + row);
      }
      a.y[size_t(t) * a.ldy + row] += sum;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// launchers
// ---------------------------------------------------------------------------------------------
template <class C>
int row_groups(int R) {
  return (R / kMxfp4TileRows + C::kRT - 1) / C::kRT;
}

template <class C, bool kMlp1>
Status launch(const GemvArgs& a, bool pdl, cudaStream_t stream) {
  const int S = a.T * a.k;
  const size_t smem = gemv_smem<C>(mxfp4_chunks(a.K / 32), S).total;
  auto kernel = a.fast_scales ? bf16_mxfp4w_moe_gemv<C, kMlp1, true> : bf16_mxfp4w_moe_gemv<C, kMlp1, false>;
  const char* name = kMlp1 ? "bf16_mxfp4w_moe_gemv<mlp1>" : "bf16_mxfp4w_moe_gemv<mlp2>";
  GPTOSS_RETURN_IF_ERROR(ensure_smem(reinterpret_cast<const void*>(kernel), smem, name));
  return launch_pdl(kernel, dim3(unsigned(row_groups<C>(a.R)), unsigned(std::min(a.E, S))), dim3(C::kThreads), smem, pdl,
                    stream, name, a);
}

}  // namespace

int gemv_row_groups(int R, GemvShape shape) {
  return shape == GemvShape::kDecode ? row_groups<DecodeCfg>(R) : row_groups<BatchCfg>(R);
}

int gemv_group_rows(GemvShape shape) {
  return (shape == GemvShape::kDecode ? DecodeCfg::kRT : BatchCfg::kRT) * kMxfp4TileRows;
}

// Floors (gpt-oss-20b, H = I = 2880, k = 4; H200 4.25 TB/s, H100 2.9 TB/s copy):
//   T = 1: 4 experts x (5760 + 2880) rows x 1530 bytes = 52.9 MB -> 12.4 us (H200) / 18.2 us (H100)
//     per layer for both launches; the dequantisation (~2.5 instructions per weight, spread over
//     all SMs) must hide under that, hence the deep cp.async slabs and 24 warps per SM.
//   T = 64 (all 32 experts active): 423 MB -> 100 us (H200) / 146 us (H100).
Status launch_gemv(const GemvArgs& a, bool mlp1, GemvShape shape, bool pdl, cudaStream_t stream) {
  if (a.T < 1 || a.k < 1 || a.T * a.k > kGemvMaxSlots || a.E < 1 || a.E > kRouteMaxExperts)
    return make_error(StatusCode::InvalidArgument, "moe gemv: need 1 <= T * k <= " + std::to_string(kGemvMaxSlots) +
                                                       " and 1 <= E <= 256");
  if (a.R % kMxfp4TileRows != 0 || a.K % 32 != 0 || a.K <= 0 || a.R <= 0 || a.ld_act % 8 != 0)
    return make_error(StatusCode::InvalidArgument, "moe gemv: rows must be a multiple of 16, K of 32, ld_act of 8");
  if (shape == GemvShape::kDecode)
    return mlp1 ? launch<DecodeCfg, true>(a, pdl, stream) : launch<DecodeCfg, false>(a, pdl, stream);
  return mlp1 ? launch<BatchCfg, true>(a, pdl, stream) : launch<BatchCfg, false>(a, pdl, stream);
}

}  // namespace moe
}  // namespace gptoss
