// MXFP4 mixture of experts on tensor cores (ops.h MoEParams; weight layout in moe_mxfp4.cuh).
//
// Math per slot (token t, expert e, weight w):
//   u = W1[e] x[t] + b1[e] (2I, even rows glu, odd rows linear);  a = min(u_glu, limit),
//   l = clamp(u_lin, -limit, limit);  z = a * sigmoid(alpha a) * (l + 1)   (rounded to bf16)
//   partial[slot] = w * (W2[e] z + b2[e]);  y[t] += sum_j partial[t*k + j]  (expert_route.cu)
// Both matmuls are mma.sync m16n8k16 with A = 16 weight rows (dequantised in registers from one
// 16-byte load per lane per 64-wide chunk, never expanded in memory) and B = 8 tokens. The mma
// accumulator gives each lane rows r and r + 8 of a tile, which the layout makes the glu and
// linear rows of one unit (mlp1) or two adjacent output rows (mlp2): both epilogues are local.
//
// Decode (T * k <= 32 slots): no routing pass. bf16_mxfp4w_moe_gemv<mlp1, per slot>: block = one
// 16-row tile x one slot, 4 warps splitting the k chunks, partials reduced through shared memory in
// a fixed order; then bf16_mxfp4w_moe_down_combine: block = one 16-row tile of H x one token, its
// k slots' mlp2 tiles on 8 warps, and the weighted sum over slots (in slot order) added to y --
// two launches per MoE. Weights are read once per slot (4 chunks in flight per warp; slots that
// share an expert are adjacent blocks, so the repeats hit L2); tokens are read straight from
// global memory. The E8M0 scale is applied in f32 to each k32 partial sum (one 2-step mma per
// scale block), which is exact for every scale byte.
// Grouped decode (more slots, <= 4 rows per expert on average): expert_route tiles of <= 8 sorted
// rows, the same kernel per (16-row tile, token tile) for mlp1 and mlp2, then the combine.
//
// bf16_mxfp4w_moe_gemm (prefill, many tokens per expert): block = 128 weight rows (8 warps x 2
// row tiles, 2 token halves) x BM sorted rows of one expert. The token tile (rows gathered by
// token index for mlp1, zero-filled past the expert's rows and past K) and the packed weight
// tiles go through a 4-stage cp.async pipeline in shared memory; each warp dequantises its two
// row tiles from there. Here the scale multiplies the bf16 A operand (exact: fp4 * 2^(s-127) is a
// bf16).
#include "moe_mxfp4.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <string>

#include "cuda_check.cuh"
#include "expert_route.cuh"
#include "mma_sm80.cuh"
#include "mxfp4_layout.cuh"

namespace gptoss {
namespace {

struct MoeGemmArgs {
  const bf16_t* act;  // mlp1: x [T][ld_act] gathered by token; mlp2: z [T*k][I] in sorted order
  int ld_act;
  int gather_k;       // mlp1: k (B row = x[sorted_slot / k]); mlp2: 0 (B row = sorted row)
  const int32_t* sorted_slot;
  const int32_t* expert_off;
  const int32_t* tile_expert;
  const int32_t* tile_row0;
  const int32_t* n_tiles;
  const uint8_t* wb;  // packed codes (device layout)
  const uint8_t* ws;  // packed scales (device layout)
  const float* bias;  // [E][R]
  int R, K, chunks;   // rows, reduction length, 64-wide chunks
  bf16_t* z;          // mlp1 output [T*k][I] (sorted order)
  int I;
  const float* expert_w;  // [T*k]
  float* partial;         // mlp2 output [T*k][R] (slot order)
  float alpha, limit;
  const int32_t* expert_idx;  // [T*k] (per-slot decode reads it directly)
  int E, k;
  float* y;                   // residual [T][ldy] (fused mlp2 + combine)
  int ldy;
  uint32_t zero;              // always 0; the compiler cannot know it (see decode_tile_dot)
};

constexpr uint32_t kBf16x2Two126 = 0x7E807E80u;  // (2^126, 2^126)

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(0x80008000u));
  return d;
}

// The 4 A registers of step `s` with exact FP4 values (no scale).
__device__ __forceinline__ void dequant_step(uint32_t u, uint32_t (&A)[4]) {
  uint32_t o[4];
  mxfp4_unpack_word(u, o);
#pragma unroll
  for (int i = 0; i < 4; ++i) A[i] = bf16x2_mul(o[i], kBf16x2Two126);
}

__device__ __forceinline__ uint32_t scale_byte(uint32_t packed, int i) { return (packed >> (8 * i)) & 0xffu; }

// 2^(s-127) as f32 (s = 0 is the subnormal 2^-127), exactly as e8m0_to_f32.
__device__ __forceinline__ float scale_f32(uint32_t s) { return __uint_as_float(s ? s << 23 : 0x00400000u); }

// 2^(s-127) as a bf16 pair (s = 0: the bf16 subnormal 2^-127; s = 255: inf, as e8m0_to_f32).
__device__ __forceinline__ uint32_t scale_bf16x2(uint32_t s) {
  const uint32_t b = s ? s << 7 : 0x40u;
  return b | (b << 16);
}

// NaN-propagating clamps (the reference's torch.clamp keeps NaN).
__device__ __forceinline__ float swiglu(float glu, float lin, float alpha, float limit) {
  const float a = glu > limit ? limit : glu;
  const float l = lin > limit ? limit : (lin < -limit ? -limit : lin);
  return a / (1.0f + __expf(-alpha * a)) * (l + 1.0f);
}

// One token column of the lane's accumulator: glu / linear (mlp1) or rows o, o + 1 (mlp2) =
// (v_r, v_r8) for sorted row `row`.
template <bool kMlp1>
__device__ __forceinline__ void moe_store(const MoeGemmArgs& a, int e, int tile, int r, int row, float v_r, float v_r8) {
  if (kMlp1) {
    const int unit = tile * 8 + r;
    const float bg = a.bias[size_t(e) * a.R + 2 * unit], bl = a.bias[size_t(e) * a.R + 2 * unit + 1];
    const float zv = swiglu(v_r + bg, v_r8 + bl, a.alpha, a.limit);
    reinterpret_cast<__nv_bfloat16*>(a.z)[size_t(row) * a.I + unit] = __float2bfloat16_rn(zv);
  } else {
    const int o = tile * 16 + 2 * r;
    const float b0 = a.bias[size_t(e) * a.R + o], b1 = a.bias[size_t(e) * a.R + o + 1];
    const int slot = a.sorted_slot[row];
    const float w = a.expert_w[slot];
    *reinterpret_cast<float2*>(a.partial + size_t(slot) * a.R + o) = make_float2(w * (v_r + b0), w * (v_r8 + b1));
  }
}

// v = the lane's accumulator of row tile `tile` (rows r, r+8) for token columns col, col + 1 of
// the token tile starting at sorted row row0 (cnt valid rows).
template <bool kMlp1>
__device__ __forceinline__ void moe_epilogue(const MoeGemmArgs& a, int e, int row0, int cnt, int tile, int r, int col,
                                             const float (&v)[4]) {
  if (col < cnt) moe_store<kMlp1>(a, e, tile, r, row0 + col, v[0], v[2]);
  if (col + 1 < cnt) moe_store<kMlp1>(a, e, tile, r, row0 + col + 1, v[1], v[3]);
}

// ---------------------------------------------------------------------------------------------
// kernels
// ---------------------------------------------------------------------------------------------
constexpr int kDecodeWarps = 4;
constexpr int kDecodeTokens = 8;
constexpr int kDecodeUnroll = 4;

// The decode inner loop: this warp's share of the k chunks (j_first, j_first + j_step, ...) of one
// 16-row tile (packed codes at wp, scales at sp) against 8 token columns (xp: each lane's token
// row, offset by 8c). acc = the lane's C fragment (rows r, r+8 x columns 2c, 2c+1).
__device__ __forceinline__ void decode_tile_dot(const uint8_t* wp, const uint8_t* sp, const bf16_t* xp, int chunks, int K,
                                                int j_first, int j_step, uint32_t zero, float (&acc)[4]) {
  for (int j0 = j_first; j0 < chunks; j0 += kDecodeUnroll * j_step) {
    uint4 wv[kDecodeUnroll], xv[kDecodeUnroll][2];
    uint32_t sv[kDecodeUnroll];
    // All loads first and unconditional (clamped), so kDecodeUnroll chunks are in flight per
    // warp. Chunks and halves past the end are skipped below; a token column without a token
    // reads some valid row, whose garbage stays in that mma column and is never stored.
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int j = j0 + u * j_step;
      const int jc = j < chunks ? j : 0;
      wv[u] = tc::ldg_stream_128(wp + size_t(jc) * kMxfp4ChunkBytes);
      sv[u] = tc::ldg_stream_32(sp + size_t(jc) * kMxfp4ScaleChunkBytes);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int k = jc * 64 + 32 * h;
        xv[u][h] = tc::ldg_128(xp + (k < K ? k : 0));
      }
    }
    // Every code word depends on every load of the group (through `zero`, 0 at run time): ptxas
    // then issues all of them before the first mma instead of interleaving loads and mma.
    uint32_t dep = 0;
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) dep ^= wv[u].x ^ sv[u] ^ xv[u][0].x ^ xv[u][1].x;
    dep &= zero;
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) wv[u].x ^= dep;
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int j = j0 + u * j_step;
      if (j >= chunks) break;  // warp-uniform
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (j * 64 + 32 * h >= K) continue;  // the pad half of a last half chunk
        float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          uint32_t A[4];
          dequant_step(tc::word(wv[u], 2 * h + q), A);
          tc::mma_bf16_16816(part, A[0], A[1], A[2], A[3], tc::word(xv[u][h], 2 * q), tc::word(xv[u][h], 2 * q + 1));
        }
        const float s_r = scale_f32(scale_byte(sv[u], 2 * h)), s_r8 = scale_f32(scale_byte(sv[u], 2 * h + 1));
        acc[0] = fmaf(s_r, part[0], acc[0]);
        acc[1] = fmaf(s_r, part[1], acc[1]);
        acc[2] = fmaf(s_r8, part[2], acc[2]);
        acc[3] = fmaf(s_r8, part[3], acc[3]);
      }
    }
  }
}

// Grouped decode (expert_route tiles of <= 8 sorted rows): grid.x = row tiles of one expert
// (R / 16), grid.y = token-tile slots. Per-slot decode (kPerSlot, mlp1 only, no routing pass):
// grid.x = slot t*k + j (the fast index, so the blocks of slots that share an expert read the
// same rows at about the same time), grid.y = row tile; z row = slot.
template <bool kMlp1, bool kPerSlot>
__global__ void __launch_bounds__(kDecodeWarps * 32) bf16_mxfp4w_moe_gemv(MoeGemmArgs a) {
  static_assert(kMxfp4TileRows == 16 && kMxfp4ChunkK == 64, "one mma m16 tile x 4 k16 steps per chunk");
  static_assert(kMlp1 || !kPerSlot, "per-slot mlp2 is bf16_mxfp4w_moe_down_combine");
  __shared__ float red[kDecodeWarps][4][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r = lane >> 2, c = lane & 3;
  int e, row0, cnt, tile, brow = 0;
  if (kPerSlot) {
    row0 = blockIdx.x;
    e = a.expert_idx[row0];
    if (unsigned(e) >= unsigned(a.E)) return;  // slot left out (its z row is never read)
    cnt = 1;
    tile = blockIdx.y;
    brow = row0 / a.k;  // every token column reads the slot's token; only column 0 is stored
  } else {
    const int slot_tile = blockIdx.y;
    if (slot_tile >= *a.n_tiles) return;
    e = a.tile_expert[slot_tile];
    row0 = a.tile_row0[slot_tile];
    cnt = min(kDecodeTokens, a.expert_off[e + 1] - row0);
    tile = blockIdx.x;
    // B operand: token column r of the mma is sorted row row0 + r.
    if (r < cnt) brow = a.gather_k ? a.sorted_slot[row0 + r] / a.gather_k : row0 + r;
  }
  const size_t gtile = size_t(e) * (a.R / kMxfp4TileRows) + tile;
  const bf16_t* xp = a.act + size_t(brow) * a.ld_act + 8 * c;
  const uint8_t* wp = a.wb + mxfp4_block_offset(gtile, a.chunks, 0) + lane * 16;
  const uint8_t* sp = a.ws + mxfp4_scale_offset(gtile, a.chunks, 0) + r * 4;

  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  decode_tile_dot(wp, sp, xp, a.chunks, a.K, warp, kDecodeWarps, a.zero, acc);

#pragma unroll
  for (int i = 0; i < 4; ++i) red[warp][i][lane] = acc[i];
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) s += red[w][i][lane];
    acc[i] = s;
  }
  moe_epilogue<kMlp1>(a, e, row0, cnt, tile, r, 2 * c, acc);
}

constexpr int kDownWarps = 8;

// Per-slot decode mlp2 fused with the combine: block = (token t, 16-row tile of H); warp w works
// on slot j = w / ksplit (ksplit = 8 / k warps per slot, splitting the k chunks). Then, in slot
// order: y[t, rows] += sum_j w_j (W2[e_j] z_j + b2[e_j]) -- the same arithmetic and order as the
// partial + f32_expert_combine path, with no partial buffer and no extra launch.
__global__ void __launch_bounds__(kDownWarps * 32) bf16_mxfp4w_moe_down_combine(MoeGemmArgs a) {
  static_assert(kMxfp4TileRows == 16 && kMxfp4ChunkK == 64, "one mma m16 tile x 4 k16 steps per chunk");
  __shared__ float red[kDownWarps][4][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r = lane >> 2, c = lane & 3;
  const int t = blockIdx.x, tile = blockIdx.y;
  const int ksplit = max(1, kDownWarps / a.k);
  const int j = warp / ksplit;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (j < a.k) {
    const int slot = t * a.k + j;
    const int e = a.expert_idx[slot];
    if (unsigned(e) < unsigned(a.E)) {
      const size_t gtile = size_t(e) * (a.R / kMxfp4TileRows) + tile;
      const bf16_t* xp = a.act + size_t(slot) * a.ld_act + 8 * c;  // z row of the slot, all columns
      const uint8_t* wp = a.wb + mxfp4_block_offset(gtile, a.chunks, 0) + lane * 16;
      const uint8_t* sp = a.ws + mxfp4_scale_offset(gtile, a.chunks, 0) + r * 4;
      decode_tile_dot(wp, sp, xp, a.chunks, a.K, warp % ksplit, ksplit, a.zero, acc);
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) red[warp][i][lane] = acc[i];
  __syncthreads();
  if (warp != 0 || c != 0) return;  // column 0 (lanes c = 0): rows r (acc[0]) and r + 8 (acc[2])
  const int o = tile * 16 + 2 * r;  // mma rows r, r + 8 are output rows o, o + 1 (the layout)
  float out0 = 0.0f, out1 = 0.0f;
  for (int jj = 0; jj < a.k; ++jj) {
    const int slot = t * a.k + jj;
    const int e = a.expert_idx[slot];
    if (unsigned(e) >= unsigned(a.E)) continue;
    float p0 = 0.0f, p1 = 0.0f;
    for (int ss = 0; ss < ksplit; ++ss) {
      p0 += red[jj * ksplit + ss][0][lane];
      p1 += red[jj * ksplit + ss][2][lane];
    }
    const float w = a.expert_w[slot];
    out0 += w * (p0 + a.bias[size_t(e) * a.R + o]);
    out1 += w * (p1 + a.bias[size_t(e) * a.R + o + 1]);
  }
  float* y = a.y + size_t(t) * a.ldy + o;
  y[0] += out0;
  y[1] += out1;
}

constexpr int kGemmWarps = 8;
constexpr int kGemmStages = 4;
constexpr int kGemmRowTiles = 8;  // 16-row tiles per block: 4 row warps x 2

// Shared memory per pipeline stage: BM token rows x 128 swizzled bytes, then the block's 8 row
// tiles of packed codes (8 x 512 bytes, in the device layout, read back by each lane at its own
// 16 bytes: conflict-free) and their scales (8 x 32 bytes).
template <int BM>
constexpr uint32_t moe_gemm_stage_bytes() {
  return BM * 128 + kGemmRowTiles * (kMxfp4ChunkBytes + kMxfp4ScaleChunkBytes);
}

// grid.x = token-tile slots (BM sorted rows of one expert), grid.y = groups of 8 row tiles.
// Registers stay under 128 so that two blocks (16 warps) share an SM.
template <int BM, bool kMlp1>
__global__ void __launch_bounds__(kGemmWarps * 32, 2) bf16_mxfp4w_moe_gemm(MoeGemmArgs a) {
  constexpr int NT = BM / 16;                        // n8 tiles per warp (a warp owns BM / 2 rows)
  constexpr int kRowsPerPass = kGemmWarps * 32 / 8;  // loader: 8 chunks of 16 bytes per row
  constexpr int kPasses = BM / kRowsPerPass;
  constexpr uint32_t kStageBytes = moe_gemm_stage_bytes<BM>();
  constexpr uint32_t kCodesOff = BM * 128, kScalesOff = kCodesOff + kGemmRowTiles * kMxfp4ChunkBytes;
  static_assert(BM % kRowsPerPass == 0 && NT >= 2, "BM must be 32, 64 or 128");
  static_assert(kMxfp4TileRows == 16 && kMxfp4ChunkK == 64, "one mma m16 tile x 4 k16 steps per chunk");
  static_assert(kGemmRowTiles * kMxfp4ChunkBytes == kGemmWarps * 32 * 16, "one 16-byte copy of codes per thread");
  static_assert(kGemmRowTiles * kMxfp4ScaleChunkBytes <= kGemmWarps * 32 * 16, "scales fit one copy per thread");
  extern __shared__ uint4 smem[];  // [kGemmStages][stage]

  const int slot_tile = blockIdx.x;
  if (slot_tile >= *a.n_tiles) return;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int r = lane >> 2, c = lane & 3;
  const int wr = warp & 3, wt = warp >> 2;
  const int e = a.tile_expert[slot_tile], row0 = a.tile_row0[slot_tile];
  const int cnt = min(BM, a.expert_off[e + 1] - row0);
  const int RT = a.R / kMxfp4TileRows;
  const int rtb = blockIdx.y * kGemmRowTiles;  // the block's first row tile
  const bool vt[2] = {rtb + 2 * wr < RT, rtb + 2 * wr + 1 < RT};

  // Loader, tokens: chunk lq of token rows lrow + 32 p.
  const int lq = tid & 7, lrow = tid >> 3;
  const bf16_t* src[kPasses];
  bool vrow[kPasses];
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    const int row = lrow + kRowsPerPass * p;
    vrow[p] = row < cnt;
    int brow = 0;
    if (vrow[p]) brow = a.gather_k ? a.sorted_slot[row0 + row] / a.gather_k : row0 + row;
    src[p] = a.act + size_t(brow) * a.ld_act + 8 * lq;
  }
  // Loader, weights: thread tid copies 16 bytes of row tile tid / 32 (lane tid % 32), and threads
  // below 16 copy 16 bytes of scales (row tile tid / 2, half tid % 2). Row tiles past RT are
  // zero-filled (and never used).
  const int wtile = tid >> 5;
  const bool vw = rtb + wtile < RT;
  const uint8_t* wsrc = a.wb + mxfp4_block_offset(size_t(e) * RT + (vw ? rtb + wtile : 0), a.chunks, 0) + (tid & 31) * 16;
  const int stile = tid >> 1;
  const bool vs = tid < 2 * kGemmRowTiles && rtb + stile < RT;
  const uint8_t* ssrc = a.ws + mxfp4_scale_offset(size_t(e) * RT + (vs ? rtb + stile : 0), a.chunks, 0) + (tid & 1) * 16;

  const uint32_t smem0 = tc::smem_addr(smem);
  auto load_stage = [&](int slot, int chunk) {
    const uint32_t base = smem0 + slot * kStageBytes;
    const int k = chunk * 64 + 8 * lq;
    const bool vk = k < a.K;
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int row = lrow + kRowsPerPass * p;
      const uint32_t dst = base + row * 128 + tc::swizzle_chunk(row, lq) * 16;
      tc::cp_async_16(dst, vk && vrow[p] ? src[p] + chunk * 64 : src[p], vk && vrow[p]);
    }
    tc::cp_async_16(base + kCodesOff + tid * 16, wsrc + size_t(chunk) * kMxfp4ChunkBytes, vw);
    if (tid < 2 * kGemmRowTiles)
      tc::cp_async_16(base + kScalesOff + tid * 16, ssrc + size_t(chunk) * kMxfp4ScaleChunkBytes, vs);
  };

  float acc[2][NT][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[i][nt][0] = acc[i][nt][1] = acc[i][nt][2] = acc[i][nt][3] = 0.0f;

#pragma unroll
  for (int s = 0; s < kGemmStages - 1; ++s) {
    if (s < a.chunks) load_stage(s, s);
    tc::cp_async_commit();
  }

  for (int j = 0; j < a.chunks; ++j) {
    tc::cp_async_wait<kGemmStages - 2>();
    __syncthreads();  // chunk j is in shared memory; slot (j - 1) % stages is free again
    const int jn = j + kGemmStages - 1;
    if (jn < a.chunks) load_stage(jn % kGemmStages, jn);
    tc::cp_async_commit();

    const uint32_t stage = smem0 + (j % kGemmStages) * kStageBytes;
    uint4 wcur[2];
    uint32_t scur[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      wcur[i] = tc::lds_128(stage + kCodesOff + (2 * wr + i) * kMxfp4ChunkBytes + lane * 16);
      scur[i] = tc::lds_32(stage + kScalesOff + (2 * wr + i) * kMxfp4ScaleChunkBytes + r * 4);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (j * 64 + 32 * h >= a.K) continue;  // the pad half of a last half chunk
      uint32_t A[2][2][4];                      // [q][row tile][reg]
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const uint32_t s_r = scale_bf16x2(scale_byte(scur[i], 2 * h));
        const uint32_t s_r8 = scale_bf16x2(scale_byte(scur[i], 2 * h + 1));
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          dequant_step(tc::word(wcur[i], 2 * h + q), A[q][i]);
          A[q][i][0] = bf16x2_mul(A[q][i][0], s_r);   // a0a1: row r
          A[q][i][1] = bf16x2_mul(A[q][i][1], s_r8);  // a2a3: row r + 8
          A[q][i][2] = bf16x2_mul(A[q][i][2], s_r);   // a4a5: row r
          A[q][i][3] = bf16x2_mul(A[q][i][3], s_r8);  // a6a7: row r + 8
        }
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int row = wt * (BM / 2) + 8 * nt + r;
        const uint4 b = tc::lds_128(stage + row * 128 + tc::swizzle_chunk(row, 4 * h + c) * 16);
#pragma unroll
        for (int q = 0; q < 2; ++q)
#pragma unroll
          for (int i = 0; i < 2; ++i)
            if (vt[i])
              tc::mma_bf16_16816(acc[i][nt], A[q][i][0], A[q][i][1], A[q][i][2], A[q][i][3], tc::word(b, 2 * q),
                                 tc::word(b, 2 * q + 1));
      }
    }
  }
  tc::cp_async_wait<0>();

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (!vt[i]) continue;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
      moe_epilogue<kMlp1>(a, e, row0, cnt, rtb + 2 * wr + i, r, wt * (BM / 2) + 8 * nt + 2 * c, acc[i][nt]);
  }
}

// ---------------------------------------------------------------------------------------------
// launchers
// ---------------------------------------------------------------------------------------------
constexpr size_t kWsAlign = 256;  // sub-buffer alignment within the workspace

size_t align_up(size_t v) { return (v + kWsAlign - 1) / kWsAlign * kWsAlign; }

// Workspace carve-up for S = T * k slots.
struct MoeWorkspace {
  int32_t* expert_off;
  int32_t* sorted_slot;
  int32_t* tile_expert;
  int32_t* tile_row0;
  int32_t* n_tiles;
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
  char* p_z = take(S * I * 2);
  char* p_partial = take(S * H * 4);
  if (w) {
    w->expert_off = reinterpret_cast<int32_t*>(p_off);
    w->sorted_slot = reinterpret_cast<int32_t*>(p_sorted);
    w->tile_expert = reinterpret_cast<int32_t*>(p_te);
    w->tile_row0 = reinterpret_cast<int32_t*>(p_tr);
    w->n_tiles = reinterpret_cast<int32_t*>(p_nt);
    w->z = reinterpret_cast<bf16_t*>(p_z);
    w->partial = reinterpret_cast<float*>(p_partial);
  }
  return off;
}

template <bool kMlp1>
Status launch_gemv(const MoeGemmArgs& a, int max_tiles, cudaStream_t stream) {
  const dim3 grid(a.R / kMxfp4TileRows, max_tiles);
  bf16_mxfp4w_moe_gemv<kMlp1, false><<<grid, kDecodeWarps * 32, 0, stream>>>(a);
  GPTOSS_CUDA_LAUNCH_CHECK(kMlp1 ? "bf16_mxfp4w_moe_gemv<mlp1>" : "bf16_mxfp4w_moe_gemv<mlp2>");
  return Status::Ok();
}

template <int BM, bool kMlp1>
Status launch_gemm(const MoeGemmArgs& a, int max_tiles, cudaStream_t stream) {
  constexpr int kSmem = kGemmStages * moe_gemm_stage_bytes<BM>();
  auto kernel = bf16_mxfp4w_moe_gemm<BM, kMlp1>;
  // Opt in to > 48 KB of dynamic shared memory once per process (the first call; the attribute
  // call is host-side and may synchronise with pending copies, so not on every launch).
  static const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  GPTOSS_CUDA_CHECK(attr);
  const int row_tiles = a.R / kMxfp4TileRows;
  const dim3 grid(max_tiles, (row_tiles + kGemmRowTiles - 1) / kGemmRowTiles);
  kernel<<<grid, kGemmWarps * 32, kSmem, stream>>>(a);
  GPTOSS_CUDA_LAUNCH_CHECK(kMlp1 ? "bf16_mxfp4w_moe_gemm<mlp1>" : "bf16_mxfp4w_moe_gemm<mlp2>");
  return Status::Ok();
}

template <bool kMlp1>
Status launch_matmul(int bm, const MoeGemmArgs& a, int max_tiles, cudaStream_t stream) {
  switch (bm) {
    case kDecodeTokens: return launch_gemv<kMlp1>(a, max_tiles, stream);
    case 32: return launch_gemm<32, kMlp1>(a, max_tiles, stream);
    case 64: return launch_gemm<64, kMlp1>(a, max_tiles, stream);
    default: return launch_gemm<128, kMlp1>(a, max_tiles, stream);
  }
}

// Steps with at most this many slots (T * k) take the per-slot decode path.
constexpr int kPerSlotMaxSlots = 32;

// Token-tile size from the average number of rows per expert: the decode kernel while most
// experts see a handful of tokens, then ever larger tensor-core tiles.
int choose_tile_rows(int slots, int E) {
  const int avg = (slots + E - 1) / E;
  if (avg <= 4) return kDecodeTokens;
  if (avg <= 24) return 32;
  if (avg <= 64) return 64;
  return 128;
}

bool aligned(const void* p, size_t n) { return (reinterpret_cast<uintptr_t>(p) % n) == 0; }

}  // namespace

size_t moe_workspace_bytes(const BackendLimits& limits) {
  const size_t S = size_t(std::max(limits.max_tokens, 1)) * size_t(std::max(limits.top_k, 1));
  return workspace_layout(S, size_t(std::max(limits.n_experts, 1)), size_t(std::max(limits.hidden, 0)),
                          size_t(std::max(limits.intermediate, 0)), nullptr, nullptr);
}

// Floors on H100 (2.9 TB/s, ~770 TFLOP/s bf16), gpt-oss-20b shapes (H = I = 2880, k = 4):
//   decode T = 1: 4 experts x (5760 + 2880) rows x 2880 x 17/32 bytes = 52.9 MB -> 18.2 us per layer.
//   decode T = 64 (32 experts, all active): 282 MB -> 97 us per layer.
//   prefill T = 2048: 2 x 8192 x 8640 x 2880 = 408 GFLOP -> 530 us per layer.
Status launch_moe_mxfp4(const MoEParams& p, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
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
  if (p.ldx < p.H || p.ldx % 8 != 0 || !aligned(p.x, 16))
    return make_error(StatusCode::InvalidArgument,
                      "moe: x must be 16-byte aligned with ldx >= H and ldx % 8 == 0, got ldx=" + std::to_string(p.ldx) + shape);
  if (p.ldy < p.H) return make_error(StatusCode::InvalidArgument, "moe: ldy=" + std::to_string(p.ldy) + " < H" + shape);
  if (!aligned(p.w1_blocks, 16) || !aligned(p.w2_blocks, 16) || !aligned(p.w1_scales, 16) || !aligned(p.w2_scales, 16))
    return make_error(StatusCode::InvalidArgument, "moe: MXFP4 blocks and scales must be 16-byte aligned" + shape);

  const size_t S = size_t(p.T) * size_t(p.k);
  if (S > size_t(1) << 30) return make_error(StatusCode::InvalidArgument, "moe: too many slots" + shape);
  const size_t need = workspace_layout(S, size_t(p.E), size_t(p.H), size_t(p.I), nullptr, nullptr);
  if (!workspace || !aligned(workspace, 16))
    return make_error(StatusCode::InvalidArgument, "moe: the workspace must be a 16-byte aligned device buffer" + shape);
  if (workspace_bytes < need)
    return make_error(StatusCode::InvalidArgument, "moe: workspace of " + std::to_string(workspace_bytes) +
                                                       " bytes is too small: this step needs " + std::to_string(need) +
                                                       "; size it with moe_workspace_bytes" + shape);
  MoeWorkspace w;
  workspace_layout(S, size_t(p.E), size_t(p.H), size_t(p.I), static_cast<char*>(workspace), &w);

  MoeGemmArgs a{};
  a.z = w.z;
  a.I = p.I;
  a.expert_w = p.expert_w;
  a.partial = w.partial;
  a.alpha = p.swiglu_alpha;
  a.limit = p.swiglu_limit;
  a.expert_idx = p.expert_idx;
  a.E = p.E;
  a.k = p.k;
  a.y = p.y;
  a.ldy = p.ldy;

  // Decode-sized steps: per-slot mlp1, then mlp2 fused with the combine. Two launches, no routing.
  if (S <= size_t(kPerSlotMaxSlots) && p.k <= kDownWarps) {
    a.act = static_cast<const bf16_t*>(p.x);
    a.ld_act = p.ldx;
    a.wb = p.w1_blocks;
    a.ws = p.w1_scales;
    a.bias = p.b1;
    a.R = 2 * p.I;
    a.K = p.H;
    a.chunks = mxfp4_chunks(p.H / 32);
    bf16_mxfp4w_moe_gemv<true, true><<<dim3(unsigned(S), a.R / kMxfp4TileRows), kDecodeWarps * 32, 0, stream>>>(a);
    GPTOSS_CUDA_LAUNCH_CHECK("bf16_mxfp4w_moe_gemv<mlp1, per slot>");
    a.act = w.z;
    a.ld_act = p.I;
    a.wb = p.w2_blocks;
    a.ws = p.w2_scales;
    a.bias = p.b2;
    a.R = p.H;
    a.K = p.I;
    a.chunks = mxfp4_chunks(p.I / 32);
    bf16_mxfp4w_moe_down_combine<<<dim3(unsigned(p.T), a.R / kMxfp4TileRows), kDownWarps * 32, 0, stream>>>(a);
    GPTOSS_CUDA_LAUNCH_CHECK("bf16_mxfp4w_moe_down_combine");
    return Status::Ok();
  }

  const int bm = choose_tile_rows(int(S), p.E);
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

  a.sorted_slot = w.sorted_slot;
  a.expert_off = w.expert_off;
  a.tile_expert = w.tile_expert;
  a.tile_row0 = w.tile_row0;
  a.n_tiles = w.n_tiles;

  // mlp1: rows 2I, K = H, B = x gathered by token.
  a.act = static_cast<const bf16_t*>(p.x);
  a.ld_act = p.ldx;
  a.gather_k = p.k;
  a.wb = p.w1_blocks;
  a.ws = p.w1_scales;
  a.bias = p.b1;
  a.R = 2 * p.I;
  a.K = p.H;
  a.chunks = mxfp4_chunks(p.H / 32);
  GPTOSS_RETURN_IF_ERROR(launch_matmul<true>(bm, a, max_tiles, stream));

  // mlp2: rows H, K = I, B = z in sorted order.
  a.act = w.z;
  a.ld_act = p.I;
  a.gather_k = 0;
  a.wb = p.w2_blocks;
  a.ws = p.w2_scales;
  a.bias = p.b2;
  a.R = p.H;
  a.K = p.I;
  a.chunks = mxfp4_chunks(p.I / 32);
  GPTOSS_RETURN_IF_ERROR(launch_matmul<false>(bm, a, max_tiles, stream));

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
