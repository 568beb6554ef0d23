// MXFP4 MoE GEMM on sm_90a with the weights as the register operand (prefill: T * k >
// kStreamBatchMaxSlots on an sm_90 device). Same work and argument struct as the mma.sync GEMM
// (moe_mxfp4_gemm.cu, the path elsewhere): over expert_route tiles of kRsTokenRows sorted rows,
// mlp1 + bias + SwiGLU into z, or mlp2 + bias times the routing weight into per-slot partials.
// H200 kernel bench, 20b shapes: T = 2048 1155 us, T = 512 534 us.
//
// Why (bench/NOTES.md, session 3): the shared-memory-operand wgmma GEMM this replaced dequantised
// the weights into a bf16 shared-memory B buffer that both warpgroups then read through wgmma, so
// each 64-wide chunk moved ~137 KB through shared memory for 4.2 MFLOP (~134 bytes per tensor-core
// cycle, above the 128 the SM has; 1391 us at T = 2048, 553 at T = 512).
// Here every warp dequantises its own 16-row weight tile straight into wgmma A registers (the
// per-warp slice of an m64 A fragment has the mma.sync m16n8k16 layout that dequant_steps already
// produces), and the tokens are the shared-memory B operand: ~100 KB per chunk, no B stores, no
// second buffer, one barrier per chunk.
//
// Block = 2 warpgroups (256 threads) = 8 weight tiles (128 rows; warp w of warpgroup g owns tile
// 8 blockIdx.x + 4g + w, the rows 16w .. 16w + 15 of its warpgroup's M = 64) x one route tile of up
// to 256 token rows (wgmma N = 64, 128 or 256 by the tile's row count). Per 64-wide chunk j:
//   * a kRsStages-deep cp.async ring stages the token rows (K-major, 128-byte swizzle, row m at
//     m * 128, 16-byte piece q at q ^ (m & 7); zero-filled past the tile's rows and past K) and the
//     packed codes and scales of the 8 weight tiles;
//   * the wgmma of chunk j runs on A registers set j & 1 while the warps dequantise chunk j + 1 into
//     set (j + 1) & 1; wgmma.wait_group 1 before that keeps the set of chunk j - 1 from being
//     overwritten while a wgmma still reads it.
// k order: the device layout (mxfp4_layout.cuh) gives lane (r, c) of step s = 2h + q the weights of
// k = 32h + 8c + 4q + (0..3), not the natural k of an mma fragment, so the B operand must hold the
// tokens in the same order. wgmma reads B from shared memory in natural order, hence the tokens are
// stored permuted ("prefill k order", mxfp4_prefill_pos / mxfp4_prefill_offset in mxfp4_layout.cuh).
// mlp1 reads x through launch_prefill_permute's copy, and writes z in that order for mlp2.
#include <cuda_bf16.h>

#include <algorithm>
#include <type_traits>

#include "cuda_check.cuh"
#include "kernel_caps.cuh"
#include "moe_mxfp4_impl.cuh"
#include "wgmma_sm90.cuh"

namespace gptoss {
namespace moe {
namespace {

constexpr int kRsThreads = 256;                                // two warpgroups
constexpr int kRsTiles = kRsThreads / 32;                      // weight tiles per block: one per warp
constexpr int kRsStages = 4;                                   // cp.async ring depth
constexpr uint32_t kTokBytes = kRsTokenRows * 128;             // token rows x 64 bf16
constexpr uint32_t kCodeBytes = kRsTiles * kMxfp4ChunkBytes;
constexpr uint32_t kScaleBytes = kRsTiles * kMxfp4ScaleChunkBytes;
constexpr uint32_t kStageBytes = (kTokBytes + kCodeBytes + kScaleBytes + 1023) / 1024 * 1024;
constexpr uint32_t kSmemBytes = kRsStages * kStageBytes + 1024;  // + alignment of the base

// dst[t][p] = src[t][64 (p / 64) + mxfp4_prefill_offset(p % 64)], one 4-byte word per thread. A K that
// ends in a half chunk keeps positions < 32 of that chunk, which map inside it.
__global__ void bf16_prefill_permute(const uint32_t* src, int ld_src_words, uint32_t* dst, int T, int K) {
  const int words = K / 2;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < size_t(T) * words;
       i += size_t(gridDim.x) * blockDim.x) {
    const int t = int(i / words), w = int(i % words), p = 2 * w;
    const int k = (p & ~63) + mxfp4_prefill_offset(p & 63);
    dst[i] = src[size_t(t) * ld_src_words + k / 2];
  }
}

#ifdef GPTOSS_WGMMA
template <int N>
__device__ __forceinline__ void wgmma_rs(float* d, const uint32_t (&a)[4], uint64_t b_desc);

// D[64][64] += A[64][16] * B[16][64]: A from registers (this warp's 16 rows, mma.sync A layout),
// B (K-major, 128-byte swizzle) from shared memory.
template <>
__device__ __forceinline__ void wgmma_rs<64>(float* d, const uint32_t (&a)[4], uint64_t b_desc) {
  asm volatile(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" GPTOSS_WG_PH32
      "}, {%32, %33, %34, %35}, %36, 1, 1, 1, 0;\n"
      "}\n"
      : GPTOSS_WG_ACC32(d, 0)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc));
}

// D[64][128] += A[64][16] * B[16][128]: A from registers (this warp's 16 rows, mma.sync A layout),
// B (K-major, 128-byte swizzle) from shared memory.
template <>
__device__ __forceinline__ void wgmma_rs<128>(float* d, const uint32_t (&a)[4], uint64_t b_desc) {
  asm volatile(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" GPTOSS_WG_PH64
      "}, {%64, %65, %66, %67}, %68, 1, 1, 1, 0;\n"
      "}\n"
      : GPTOSS_WG_ACC64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc));
}

// D[64][256] += A[64][16] * B[16][256]: A from registers (this warp's 16 rows, mma.sync A layout),
// B (K-major, 128-byte swizzle) from shared memory.
template <>
__device__ __forceinline__ void wgmma_rs<256>(float* d, const uint32_t (&a)[4], uint64_t b_desc) {
  asm volatile(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" GPTOSS_WG_PH128
      "}, {%128, %129, %130, %131}, %132, 1, 1, 1, 0;\n"
      "}\n"
      : GPTOSS_WG_ACC128(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc));
}

// Chunk j's four k16 steps on A registers `A` (this warp's tile) and the token rows at `bt`. The pad
// half of a last half chunk is not skipped: its codes are zero and its token columns zero-filled.
template <int N>
__device__ __forceinline__ void mma_chunk_rs(float (&acc)[128], const uint32_t (&A)[4][4], uint32_t bt) {
#pragma unroll
  for (int s = 0; s < 4; ++s) wgmma_rs<N>(acc, A[s], desc_sw128(bt + 32 * s));
}
#endif  // GPTOSS_WGMMA

// grid.x = weight-row blocks of kRsTiles tiles (128 rows), grid.y = route-tile slots (expert_route, kRsTokenRows rows).
template <bool kMlp1, bool kFast>
__global__ void __launch_bounds__(kRsThreads, 1) bf16_mxfp4w_moe_wgmma_rs(GemmArgs a) {
#ifdef GPTOSS_WGMMA
  static_assert(kRsTokenRows == 256 && kRsThreads == 256, "the loader covers 256 token rows with 256 threads");
  static_assert(kStageBytes % 1024 == 0 && kTokBytes % 1024 == 0, "swizzled token tiles stay 1024-aligned");
  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (tc::smem_addr(smem_raw) + 1023u) & ~1023u;

  const int slot_tile = blockIdx.y;
  if (slot_tile >= *a.n_tiles) return;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
  const int r = lane >> 2, c = lane & 3;
  const int chunks = mxfp4_chunks(a.K / 32);
  const int e = a.tile_expert[slot_tile], row0 = a.tile_row0[slot_tile];
  const int cnt = min(kRsTokenRows, a.expert_off[e + 1] - row0);
  const int nv = cnt > 128 ? 256 : cnt > 64 ? 128 : 64;  // wgmma N: token rows of this tile
  const int RT = a.R / kMxfp4TileRows;
  const int tile = int(blockIdx.x) * kRsTiles + warp;   // this warp's weight tile
  const bool wg_active = int(blockIdx.x) * kRsTiles + 4 * wg < RT;  // the warpgroup has weight rows

  // Loader, tokens: 16-byte piece lq of rows lrow + 32 p (8 per thread; rows >= nv are not read).
  const int lq = tid & 7, lrow = tid >> 3;
  const bf16_t* src[8];
  bool vrow[8];
#pragma unroll
  for (int p = 0; p < 8; ++p) {
    const int row = lrow + 32 * p;
    vrow[p] = row < cnt;
    int brow = 0;
    if (vrow[p]) brow = a.gather_k ? a.sorted_slot[row0 + row] / a.gather_k : row0 + row;
    src[p] = a.act + size_t(brow) * a.ld_act + 8 * lq;
  }
  auto load_stage = [&](int j) {
    const uint32_t st = base + uint32_t(j % kRsStages) * kStageBytes;
    const bool vk = j * 64 + 8 * lq < a.K;
#pragma unroll
    for (int p = 0; p < 8; ++p) {
      const int row = lrow + 32 * p;
      if (row >= nv) break;  // uniform per p across the block
      const bool v = vk && vrow[p];
      tc::cp_async_16(st + row * 128 + ((lq ^ (row & 7)) << 4), v ? src[p] + j * 64 : src[p], v);
    }
    // Codes: 8 tiles x 32 lanes x 16 bytes, one piece per thread; scales: 8 x 32 bytes, threads < 16.
    {
      const int t = tid >> 5;
      const bool v = int(blockIdx.x) * kRsTiles + t < RT;
      const uint8_t* s = a.wb + mxfp4_block_offset(size_t(e) * RT + (v ? blockIdx.x * kRsTiles + t : 0), chunks, j) + lane * 16;
      tc::cp_async_16(st + kTokBytes + tid * 16, s, v);
    }
    if (tid < 2 * kRsTiles) {
      const int t = tid >> 1;
      const bool v = int(blockIdx.x) * kRsTiles + t < RT;
      const uint8_t* s = a.ws + mxfp4_scale_offset(size_t(e) * RT + (v ? blockIdx.x * kRsTiles + t : 0), chunks, j) +
                         (tid & 1) * 16;
      tc::cp_async_16(st + kTokBytes + kCodeBytes + tid * 16, s, v);
    }
  };
  // This warp's tile of chunk j -> A registers. Unconditional (a register write on a divergent path
  // makes ptxas serialise the wgmma): tiles past R were zero-filled by the loader, and the call after
  // the last chunk reads a stale stage into registers nobody uses.
  auto dequant = [&](int j, uint32_t (&A)[4][4]) {
    const uint32_t st = base + uint32_t(j % kRsStages) * kStageBytes;
    const uint4 w = tc::lds_128(st + kTokBytes + warp * kMxfp4ChunkBytes + lane * 16);
    const uint32_t sw = tc::lds_32(st + kTokBytes + kCodeBytes + warp * kMxfp4ScaleChunkBytes + r * 4);
    dequant_steps<kFast, 4>(w, sw, 0, A);
  };

  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.0f;
  uint32_t A0[4][4] = {}, A1[4][4] = {};  // register sets of even / odd chunks

#pragma unroll
  for (int s = 0; s < kRsStages - 1; ++s) {
    if (s < chunks) load_stage(s);
    tc::cp_async_commit();
  }
  tc::cp_async_wait<kRsStages - 2>();  // stage 0
  fence_proxy_async();
  __syncthreads();
  dequant(0, A0);

  // Chunk j on set `cur` while the next chunk is dequantised into `nxt`.
  auto step = [&](int j, const uint32_t (&cur)[4][4], uint32_t (&nxt)[4][4]) {
    const uint32_t bt = base + uint32_t(j % kRsStages) * kStageBytes;
    auto refill = [&] {
      tc::cp_async_wait<kRsStages - 3>();  // stage j + 1
      fence_proxy_async();
      __syncthreads();  // every warpgroup is past chunk j - 1: its stage can be refilled
      if (j + kRsStages - 1 < chunks) load_stage(j + kRsStages - 1);
      tc::cp_async_commit();
    };
    // ptxas keeps a wgmma asynchronous only when its issue and wait sit in one straight-line
    // region: one copy of the body per N.
    auto body = [&](auto n_tag) {
      constexpr int N = decltype(n_tag)::value;
      fence_acc(acc);
      wgmma_fence();
      mma_chunk_rs<N>(acc, cur, bt);
      wgmma_commit();
      wgmma_wait<1>();  // chunk j - 1's wgmma (set nxt, stage (j - 1) % S) is done
      refill();
      dequant(j + 1, nxt);
      fence_acc(acc);
    };
    if (wg_active && nv == 256) {
      body(std::integral_constant<int, 256>());
    } else if (wg_active && nv == 128) {
      body(std::integral_constant<int, 128>());
    } else if (wg_active) {
      body(std::integral_constant<int, 64>());
    } else {
      refill();
    }
  };
  for (int j = 0; j < chunks; j += 2) {
    step(j, A0, A1);
    if (j + 1 < chunks) step(j + 1, A1, A0);
  }
  wgmma_wait0();
  fence_acc(acc);
  tc::cp_async_wait<0>();
  if (!wg_active || tile >= RT) return;

  // acc[4i + 2hr + v] = weight row r + 8 hr of this warp's tile, token row 8i + 2c + v of the route tile.
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    if (8 * i >= nv) break;
#pragma unroll
    for (int v = 0; v < 2; ++v) {
      const int m = 8 * i + 2 * c + v;
      if (m >= cnt) continue;
      const float x0 = acc[4 * i + v], x1 = acc[4 * i + 2 + v];  // rows r, r + 8
      if (kMlp1) {
        // Rows r / r + 8 = checkpoint rows 2u (glu) / 2u + 1 (linear) of unit u; z in prefill k order.
        const int u = tile * 8 + r;
        const float* b = a.bias + size_t(e) * a.R + 2 * u;
        const float zv = swiglu(x0 + b[0], x1 + b[1], a.alpha, a.limit);
        const int zp = (u & ~63) + mxfp4_prefill_pos(u & 63);
        reinterpret_cast<__nv_bfloat16*>(a.z)[size_t(row0 + m) * a.I + zp] = __float2bfloat16_rn(zv);
      } else {
        // Rows r / r + 8 = output rows o / o + 1.
        const int o = tile * 16 + 2 * r;
        const float* b = a.bias + size_t(e) * a.R + o;
        const int slot = a.sorted_slot[row0 + m];
        const float w = a.expert_w[slot];
        *reinterpret_cast<float2*>(a.partial + size_t(slot) * a.R + o) = make_float2(w * (x0 + b[0]), w * (x1 + b[1]));
      }
    }
  }
#else
  __trap();  // never launched: wgmma_available() requires code compiled for sm_90a
#endif
}

template <bool kMlp1>
Status launch(const GemmArgs& a, int max_tiles, cudaStream_t stream) {
  auto kernel = a.fast_scales ? bf16_mxfp4w_moe_wgmma_rs<kMlp1, true> : bf16_mxfp4w_moe_wgmma_rs<kMlp1, false>;
  const char* name = kMlp1 ? "bf16_mxfp4w_moe_wgmma_rs<mlp1>" : "bf16_mxfp4w_moe_wgmma_rs<mlp2>";
  GPTOSS_RETURN_IF_ERROR(ensure_smem(reinterpret_cast<const void*>(kernel), kSmemBytes, name));
  const dim3 grid((a.R / kMxfp4TileRows + kRsTiles - 1) / kRsTiles, max_tiles);
  kernel<<<grid, kRsThreads, kSmemBytes, stream>>>(a);
  GPTOSS_CUDA_LAUNCH_CHECK(name);
  return Status::Ok();
}

}  // namespace

bool wgmma_available() {
  static const bool ok = sm90_code_runnable(bf16_mxfp4w_moe_wgmma_rs<true, true>, /*exact_90=*/true);
  return ok;
}

Status launch_prefill_permute(const bf16_t* src, int ld_src, bf16_t* dst, int T, int K, cudaStream_t stream) {
  if (T <= 0) return Status::Ok();
  if (K % 32 != 0 || ld_src % 2 != 0 || ld_src < K)
    return make_error(StatusCode::InvalidArgument, "prefill permute: K must be a multiple of 32, ld_src even and >= K");
  const size_t words = size_t(T) * (K / 2);
  const unsigned grid = unsigned(std::min<size_t>((words + 255) / 256, 4096));
  bf16_prefill_permute<<<grid, 256, 0, stream>>>(reinterpret_cast<const uint32_t*>(src), ld_src / 2,
                                                 reinterpret_cast<uint32_t*>(dst), T, K);
  GPTOSS_CUDA_LAUNCH_CHECK("bf16_prefill_permute");
  return Status::Ok();
}

// Floor (gpt-oss-20b, T = 2048, k = 4): 408 GFLOP for mlp1 + mlp2 -> 530 us per layer at ~770
// TFLOP/s. Shared memory per 64-wide chunk and block: 64 KB of token reads by the two warpgroups'
// wgmma, 32 KB of token and 4.3 KB of code copies, 4.3 KB of code reads: ~102 bytes per
// tensor-core cycle at full rate, under the SM's 128.
Status launch_gemm_wgmma_rs(bool mlp1, const GemmArgs& a, int max_tiles, cudaStream_t stream) {
  if (max_tiles <= 0) return Status::Ok();
  if (a.R % kMxfp4TileRows != 0 || a.K % 32 != 0 || a.ld_act % 8 != 0)
    return make_error(StatusCode::InvalidArgument, "moe wgmma rs: rows must be a multiple of 16, K of 32, ld_act of 8");
  return mlp1 ? launch<true>(a, max_tiles, stream) : launch<false>(a, max_tiles, stream);
}

}  // namespace moe
}  // namespace gptoss
