// Tiled MXFP4 MoE GEMM on sm_90a warpgroup MMA (prefill): the same work as moe_mxfp4_gemm.cu
// (mlp1 + bias + SwiGLU into z, or mlp2 + bias times the routing weight into per-slot partials,
// over expert_route's tiles of sorted rows), with the tokens as the wgmma A operand and the
// weights, dequantised on the fly, as B.
//
// Block (2 warpgroups, 256 threads) = one token tile (kWgmmaTileRows = 128 sorted rows of one
// expert: warpgroup g owns rows 64g .. 64g + 63, the M of its m64nNk16 instructions) x 256 weight
// rows (16 tiles of the device layout, the N). Per 64-wide k chunk j:
//   * a kStages-deep cp.async ring stages the token rows (gathered by token for mlp1, zero-filled
//     past the tile's rows and past K) in the canonical K-major 128-byte-swizzled layout (row m at
//     m * 128 bytes, 16-byte piece q at q ^ (m & 7); tile bases 1024-aligned), plus the packed
//     codes and scales of the 16 weight tiles;
//   * every warp dequantises 2 weight tiles (dequant_steps: exact FP4 x E8M0 in bf16) and writes
//     them into a bf16 B buffer in the same swizzled K-major layout, in NATURAL k order (lane
//     (r, c) holds rows 2r, 2r + 1 of its tile at k = 32h + 8c + 0..7, h = 0, 1: four 16-byte
//     stores; lanes with odd r swap h so that each quarter warp hits 8 distinct bank groups);
//   * each warpgroup issues 4 wgmma (k16 steps; descriptors advanced by 32 bytes inside the
//     swizzle atom) on the previous chunk's buffers while the warps dequantise the next chunk.
// One __syncthreads per chunk orders it all: cp.async data and the generic-proxy B stores are
// published to the async proxy (fence.proxy.async) before the barrier, and a buffer is refilled
// only after every warpgroup's wgmma on it completed (wgmma.wait_group 0 before the barrier).
// The accumulators (m64 x N f32: 128 registers per thread at N = 256) are the mma.sync C layout
// per n8 block, so weight rows 2u / 2u + 1 (glu / linear, or output rows o / o + 1) are adjacent
// columns of one thread: the epilogue is local, as on the mma.sync path. The last row block of a
// matrix uses N = 128 or 64 when its valid rows fit (R = 5760 and 2880 end that way).
#include <cuda_bf16.h>

#include <algorithm>

#include "cuda_backend.cuh"
#include "cuda_check.cuh"
#include "moe_mxfp4_impl.cuh"
#include "wgmma_sm90.cuh"

namespace gptoss {
namespace moe {
namespace {

constexpr int kWgThreads = 256;                                   // two warpgroups
constexpr int kWgRows = 256;                                      // weight rows per block (wgmma N)
constexpr int kWgTiles = kWgRows / kMxfp4TileRows;                // 16
constexpr int kStages = 4;                                        // cp.async ring depth
constexpr uint32_t kTokBytes = kWgmmaTileRows * 128;              // token rows x 64 bf16
constexpr uint32_t kCodeBytes = kWgTiles * kMxfp4ChunkBytes;      // packed codes of the 16 tiles
constexpr uint32_t kScaleBytes = kWgTiles * kMxfp4ScaleChunkBytes;
constexpr uint32_t kStageBytes = (kTokBytes + kCodeBytes + kScaleBytes + 1023) / 1024 * 1024;
constexpr uint32_t kBBytes = kWgRows * 128;                       // one bf16 B buffer
// Dynamic shared memory: [B0][B1][stage 0 .. kStages-1], from a 1024-aligned base.
constexpr uint32_t kSmemBytes = 2 * kBBytes + kStages * kStageBytes + 1024;

#ifdef GPTOSS_WGMMA
template <int N>
__device__ __forceinline__ void wgmma_ss(float* d, uint64_t a_desc, uint64_t b_desc);

// D[64][64] += A[64][16] * B[16][64]: A and B (K-major, 128-byte swizzle) from shared memory.
template <>
__device__ __forceinline__ void wgmma_ss<64>(float* d, uint64_t a_desc, uint64_t b_desc) {
  asm volatile(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, 1, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a_desc), "l"(b_desc));
}

// D[64][128] += A[64][16] * B[16][128]: A and B (K-major, 128-byte swizzle) from shared memory.
template <>
__device__ __forceinline__ void wgmma_ss<128>(float* d, uint64_t a_desc, uint64_t b_desc) {
  asm volatile(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, %64, %65, 1, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a_desc), "l"(b_desc));
}

// D[64][256] += A[64][16] * B[16][256]: A and B (K-major, 128-byte swizzle) from shared memory.
template <>
__device__ __forceinline__ void wgmma_ss<256>(float* d, uint64_t a_desc, uint64_t b_desc) {
  asm volatile(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, 1, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
        "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(a_desc), "l"(b_desc));
}

// The 4 k16 steps of one 64-wide chunk: A rows at `at`, B rows at `bt` (swizzled tiles); the
// descriptors move 32 bytes (16 bf16 of k) per step inside the 128-byte swizzle atom.
template <int N>
__device__ __forceinline__ void mma_chunk(float (&acc)[128], uint32_t at, uint32_t bt) {
#pragma unroll
  for (int s = 0; s < 4; ++s) wgmma_ss<N>(acc, desc_sw128(at + 32 * s), desc_sw128(bt + 32 * s));
}
// Issues chunk j's wgmma, runs `work(arg)` (the next chunk's dequantisation, when `more`) while
// the tensor cores work, then waits for the wgmma.
template <int N, class F>
__device__ __forceinline__ void mma_overlapped(float (&acc)[128], uint32_t at, uint32_t bt, bool more, F& work, int arg) {
  fence_acc(acc);
  wgmma_fence();
  mma_chunk<N>(acc, at, bt);
  wgmma_commit();
  if (more) {
    work(arg);
    fence_proxy_async();
  }
  wgmma_wait0();
  fence_acc(acc);
}
#endif  // GPTOSS_WGMMA

// ---------------------------------------------------------------------------------------------
// kernels
// ---------------------------------------------------------------------------------------------
// grid.x = row blocks of 256 weight rows (fast: consecutive blocks share the token tile in L2),
// grid.y = token-tile slots (expert_route tiles of kWgmmaTileRows sorted rows).
template <bool kMlp1, bool kFast>
__global__ void __launch_bounds__(kWgThreads, 1) bf16_mxfp4w_moe_wgmma(GemmArgs a) {
#ifdef GPTOSS_WGMMA
  static_assert(kWgmmaTileRows == 128 && kWgThreads == 256, "two warpgroups of m64 token rows");
  static_assert(kMxfp4TileRows == 16 && kMxfp4ChunkK == 64 && kMxfp4ChunkBytes == 512, "device layout tiles");
  static_assert(kWgTiles == 2 * (kWgThreads / 32), "two weight tiles per warp");
  static_assert(kStages >= 3 && kStageBytes % 1024 == 0 && kBBytes % 1024 == 0, "swizzled tiles stay 1024-aligned");
  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (tc::smem_addr(smem_raw) + 1023u) & ~1023u;
  const uint32_t stage0 = base + 2 * kBBytes;

  const int slot_tile = blockIdx.y;
  if (slot_tile >= *a.n_tiles) return;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2, wq = warp & 3;
  const int r = lane >> 2, c = lane & 3;
  const int chunks = mxfp4_chunks(a.K / 32);
  const int e = a.tile_expert[slot_tile], row0 = a.tile_row0[slot_tile];
  const int cnt = min(kWgmmaTileRows, a.expert_off[e + 1] - row0);
  const int RT = a.R / kMxfp4TileRows;
  const int tb = int(blockIdx.x) * kWgTiles;  // the block's first weight tile
  const int nvalid = min(kWgRows, a.R - int(blockIdx.x) * kWgRows);
  const int nv = nvalid > 128 ? 256 : nvalid > 64 ? 128 : 64;  // wgmma N for this block

  // Loader, tokens: 16-byte piece lq of rows lrow + 32 p (4 per thread).
  const int lq = tid & 7, lrow = tid >> 3;
  const bf16_t* src[4];
  bool vrow[4];
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const int row = lrow + 32 * p;
    vrow[p] = row < cnt;
    int brow = 0;
    if (vrow[p]) brow = a.gather_k ? a.sorted_slot[row0 + row] / a.gather_k : row0 + row;
    src[p] = a.act + size_t(brow) * a.ld_act + 8 * lq;
  }
  auto load_stage = [&](int j) {
    const uint32_t st = stage0 + uint32_t(j % kStages) * kStageBytes;
    const bool vk = j * 64 + 8 * lq < a.K;
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const int row = lrow + 32 * p;
      const bool v = vk && vrow[p];
      tc::cp_async_16(st + row * 128 + ((lq ^ (row & 7)) << 4), v ? src[p] + j * 64 : src[p], v);
    }
    // Codes: 16 tiles x 32 lanes x 16 bytes, 2 pieces per thread; scales: 16 x 32 bytes, threads < 32.
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int q = tid + kWgThreads * u, t = q >> 5;
      const bool v = tb + t < RT;
      const uint8_t* s = a.wb + mxfp4_block_offset(size_t(e) * RT + (v ? tb + t : 0), chunks, j) + (q & 31) * 16;
      tc::cp_async_16(st + kTokBytes + q * 16, s, v);
    }
    if (tid < 2 * kWgTiles) {
      const int t = tid >> 1;
      const bool v = tb + t < RT;
      const uint8_t* s = a.ws + mxfp4_scale_offset(size_t(e) * RT + (v ? tb + t : 0), chunks, j) + (tid & 1) * 16;
      tc::cp_async_16(st + kTokBytes + kCodeBytes + tid * 16, s, v);
    }
  };

  // Chunk j's weight tiles 2 warp, 2 warp + 1 -> bf16 B buffer j & 1 (rows past R are skipped:
  // they only feed accumulator columns that are never stored).
  auto dequant = [&](int j) {
    const uint32_t st = stage0 + uint32_t(j % kStages) * kStageBytes;
    const uint32_t bb = base + uint32_t(j & 1) * kBBytes;
    const uint32_t odd = r & 1;
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int t = 2 * warp + u;
      if (tb + t >= RT) continue;  // warp-uniform
      uint4 w = tc::lds_128(st + kTokBytes + t * kMxfp4ChunkBytes + lane * 16);
      uint32_t sw = tc::lds_32(st + kTokBytes + kCodeBytes + t * kMxfp4ScaleChunkBytes + r * 4);
      if (odd) {  // swap the chunk's two k32 blocks (words 0,1 <-> 2,3; scale bytes 0,1 <-> 2,3)
        w = make_uint4(w.z, w.w, w.x, w.y);
        sw = (sw >> 16) | (sw << 16);
      }
      uint32_t A[4][4];
      dequant_steps<kFast, 4>(w, sw, 0, A);
      // A[2hl + q] = k32 block h = hl ^ odd, k = 32h + 8c + 4q + 0..3: regs 0, 2 row 2r; 1, 3 row 2r + 1.
#pragma unroll
      for (int hl = 0; hl < 2; ++hl) {
        const int h = hl ^ int(odd);
#pragma unroll
        for (int par = 0; par < 2; ++par) {
          const int n = 16 * t + 2 * r + par;
          sts_128(bb + n * 128 + (((4 * h + c) ^ (n & 7)) << 4), A[2 * hl][par], A[2 * hl][2 + par], A[2 * hl + 1][par],
                  A[2 * hl + 1][2 + par]);
        }
      }
    }
  };

  const bool active = 64 * wg < cnt;  // this warpgroup has token rows
  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.0f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < chunks) load_stage(s);
    tc::cp_async_commit();
  }
  tc::cp_async_wait<kStages - 2>();  // stage 0
  fence_proxy_async();
  __syncthreads();
  dequant(0);
  fence_proxy_async();

  for (int j = 0; j < chunks; ++j) {
    tc::cp_async_wait<kStages - 3>();  // stage j + 1 (for the dequantisation below)
    fence_proxy_async();
    __syncthreads();  // B buffer j & 1 and stage j complete; wgmma j - 1 done everywhere
    if (j + kStages - 1 < chunks) load_stage(j + kStages - 1);  // into the slot of chunk j - 1
    tc::cp_async_commit();
    // ptxas keeps the wgmma asynchronous only when its issue and its wait sit in one straight-line
    // region, so each (active, N) case carries its own copy of the overlapped dequantisation.
    const uint32_t at = stage0 + uint32_t(j % kStages) * kStageBytes + uint32_t(wg) * 64 * 128;
    const uint32_t bt = base + uint32_t(j & 1) * kBBytes;
    const bool next = j + 1 < chunks;
    if (active && nv == 256) {
      mma_overlapped<256>(acc, at, bt, next, dequant, j + 1);
    } else if (active && nv == 128) {
      mma_overlapped<128>(acc, at, bt, next, dequant, j + 1);
    } else if (active) {
      mma_overlapped<64>(acc, at, bt, next, dequant, j + 1);
    } else if (next) {
      dequant(j + 1);
      fence_proxy_async();
    }
  }
  tc::cp_async_wait<0>();
  if (!active) return;

  // acc[4i + 2hr + v] = token row 64 wg + 16 wq + r + 8 hr, block weight row 8i + 2c + v.
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const int n = 8 * i + 2 * c;
    if (8 * i >= nv || n >= nvalid) continue;
    const int grow = int(blockIdx.x) * kWgRows + n;  // even: glu row 2u / output row o
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int m = 64 * wg + 16 * wq + r + 8 * hr;
      if (m >= cnt) continue;
      const float v0 = acc[4 * i + 2 * hr], v1 = acc[4 * i + 2 * hr + 1];
      const float* b = a.bias + size_t(e) * a.R + grow;
      if (kMlp1) {
        const float zv = swiglu(v0 + b[0], v1 + b[1], a.alpha, a.limit);
        reinterpret_cast<__nv_bfloat16*>(a.z)[size_t(row0 + m) * a.I + grow / 2] = __float2bfloat16_rn(zv);
      } else {
        const int slot = a.sorted_slot[row0 + m];
        const float w = a.expert_w[slot];
        *reinterpret_cast<float2*>(a.partial + size_t(slot) * a.R + grow) = make_float2(w * (v0 + b[0]), w * (v1 + b[1]));
      }
    }
  }
#else
  __trap();  // never launched: wgmma_available() requires code compiled for sm_90a
#endif
}

// ---------------------------------------------------------------------------------------------
// launchers
// ---------------------------------------------------------------------------------------------
template <bool kMlp1>
Status launch(const GemmArgs& a, int max_tiles, cudaStream_t stream) {
  auto kernel = a.fast_scales ? bf16_mxfp4w_moe_wgmma<kMlp1, true> : bf16_mxfp4w_moe_wgmma<kMlp1, false>;
  const char* name = kMlp1 ? "bf16_mxfp4w_moe_wgmma<mlp1>" : "bf16_mxfp4w_moe_wgmma<mlp2>";
  GPTOSS_RETURN_IF_ERROR(ensure_smem(reinterpret_cast<const void*>(kernel), kSmemBytes, name));
  const dim3 grid((a.R + kWgRows - 1) / kWgRows, max_tiles);
  kernel<<<grid, kWgThreads, kSmemBytes, stream>>>(a);
  GPTOSS_CUDA_LAUNCH_CHECK(name);
  return Status::Ok();
}

}  // namespace

bool wgmma_available() {
  if (cuda_force_portable()) return false;
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  if (major != 9 || minor != 0) return false;
  // The kernels must come from sm_90a code, not from compute_80 PTX JIT-compiled for this device.
  static const bool built = [] {
    cudaFuncAttributes fa;
    const bool ok = cudaFuncGetAttributes(&fa, bf16_mxfp4w_moe_wgmma<true, true>) == cudaSuccess && fa.ptxVersion >= 90;
    cudaGetLastError();
    return ok;
  }();
  return built;
}

// Floor (gpt-oss-20b, T = 2048, k = 4): 408 GFLOP for mlp1 + mlp2 -> 530 us per layer at
// ~770 TFLOP/s (H100/H200 dense bf16); the target is >= 60% of that (<= 900 us with routing and
// combine). Per 64-wide chunk a block issues 8 m64n256k16 (1024 tensor cycles) against ~200
// instructions of dequantisation and copies per warp, so it is tensor-bound if the pipeline holds.
Status launch_gemm_wgmma(bool mlp1, const GemmArgs& a, int max_tiles, cudaStream_t stream) {
  if (max_tiles <= 0) return Status::Ok();
  if (a.R % kMxfp4TileRows != 0 || a.K % 32 != 0 || a.ld_act % 8 != 0)
    return make_error(StatusCode::InvalidArgument, "moe wgmma: rows must be a multiple of 16, K of 32, ld_act of 8");
  return mlp1 ? launch<true>(a, max_tiles, stream) : launch<false>(a, max_tiles, stream);
}

}  // namespace moe
}  // namespace gptoss
