// Tiled MXFP4 MoE GEMM on mma.sync (the sm_80 path, and prefill everywhere wgmma is not
// available): over expert_route's tiles of sorted rows, mlp1 (+ bias + clamped SwiGLU into z) or
// mlp2 (+ bias, times the routing weight, into the per-slot partial rows that expert_combine adds
// onto y).
//
// bf16_mxfp4w_moe_gemm<BM>: block = 128 weight rows (8 warps: 4 row warps x 2 row tiles, 2 token
// halves) x BM sorted rows of one expert (the token tile; B operand rows gathered by token index
// for mlp1, zero-filled past the expert's rows and past K). The token tile and the packed weight
// tiles (device layout of moe_mxfp4.cuh) go through a 4-stage cp.async pipeline in shared memory;
// each warp dequantises its two row tiles from there with the scale folded into the bf16 A
// operand (exact), and runs mma.sync m16n8k16 with f32 accumulation against BM / 2 token columns.
#include <cuda_bf16.h>

#include <algorithm>

#include "cuda_check.cuh"
#include "moe_mxfp4_impl.cuh"

namespace gptoss {
namespace moe {
namespace {

// One token column of the lane's accumulator: glu / linear (mlp1) or rows o, o + 1 (mlp2) =
// (v_r, v_r8) for sorted row `row`.
template <bool kMlp1>
__device__ __forceinline__ void gemm_store(const GemmArgs& a, int e, int tile, int r, int row, float v_r, float v_r8) {
  if (kMlp1) {
    const int unit = tile * 8 + r;
    const float* b = a.bias + size_t(e) * a.R + 2 * unit;
    const float zv = swiglu(v_r + b[0], v_r8 + b[1], a.alpha, a.limit);
    reinterpret_cast<__nv_bfloat16*>(a.z)[size_t(row) * a.I + unit] = __float2bfloat16_rn(zv);
  } else {
    const int o = tile * 16 + 2 * r;
    const float* b = a.bias + size_t(e) * a.R + o;
    const int slot = a.sorted_slot[row];
    const float w = a.expert_w[slot];
    *reinterpret_cast<float2*>(a.partial + size_t(slot) * a.R + o) = make_float2(w * (v_r + b[0]), w * (v_r8 + b[1]));
  }
}

// ---------------------------------------------------------------------------------------------
// kernels
// ---------------------------------------------------------------------------------------------
constexpr int kGemmWarps = 8;
constexpr int kGemmStages = 4;
constexpr int kGemmRowTiles = 8;  // 16-row tiles per block: 4 row warps x 2

// Shared memory per pipeline stage: BM token rows x 128 swizzled bytes, then the block's 8 row
// tiles of packed codes (8 x 512 bytes, in the device layout, read back by each lane at its own
// 16 bytes: conflict-free) and their scales (8 x 32 bytes).
template <int BM>
constexpr uint32_t gemm_stage_bytes() {
  return BM * 128 + kGemmRowTiles * (kMxfp4ChunkBytes + kMxfp4ScaleChunkBytes);
}

// grid.x = token-tile slots (BM sorted rows of one expert), grid.y = groups of 8 row tiles.
// Registers stay under 128 so that two blocks (16 warps) share an SM.
template <int BM, bool kMlp1, bool kFast>
__global__ void __launch_bounds__(kGemmWarps * 32, 2) bf16_mxfp4w_moe_gemm(GemmArgs a) {
  constexpr int NT = BM / 16;                        // n8 tiles per warp (a warp owns BM / 2 rows)
  constexpr int kRowsPerPass = kGemmWarps * 32 / 8;  // loader: 8 chunks of 16 bytes per row
  constexpr int kPasses = BM / kRowsPerPass;
  constexpr uint32_t kStageBytes = gemm_stage_bytes<BM>();
  constexpr uint32_t kCodesOff = BM * 128, kScalesOff = kCodesOff + kGemmRowTiles * kMxfp4ChunkBytes;
  static_assert(BM % kRowsPerPass == 0 && NT >= 2, "BM must be 32, 64 or 128");
  static_assert(kMxfp4TileRows == 16 && kMxfp4ChunkK == 64, "one mma m16 tile x 4 k16 steps per chunk");
  static_assert(kGemmRowTiles * kMxfp4ChunkBytes == kGemmWarps * 32 * 16, "one 16-byte copy of codes per thread");
  static_assert(kGemmRowTiles * kMxfp4ScaleChunkBytes <= kGemmWarps * 32 * 16, "scales fit one copy per thread");
  extern __shared__ uint4 smem[];  // [kGemmStages][stage]

  const int slot_tile = blockIdx.x;
  if (slot_tile >= *a.n_tiles) return;
  const int chunks = mxfp4_chunks(a.K / 32);
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
  const uint8_t* wsrc = a.wb + mxfp4_block_offset(size_t(e) * RT + (vw ? rtb + wtile : 0), chunks, 0) + (tid & 31) * 16;
  const int stile = tid >> 1;
  const bool vs = tid < 2 * kGemmRowTiles && rtb + stile < RT;
  const uint8_t* ssrc = a.ws + mxfp4_scale_offset(size_t(e) * RT + (vs ? rtb + stile : 0), chunks, 0) + (tid & 1) * 16;

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
    if (s < chunks) load_stage(s, s);
    tc::cp_async_commit();
  }

  for (int j = 0; j < chunks; ++j) {
    tc::cp_async_wait<kGemmStages - 2>();
    __syncthreads();  // chunk j is in shared memory; slot (j - 1) % stages is free again
    const int jn = j + kGemmStages - 1;
    if (jn < chunks) load_stage(jn % kGemmStages, jn);
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
      uint32_t A[2][2][4];                      // [row tile][q][reg]
#pragma unroll
      for (int i = 0; i < 2; ++i) dequant_steps<kFast, 2>(wcur[i], scur[i], 2 * h, A[i]);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int row = wt * (BM / 2) + 8 * nt + r;
        const uint4 b = tc::lds_128(stage + row * 128 + tc::swizzle_chunk(row, 4 * h + c) * 16);
#pragma unroll
        for (int q = 0; q < 2; ++q)
#pragma unroll
          for (int i = 0; i < 2; ++i)
            if (vt[i])
              tc::mma_bf16_16816(acc[i][nt], A[i][q][0], A[i][q][1], A[i][q][2], A[i][q][3], tc::word(b, 2 * q),
                                 tc::word(b, 2 * q + 1));
      }
    }
  }
  tc::cp_async_wait<0>();

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (!vt[i]) continue;
    const int tile = rtb + 2 * wr + i;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int col = wt * (BM / 2) + 8 * nt + 2 * c;  // token columns col, col + 1 of the tile
      if (col < cnt) gemm_store<kMlp1>(a, e, tile, r, row0 + col, acc[i][nt][0], acc[i][nt][2]);
      if (col + 1 < cnt) gemm_store<kMlp1>(a, e, tile, r, row0 + col + 1, acc[i][nt][1], acc[i][nt][3]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// launchers
// ---------------------------------------------------------------------------------------------
template <int BM, bool kMlp1>
Status launch(const GemmArgs& a, int max_tiles, cudaStream_t stream) {
  constexpr int kSmem = kGemmStages * gemm_stage_bytes<BM>();
  auto kernel = a.fast_scales ? bf16_mxfp4w_moe_gemm<BM, kMlp1, true> : bf16_mxfp4w_moe_gemm<BM, kMlp1, false>;
  const char* name = kMlp1 ? "bf16_mxfp4w_moe_gemm<mlp1>" : "bf16_mxfp4w_moe_gemm<mlp2>";
  GPTOSS_RETURN_IF_ERROR(ensure_smem(reinterpret_cast<const void*>(kernel), kSmem, name));
  const int row_tiles = a.R / kMxfp4TileRows;
  const dim3 grid(max_tiles, (row_tiles + kGemmRowTiles - 1) / kGemmRowTiles);
  kernel<<<grid, kGemmWarps * 32, kSmem, stream>>>(a);
  GPTOSS_CUDA_LAUNCH_CHECK(name);
  return Status::Ok();
}

template <bool kMlp1>
Status launch_bm(int bm, const GemmArgs& a, int max_tiles, cudaStream_t stream) {
  switch (bm) {
    case 32: return launch<32, kMlp1>(a, max_tiles, stream);
    case 64: return launch<64, kMlp1>(a, max_tiles, stream);
    default: return launch<128, kMlp1>(a, max_tiles, stream);
  }
}

}  // namespace

int gemm_tile_rows(int slots, int E) {
  const int avg = (slots + E - 1) / E;
  if (avg <= 24) return 32;
  if (avg <= 64) return 64;
  return 128;
}

// Floor (gpt-oss-20b, T = 2048, k = 4): 2 x 8192 x 8640 x 2880 = 408 GFLOP for mlp1 + mlp2 ->
// 530 us per layer at ~770 TFLOP/s; mma.sync reaches well under that on Hopper (wgmma path).
Status launch_gemm_mma(int tile_rows, bool mlp1, const GemmArgs& a, int max_tiles, cudaStream_t stream) {
  if (max_tiles <= 0) return Status::Ok();
  if (tile_rows != 32 && tile_rows != 64 && tile_rows != 128)
    return make_error(StatusCode::InvalidArgument, "moe gemm: token tile must be 32, 64 or 128 rows");
  return mlp1 ? launch_bm<true>(tile_rows, a, max_tiles, stream) : launch_bm<false>(tile_rows, a, max_tiles, stream);
}

}  // namespace moe
}  // namespace gptoss
