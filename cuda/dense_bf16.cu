// Dense bf16 matmul: y[t, n] (+)= sum_k x[t, k] * w[n, k] + bias[n], f32 accumulation.
//
// Layouts: x [T][ldx] bf16 (row t, contiguous k), w [N][K] bf16 row-major (nn.Linear), bias [N] f32
// or null, y [T][ldy] bf16 or f32. K is a multiple of 32 but not always of 64 (2880 = 45*64 is,
// 96 is not), so the 64-wide k chunks below may end in a half chunk, which both kernels skip.
//
// Two regimes, both on tensor cores (mma.sync m16n8k16, lane layout and k permutation described in
// mma_sm80.cuh):
//  * bf16_dense_gemv_mma (T <= 16: decode). Memory bound: every weight byte is read once from HBM.
//    A = 16 weight rows (the mma's M), B = up to 8 tokens per n8 tile, read with 16-byte loads (a
//    quad of lanes reads 64 contiguous bytes of one row). Each warp owns one 16-row tile and a 1/S
//    share of its k chunks (chunks s, s + S, ...), S = KS warps of a block x Z blocks. The KS warps
//    of a block reduce through shared memory in a fixed order; the Z blocks of a tile then meet in
//    the workspace: each writes its partial tile, and the last to arrive (an atomic counter per
//    tile) sums the Z partials in z order. Both orders are fixed, so results are deterministic. KS
//    and Z are chosen so that the whole grid is resident at once (one wave) and small N (the router)
//    still spreads over dozens of warps. Each warp issues the loads of U chunks (2 KB of weights
//    each) before its first mma of them (gemv_fence).
//    The GEMV also carries the decode fusions (ops.h attn_input / moe_input):
//      - XS: x is the rmsnorm of an f32 residual, computed by every block into shared memory
//        (block 0 also writes it out); x rows then come from shared memory;
//      - rope: tile m holds rows 64h + 8j + (0..7) and the same + 32 (h = m / 4, j = m % 4), so the
//        lane holding row i of a head also holds row i + 32: bias, bf16 rounding, the YaRN rotation
//        and the KV append happen in the epilogue;
//      - top-k: the warp that finishes the last tile runs the router top-k over all logits (the
//        moe_input fusion of devices without clusters; sm_90 takes cuda/moe_input_cluster.cu).
//    Before its first read of anything an earlier kernel wrote, the GEMV prefetches its first
//    weight lines into L2 and waits on the grid dependency (programmatic dependent launch: the
//    kernel may start while its predecessor is finishing).
//  * bf16_dense_gemm_mma (T > 16). BM x BN output tiles (A = BM tokens, B = BN weight rows), 64-wide
//    k chunks staged in shared memory by a STAGES-deep cp.async pipeline (zero-filled past T, N and
//    K), swizzled 128-byte rows (mma_sm80.cuh) read with 16-byte shared loads, f32 accumulators in
//    registers, fused bias / accumulate epilogue. For T <= 128 the k chunks are split over Z blocks
//    (grid.z) whenever the tiles alone would leave SMs idle, reduced like the GEMV's. On sm_90a,
//    T > 128 takes the warpgroup-MMA GEMM instead (dense_bf16_wgmma.cu).
#include "dense_bf16.cuh"
#include "dense_bf16_wgmma.cuh"
#include "dense_gemv_resident.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "cuda_check.cuh"
#include "device_common.cuh"
#include "kernel_caps.cuh"
#include "mma_sm80.cuh"
#include "moe_input_cluster.cuh"
#include "moe_input_expert_split.cuh"
#include "pdl.cuh"
#include "router_topk.cuh"

namespace gptoss {
namespace {

// Workspace layout: kCounters u32 arrival counters (one per split tile; the last one counts the
// finished tiles of a fused top-k), then f32 partial tiles.
constexpr int kCounters = 4096;
constexpr int kDoneCounter = kCounters - 1;
constexpr size_t kCounterBytes = size_t(kCounters) * 4;

struct DenseArgs : DenseCoreArgs {
  int y_pairs;     // 1: y[t, n..n+1] (n even) may be written with one 4- or 8-byte store
  // Split-K over Z blocks (Z == 1: none).
  int Z;
  float* partials;
  unsigned* counters;
  // XS prologue: x = rmsnorm(xf) (f32 [T][ldxf], weight norm_w [K]) into shared memory; block 0
  // also writes it to xn [T][ldxn] bf16 when xn is set.
  const float* xf;
  int ldxf;
  const float* norm_w;
  float eps;
  bf16_t* xn;
  int ldxn;
  // RoPE epilogue (rows paired (i, i + 32) per 64-row head; rows < rope_rows are rotated).
  int rope;
  int rope_rows;
  const float* cos;
  const float* sin;
  const int32_t* tok_pos;
  // KV append epilogue: rows [q_rows, q_rows + kv_rows) are k, the next kv_rows are v.
  int append;
  int q_rows, kv_rows, n_kv;
  bf16_t* cache_k;
  bf16_t* cache_v;
  int cache_slots, cache_len;
  const int32_t* tok_seq;
  const int32_t* seq_slot;
  DeviceErrorRecord* errors;
  // Router top-k epilogue over y (f32 logits [T][ldy], E = N).
  int topk;
  int32_t* expert_idx;
  float* expert_w;
  uint32_t zero;   // always 0; the compiler cannot know it (see gemv_fence)
  int preload;     // GEMV: the first group's weights into registers before pdl_wait (GPT_OSS_C_GEMV_PRELOAD=0: off)
};

__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p)); }

__device__ __forceinline__ void store_one(const DenseArgs& a, int t, int n, float v) {
  if (a.bias) v += a.bias[n];
  const size_t off = size_t(t) * a.ldy + n;
  if (a.y_f32) {
    float* y = static_cast<float*>(a.y) + off;
    if (a.accumulate) v += *y;
    *y = v;
  } else {
    static_cast<__nv_bfloat16*>(a.y)[off] = __float2bfloat16_rn(v);
  }
}

// n even, n + 1 < N, and a.y_pairs: the pair is naturally aligned.
__device__ __forceinline__ void store_pair(const DenseArgs& a, int t, int n, float v0, float v1) {
  if (a.bias) {
    v0 += a.bias[n];
    v1 += a.bias[n + 1];
  }
  const size_t off = size_t(t) * a.ldy + n;
  if (a.y_f32) {
    float2* y = reinterpret_cast<float2*>(static_cast<float*>(a.y) + off);
    if (a.accumulate) {
      const float2 o = *y;
      v0 += o.x;
      v1 += o.y;
    }
    *y = make_float2(v0, v1);
  } else {
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(a.y) + off) = __floats2bfloat162_rn(v0, v1);
  }
}

__device__ __forceinline__ void store_c_pair(const DenseArgs& a, int t, int n, float v0, float v1) {
  if (t >= a.T || n >= a.N) return;
  if (a.y_pairs && n + 1 < a.N) {
    store_pair(a, t, n, v0, v1);
  } else {
    store_one(a, t, n, v0);
    if (n + 1 < a.N) store_one(a, t, n + 1, v1);
  }
}

__device__ __forceinline__ float round_bf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

// The attn_input epilogue for token t and the row pair (row, row + 32) of one head (row % 64 < 32):
// bias, bf16 rounding (the qkv output dtype), the YaRN rotation for q and k rows (in f32 on the
// rounded values, rounded again: exactly what the separate rope op does), the store into the q|k|v
// buffer and, for k and v rows, the KV-cache append at tok_pos % cache_len.
__device__ __forceinline__ void rope_pair_store(const DenseArgs& a, int t, int row, float v0, float v1) {
  const int row2 = row + 32;
  float x0 = round_bf16(v0 + (a.bias ? a.bias[row] : 0.0f));
  float x1 = round_bf16(v1 + (a.bias ? a.bias[row2] : 0.0f));
  const int pos = a.tok_pos[t];
  if (row < a.rope_rows) {
    const int i = row & 63;
    const float c = __ldg(a.cos + size_t(pos) * 32 + i), s = __ldg(a.sin + size_t(pos) * 32 + i);
    const float r0 = x0 * c - x1 * s, r1 = x1 * c + x0 * s;
    x0 = r0;
    x1 = r1;
  }
  const __nv_bfloat16 b0 = __float2bfloat16_rn(x0), b1 = __float2bfloat16_rn(x1);
  __nv_bfloat16* y = static_cast<__nv_bfloat16*>(a.y) + size_t(t) * a.ldy;
  y[row] = b0;
  y[row2] = b1;
  if (!a.append || row < a.q_rows) return;
  const int seq = a.tok_seq[t];
  const int slot = a.seq_slot[seq];
  if (slot < 0 || slot >= a.cache_slots) {
    if (row == a.q_rows) record_device_error(a.errors, kDevErrKVAppendSlot, seq, slot, a.cache_slots);
    return;
  }
  const bool is_v = row >= a.q_rows + a.kv_rows;
  const int rr = row - a.q_rows - (is_v ? a.kv_rows : 0);
  __nv_bfloat16* cache = reinterpret_cast<__nv_bfloat16*>(is_v ? a.cache_v : a.cache_k) +
                         ((size_t(slot) * a.n_kv + (rr >> 6)) * a.cache_len + pos % a.cache_len) * kHeadDim;
  cache[rr & 63] = b0;
  cache[(rr & 63) + 32] = b1;
}

// ---------------------------------------------------------------------------------------------
// kernels
// ---------------------------------------------------------------------------------------------
// Any K and any alignment (the tensor-core kernels need K % 32 == 0 and 16-byte aligned rows):
// one warp per output y[t, n], lanes striding k, a fixed-order warp reduction. Correct for every
// shape the op allows; not a fast path (the model's K are all multiples of 32).
__global__ void __launch_bounds__(256) bf16_dense_generic(DenseArgs a) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (n >= a.N) return;
  const __nv_bfloat16* w = reinterpret_cast<const __nv_bfloat16*>(a.w) + size_t(n) * a.K;
  for (int t = blockIdx.y; t < a.T; t += gridDim.y) {
    const __nv_bfloat16* x = reinterpret_cast<const __nv_bfloat16*>(a.x) + size_t(t) * a.ldx;
    float s = 0.0f;
    for (int k = lane; k < a.K; k += 32) s = fmaf(__bfloat162float(x[k]), __bfloat162float(w[k]), s);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) store_one(a, t, n, s);
  }
}

constexpr int kGemvWarps = 8;
constexpr int kGemmPrefetch = 4;  // chunks per GEMM block prefetched to L2 before pdl_wait
constexpr int kGemvPrefetch = 8;  // chunks per warp prefetched to L2 ahead of the loads (2 KB each)

// One 32-wide half chunk at k of the GEMV: 16 bytes of weight rows ra and rb and of each of the NT
// token rows (an invalid row or token reads row 0: its garbage stays in its own mma row or column,
// which is never stored). XS: the token rows are in shared memory at byte addresses xs[nt].
template <int NT, bool XS>
__device__ __forceinline__ void gemv_load_x(const bf16_t* const (&xp)[NT], const uint32_t (&xs)[NT], int k,
                                            uint4 (&xr)[NT][2], int h) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    if constexpr (XS) {
      xr[nt][h] = tc::lds_128(xs[nt] + 2 * k);
    } else {
      xr[nt][h] = tc::ldg_128(xp[nt] + k);
    }
  }
}

template <int NT, bool XS>
__device__ __forceinline__ void gemv_load(const bf16_t* wa, const bf16_t* wb, const bf16_t* const (&xp)[NT],
                                          const uint32_t (&xs)[NT], int k, uint4& wra, uint4& wrb,
                                          uint4 (&xr)[NT][2], int h) {
  wra = tc::ldg_stream_128(wa + k);
  wrb = tc::ldg_stream_128(wb + k);
  gemv_load_x<NT, XS>(xp, xs, k, xr, h);
}

// Makes every weight register of a group depend on every load of the group (through `zero`, 0 at
// run time), so that ptxas issues all the group's loads before the first mma instead of
// interleaving them (which keeps only ~3 loads in flight per warp). Costs a few LOP3s per group.
template <int U, int NT>
__device__ __forceinline__ void gemv_fence(uint4 (&wra)[U][2], uint4 (&wrb)[U][2], const uint4 (&xr)[U][NT][2],
                                           uint32_t zero) {
  uint32_t dep = 0;
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      dep ^= wra[u][h].x ^ wrb[u][h].x;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) dep ^= xr[u][nt][h].x;
    }
  dep &= zero;
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int h = 0; h < 2; ++h) wra[u][h].x ^= dep;
}

// The two k16 steps of a half chunk (words 0,1 then 2,3 of each 16-byte piece).
template <int NT>
__device__ __forceinline__ void gemv_mma(float (&acc)[NT][4], const uint4& wra, const uint4& wrb,
                                         const uint4 (&xr)[NT][2], int h) {
#pragma unroll
  for (int q = 0; q < 2; ++q)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
      tc::mma_bf16_16816(acc[nt], tc::word(wra, 2 * q), tc::word(wrb, 2 * q), tc::word(wra, 2 * q + 1),
                         tc::word(wrb, 2 * q + 1), tc::word(xr[nt][h], 2 * q), tc::word(xr[nt][h], 2 * q + 1));
}

// Bytes per token row of the XS shared-memory copy of x: K bf16 plus 64 bytes, so that the two
// rows a quarter warp reads fall on different bank groups (2K + 64 = 64 mod 128 when K % 64 == 0).
__host__ __device__ __forceinline__ int gemv_xs_row_bytes(int K) { return 2 * K + 64; }

// Decode GEMV. Block = 8 warps = (8 / KS) row tiles of 16 rows x KS k-splits; grid.x = groups of
// row tiles x Z k-splits (z fastest). All tokens (T <= 8 NT) in one pass. Each lane holds, per
// chunk, 2 x 16 bytes of row ra and of row rb and 2 x 16 bytes of each of its NT tokens.
template <int NT, int KS, int U, bool XS>
__global__ void __launch_bounds__(kGemvWarps * 32) bf16_dense_gemv_mma(DenseArgs a) {
  static_assert(kGemvWarps % KS == 0, "KS must divide the warps of a block");
  static_assert(NT >= 1 && NT <= 2 && U >= 1, "GEMV handles up to 16 tokens per pass");
  static_assert(!XS || NT == 1, "the fused-norm GEMV serves up to 8 tokens");
  constexpr int kGroups = kGemvWarps / KS;
  __shared__ float red[KS > 1 ? kGemvWarps : 1][NT * 4][32];
  __shared__ float norm_red[32];
  extern __shared__ uint4 xs_smem[];  // XS: [T][gemv_xs_row_bytes(K) / 2] bf16

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r = lane >> 2, c = lane & 3;
  const int grp = warp / KS, ks = warp % KS;
  const int z = blockIdx.x % a.Z;
  const int tile = (blockIdx.x / a.Z) * kGroups + grp;
  const int tiles = (a.N + 15) / 16;
  const int S = KS * a.Z, s0 = z * KS + ks;
  int ra, rb;
  if (a.rope) {  // rows i and i + 32 of one head (N % 64 == 0)
    ra = (tile >> 2) * 64 + (tile & 3) * 8 + r;
    rb = ra + 32;
  } else {
    ra = tile * 16 + r;
    rb = ra + 8;
  }
  const bool va = ra < a.N, vb = rb < a.N;
  const bf16_t* wa = a.w + size_t(va ? ra : 0) * a.K + 8 * c;
  const bf16_t* wb = a.w + size_t(vb ? rb : 0) * a.K + 8 * c;
  const bf16_t* xp[NT];
  uint32_t xs[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int t = 8 * nt + r;
    xp[nt] = a.x + size_t(t < a.T ? t : 0) * a.ldx + 8 * c;
    xs[nt] = tc::smem_addr(xs_smem) + (t < a.T ? t : 0) * gemv_xs_row_bytes(a.K) + 16 * c;
  }
  const int full = a.K / 64;

  // Weights never depend on an earlier kernel: load this warp's first group of U chunks into
  // registers and start pulling the next ones (up to kGemvPrefetch chunks; one 128-byte line per row
  // and chunk) into L2 before waiting for the predecessor and before the norm prologue, so that the
  // first round trip overlaps those instead of following them (ncu, session 11: in the fused q/k/v
  // GEMV the warps stalled on the norm's x loads, then on the first weight group).
  const bool pre = a.preload && s0 + (U - 1) * S < full;
  uint4 pwa[U][2], pwb[U][2];
  if (pre) {
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        pwa[u][h] = tc::ldg_stream_128(wa + (s0 + u * S) * 64 + 32 * h);
        pwb[u][h] = tc::ldg_stream_128(wb + (s0 + u * S) * 64 + 32 * h);
      }
  }
  if (c == 0) {
    for (int j = pre ? s0 + U * S : s0, n = 0; j < full && n < kGemvPrefetch; j += S, ++n) {
      prefetch_l2(wa + j * 64);
      prefetch_l2(wb + j * 64);
    }
  }
  pdl_wait();

  if constexpr (XS) {
    // x[t] = rmsnorm(xf[t]) * norm_w in f32, rounded to bf16. One token: rmsnorm_row over the block,
    // as f32_rmsnorm (cuda/rmsnorm.cu, 256 threads). Several: warp w normalises tokens w, w + 8, ...
    // at once (a token after token block loop took ~2 us per token); its sum of squares runs in
    // another order, so xn may differ from f32_rmsnorm's by one bf16 ulp (test_fused_ops allows it).
    const float4* g4 = reinterpret_cast<const float4*>(a.norm_w);
    char* xs_bytes = reinterpret_cast<char*>(xs_smem);
    auto store = [&](int t, int i, float4 v) {
      const uint2 packed = make_uint2(pack_bf16x2(v.x, v.y), pack_bf16x2(v.z, v.w));
      *reinterpret_cast<uint2*>(xs_bytes + t * gemv_xs_row_bytes(a.K) + 8 * i) = packed;
      if (a.xn != nullptr && blockIdx.x == 0) *reinterpret_cast<uint2*>(a.xn + size_t(t) * a.ldxn + 4 * i) = packed;
    };
    if (a.T == 1) {
      rmsnorm_row(reinterpret_cast<const float4*>(a.xf), g4, a.K / 4, a.K, a.eps, norm_red,
                  [&](int i, float4 v) { store(0, i, v); });
    } else {
      for (int t = warp; t < a.T; t += kGemvWarps) {
        const float4* x4 = reinterpret_cast<const float4*>(a.xf + size_t(t) * a.ldxf);
        float ss = 0.0f;
        for (int i = lane; i < a.K / 4; i += 32) {
          const float4 v = x4[i];
          ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
        const float inv = rsqrtf(warp_sum(ss) / float(a.K) + a.eps);
        for (int i = lane; i < a.K / 4; i += 32) {
          const float4 v = x4[i], g = __ldg(g4 + i);
          store(t, i, make_float4(v.x * inv * g.x, v.y * inv * g.y, v.z * inv * g.z, v.w * inv * g.w));
        }
      }
    }
    __syncthreads();
  }

  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;

  // Chunks j = s0, s0 + S, ...: groups of U whole chunks with no branch inside (so that all U
  // chunks' loads are in flight together), then single whole chunks, then the last half chunk
  // when K % 64 == 32.
  int j0 = s0;
  if (pre) {
    uint4 xr[U][NT][2];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int h = 0; h < 2; ++h) gemv_load_x<NT, XS>(xp, xs, (s0 + u * S) * 64 + 32 * h, xr[u], h);
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int h = 0; h < 2; ++h) gemv_mma<NT>(acc, pwa[u][h], pwb[u][h], xr[u], h);
    j0 += U * S;
  }
  for (; j0 + (U - 1) * S < full; j0 += U * S) {
    uint4 wra[U][2], wrb[U][2], xr[U][NT][2];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        gemv_load<NT, XS>(wa, wb, xp, xs, (j0 + u * S) * 64 + 32 * h, wra[u][h], wrb[u][h], xr[u], h);
    gemv_fence<U, NT>(wra, wrb, xr, a.zero);
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int h = 0; h < 2; ++h) gemv_mma<NT>(acc, wra[u][h], wrb[u][h], xr[u], h);
  }
  for (; j0 < full; j0 += S) {
    uint4 wra[2], wrb[2], xr[NT][2];
#pragma unroll
    for (int h = 0; h < 2; ++h) gemv_load<NT, XS>(wa, wb, xp, xs, j0 * 64 + 32 * h, wra[h], wrb[h], xr, h);
#pragma unroll
    for (int h = 0; h < 2; ++h) gemv_mma<NT>(acc, wra[h], wrb[h], xr, h);
  }
  if (j0 == full && a.K % 64 != 0) {
    uint4 wra, wrb, xr[NT][2];
    gemv_load<NT, XS>(wa, wb, xp, xs, j0 * 64, wra, wrb, xr, 0);
    gemv_mma<NT>(acc, wra, wrb, xr, 0);
  }
  pdl_launch_dependents();  // the weights are read: the next kernel may start its own prefetch

  if (KS > 1) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) red[KS > 1 ? warp : 0][nt * 4 + i][lane] = acc[nt][i];
    __syncthreads();
    if (ks != 0) return;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < KS; ++w) s += red[KS > 1 ? grp * KS + w : 0][nt * 4 + i][lane];
        acc[nt][i] = s;
      }
  }
  if (tile >= tiles) return;  // a padding group of the last block

  if (a.Z > 1) {  // meet the other blocks of this tile; the last to arrive sums all Z in z order
    constexpr int kPart = NT * 4 * 32;
    float* part = a.partials + size_t(tile) * a.Z * kPart;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) part[size_t(z) * kPart + (nt * 4 + i) * 32 + lane] = acc[nt][i];
    __threadfence();
    __syncwarp();
    unsigned prev = 0;
    if (lane == 0) prev = atomicAdd(a.counters + tile, 1u);
    prev = __shfl_sync(0xffffffffu, prev, 0);
    if (prev != unsigned(a.Z - 1)) return;
    __threadfence();
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
    for (int zz = 0; zz < a.Z; ++zz)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[nt][i] += __ldcg(part + size_t(zz) * kPart + (nt * 4 + i) * 32 + lane);
    if (lane == 0) a.counters[tile] = 0u;  // ready for the next launch
  }

  // C tile: rows = weight rows (ra, rb), columns = tokens 2c, 2c + 1 of each n8 tile.
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int t = 8 * nt + 2 * c + i;
      if (t >= a.T) continue;
      if (a.rope) {
        rope_pair_store(a, t, ra, acc[nt][i], acc[nt][2 + i]);
      } else {
        if (va) store_one(a, t, ra, acc[nt][i]);
        if (vb) store_one(a, t, rb, acc[nt][2 + i]);
      }
    }
  }

  if (a.topk) {  // the warp that stores the last tile selects the experts of every token
    __threadfence();
    __syncwarp();
    unsigned prev = 0;
    if (lane == 0) prev = atomicAdd(a.counters + kDoneCounter, 1u);
    prev = __shfl_sync(0xffffffffu, prev, 0);
    if (prev != unsigned(tiles - 1)) return;
    __threadfence();
    // Every token's logits into shared memory past the x rows in one round of L2 loads, then the
    // top-k of each token from there (token after token used to pay two L2 round trips each).
    const int k = a.topk, E = a.N;
    float* lg = reinterpret_cast<float*>(reinterpret_cast<char*>(xs_smem) + a.T * gemv_xs_row_bytes(a.K));
    for (int i = lane; i < a.T * E; i += 32) lg[i] = __ldcg(static_cast<const float*>(a.y) + size_t(i / E) * a.ldy + i % E);
    __syncwarp();
    for (int t = 0; t < a.T; ++t)
      warp_router_topk<true>(lg + t * E, E, k, a.expert_idx + size_t(t) * k, a.expert_w + size_t(t) * k);
    if (lane == 0) a.counters[kDoneCounter] = 0u;
  }
}

// Prefill GEMM. Block = WM x WN warps, output tile BM tokens x BN rows; warp (wm, wn) owns
// (BM / WM) tokens x (BN / WN) rows = MT m16 tiles x NT n8 tiles. Shared memory per stage:
// BM token rows then BN weight rows, 128 swizzled bytes each (one 64-wide k chunk). grid.z = Z
// k-splits (SPLIT kernels only): block z takes chunks [z C / Z, (z + 1) C / Z) of the C chunks.
template <int BM, int BN, int WM, int WN, int STAGES, bool SPLIT>
__global__ void __launch_bounds__(WM * WN * 32) bf16_dense_gemm_mma(DenseArgs a) {
  constexpr int kThreads = WM * WN * 32;
  constexpr int TM = BM / WM, TN = BN / WN;
  constexpr int MT = TM / 16, NT = TN / 8;
  constexpr int kRowsPerPass = kThreads / 8;  // the loader moves 8 chunks of 16 bytes per row
  constexpr int kPasses = (BM + BN) / kRowsPerPass;
  static_assert(TM % 16 == 0 && TN % 8 == 0, "warp tile must be whole mma tiles");
  static_assert(BM % kRowsPerPass == 0 && BN % kRowsPerPass == 0, "loader rows must split into A and B");
  static_assert(STAGES >= 2, "need at least double buffering");
  extern __shared__ uint4 smem[];  // [STAGES][BM + BN][8]
  __shared__ int last_split;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int r = lane >> 2, c = lane & 3;
  const int wm = warp / WN, wn = warp % WN;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;

  // Loader: this thread copies chunk lq of rows lrow + kRowsPerPass * p, p < kPasses.
  const int lq = tid & 7, lrow = tid >> 3;
  const bf16_t* src[kPasses];
  bool vrow[kPasses];
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    const int row = lrow + kRowsPerPass * p;
    if (row < BM) {
      const int t = m0 + row;
      vrow[p] = t < a.T;
      src[p] = a.x + size_t(vrow[p] ? t : 0) * a.ldx + 8 * lq;
    } else {
      const int n = n0 + row - BM;
      vrow[p] = n < a.N;
      src[p] = a.w + size_t(vrow[p] ? n : 0) * a.K + 8 * lq;
    }
  }
  const uint32_t smem0 = tc::smem_addr(smem);
  constexpr uint32_t kStageBytes = (BM + BN) * 128;
  auto load_stage = [&](int slot, int chunk) {
    const int k = chunk * 64 + 8 * lq;
    const bool vk = k < a.K;
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int row = lrow + kRowsPerPass * p;
      const uint32_t dst = smem0 + slot * kStageBytes + row * 128 + tc::swizzle_chunk(row, lq) * 16;
      tc::cp_async_16(dst, vk && vrow[p] ? src[p] + chunk * 64 : src[p], vk && vrow[p]);
    }
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;

  const int chunks = (a.K + 63) / 64;
  const int c0 = SPLIT ? int(blockIdx.z) * chunks / a.Z : 0;
  const int nchunks = SPLIT ? int(blockIdx.z + 1) * chunks / a.Z - c0 : chunks;

  // Weights never depend on an earlier kernel: pull this block's first kGemmPrefetch chunks of
  // weight rows (one 128-byte line per row and chunk) into L2 while the predecessor finishes
  // (programmatic dependent launch), then wait for it before touching x or y.
  for (int i = tid; i < BN * kGemmPrefetch; i += kThreads) {
    const int row = i % BN, jj = i / BN, n = n0 + row;
    if (jj < nchunks && n < a.N && (c0 + jj) * 64 < a.K) prefetch_l2(a.w + size_t(n) * a.K + (c0 + jj) * 64);
  }
  pdl_wait();
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nchunks) load_stage(s, c0 + s);
    tc::cp_async_commit();
  }

  for (int jj = 0; jj < nchunks; ++jj) {
    const int j = c0 + jj;
    tc::cp_async_wait<STAGES - 2>();
    __syncthreads();  // chunk j has landed for every thread; slot (jj - 1) % STAGES is free
    const int jn = jj + STAGES - 1;
    if (jn < nchunks) load_stage(jn % STAGES, c0 + jn);
    tc::cp_async_commit();

    const uint32_t stage = smem0 + (jj % STAGES) * kStageBytes;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (j * 64 + 32 * h >= a.K) continue;  // the zero-filled half of a last half chunk
      uint4 af[MT][2], bf[NT];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int row = wm * TM + 16 * mt + r;
        af[mt][0] = tc::lds_128(stage + row * 128 + tc::swizzle_chunk(row, 4 * h + c) * 16);
        af[mt][1] = tc::lds_128(stage + (row + 8) * 128 + tc::swizzle_chunk(row + 8, 4 * h + c) * 16);
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int row = BM + wn * TN + 8 * nt + r;
        bf[nt] = tc::lds_128(stage + row * 128 + tc::swizzle_chunk(row, 4 * h + c) * 16);
      }
#pragma unroll
      for (int q = 0; q < 2; ++q)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
            tc::mma_bf16_16816(acc[mt][nt], tc::word(af[mt][0], 2 * q), tc::word(af[mt][1], 2 * q),
                               tc::word(af[mt][0], 2 * q + 1), tc::word(af[mt][1], 2 * q + 1),
                               tc::word(bf[nt], 2 * q), tc::word(bf[nt], 2 * q + 1));
    }
  }
  tc::cp_async_wait<0>();
  pdl_launch_dependents();  // the weights are read: the next kernel may start its own prefetch

  if (SPLIT && a.Z > 1) {  // meet the other splits of this tile; the last to arrive sums all Z in z order
    constexpr int kPart = BM * BN;  // floats per partial tile: element e of thread tid at e * kThreads + tid
    const int tile = blockIdx.y * gridDim.x + blockIdx.x;
    float* part = a.partials + size_t(tile) * a.Z * kPart;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i)
          part[size_t(blockIdx.z) * kPart + ((mt * NT + nt) * 4 + i) * kThreads + tid] = acc[mt][nt][i];
    __threadfence();
    __syncthreads();
    if (tid == 0) last_split = atomicAdd(a.counters + tile, 1u) == unsigned(a.Z - 1);
    __syncthreads();
    if (!last_split) return;
    __threadfence();
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;
    for (int zz = 0; zz < a.Z; ++zz) {
      const float* pz = part + size_t(zz) * kPart + tid;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[mt][nt][i] += __ldcg(pz + ((mt * NT + nt) * 4 + i) * kThreads);
    }
    if (tid == 0) a.counters[tile] = 0u;  // ready for the next launch
  }

  // C tile: rows = tokens (r, r + 8 of each m16 tile), columns = weight rows 2c, 2c + 1.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int t = m0 + wm * TM + 16 * mt + r;
      const int n = n0 + wn * TN + 8 * nt + 2 * c;
      store_c_pair(a, t, n, acc[mt][nt][0], acc[mt][nt][1]);
      store_c_pair(a, t + 8, n, acc[mt][nt][2], acc[mt][nt][3]);
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// launchers
// ---------------------------------------------------------------------------------------------
namespace {

constexpr int kGemvU = 2;                     // chunks per load group: <= ~100 registers, 2-3 blocks per SM
constexpr int kXsMaxBytes = 64 * 1024;        // fused-norm x in shared memory (T = 8 at K = 2880: 46.6 KB)
constexpr int kGemmSplitMaxT = 128;           // T <= 128: 64 x 64 tiles, split-K when tiles are few

// Resident blocks per SM of `kernel` (cached per kernel and dynamic shared memory size).
int blocks_per_sm(void (*kernel)(DenseArgs), int threads, size_t smem) {
  static thread_local std::vector<std::pair<std::pair<const void*, size_t>, int>> cache;
  const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), smem);
  for (const auto& e : cache)
    if (e.first == key) return e.second;
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem) != cudaSuccess) {
    cudaGetLastError();
    n = 1;
  }
  cache.push_back({key, std::max(n, 1)});
  return std::max(n, 1);
}

// Points a at the workspace's counters and partials, or leaves Z = 1 when it cannot hold
// `part_floats` floats for each of `splits` partial tiles over `tiles` counters.
int fit_split(DenseArgs* a, const DenseWorkspace& ws, int tiles, int Z, size_t part_floats) {
  a->Z = 1;
  if (Z <= 1 || ws.ptr == nullptr || ws.bytes <= kCounterBytes || tiles >= kDoneCounter) return 1;
  const size_t avail = (ws.bytes - kCounterBytes) / 4;
  Z = int(std::min<size_t>(size_t(Z), avail / (size_t(tiles) * part_floats)));
  if (Z <= 1) return 1;
  a->Z = Z;
  a->counters = static_cast<unsigned*>(ws.ptr);
  a->partials = reinterpret_cast<float*>(static_cast<char*>(ws.ptr) + kCounterBytes);
  return Z;
}

template <int NT, int KS, bool XS>
Status launch_gemv(const DenseArgs& a, int groups, size_t smem, bool pdl, cudaStream_t stream) {
  return launch_pdl(bf16_dense_gemv_mma<NT, KS, kGemvU, XS>, dim3(groups * a.Z), dim3(kGemvWarps * 32), smem, pdl,
                    stream, "bf16_dense_gemv_mma", a);
}

template <int NT, bool XS>
Status launch_gemv_ks(const DenseArgs& a, int ks, int groups, size_t smem, bool pdl, cudaStream_t stream) {
  switch (ks) {
    case 1: return launch_gemv<NT, 1, XS>(a, groups, smem, pdl, stream);
    case 2: return launch_gemv<NT, 2, XS>(a, groups, smem, pdl, stream);
    case 4: return launch_gemv<NT, 4, XS>(a, groups, smem, pdl, stream);
    default: return launch_gemv<NT, 8, XS>(a, groups, smem, pdl, stream);
  }
}

// Decode GEMV (T <= 16). KS: the most warps per tile (up to 8) that keep the grid to one wave of
// resident blocks and give each warp >= 2 chunks. Z: when the tiles x KS warps would fill less than
// a quarter of the resident warp slots (the router's N = 32, small N at any T <= 16), split each
// tile over Z blocks as well, about one group of U chunks per warp, within one wave.
template <int NT, bool XS>
Status gemv(DenseArgs a, const DenseWorkspace& ws, size_t smem, cudaStream_t stream) {
  if constexpr (XS) {  // opt in to > 48 KB of dynamic shared memory (x staged in shared memory)
    GPTOSS_RETURN_IF_ERROR(ensure_smem(bf16_dense_gemv_mma<NT, 1, kGemvU, XS>, kXsMaxBytes, "bf16_dense_gemv_mma"));
    GPTOSS_RETURN_IF_ERROR(ensure_smem(bf16_dense_gemv_mma<NT, 2, kGemvU, XS>, kXsMaxBytes, "bf16_dense_gemv_mma"));
    GPTOSS_RETURN_IF_ERROR(ensure_smem(bf16_dense_gemv_mma<NT, 4, kGemvU, XS>, kXsMaxBytes, "bf16_dense_gemv_mma"));
    GPTOSS_RETURN_IF_ERROR(ensure_smem(bf16_dense_gemv_mma<NT, 8, kGemvU, XS>, kXsMaxBytes, "bf16_dense_gemv_mma"));
  }
  const int tiles = (a.N + 15) / 16, chunks = (a.K + 63) / 64;
  const int bps = blocks_per_sm(bf16_dense_gemv_mma<NT, 8, kGemvU, XS>, kGemvWarps * 32, smem);
  const long cap_blocks = ws.num_sms > 0 ? long(ws.num_sms) * bps : 1L << 30;
  int ks = kGemvWarps;
  auto groups_for = [&](int k) { return (tiles + kGemvWarps / k - 1) / (kGemvWarps / k); };
  while (ks > 1 && (groups_for(ks) > cap_blocks || chunks < 2 * ks)) ks /= 2;
  const int groups = groups_for(ks);
  int Z = 1;
  if (ws.num_sms > 0 && long(tiles) * ks * 4 <= cap_blocks * kGemvWarps) {
    Z = (chunks + ks * kGemvU - 1) / (ks * kGemvU);
    Z = int(std::min<long>({long(Z), std::max(1L, cap_blocks / groups), 16L}));
  }
  fit_split(&a, ws, tiles, Z, size_t(NT) * 4 * 32);
  return launch_gemv_ks<NT, XS>(a, ks, groups, smem, ws.pdl, stream);
}

template <int BM, int BN, int WM, int WN, int STAGES, bool SPLIT>
Status launch_gemm(DenseArgs a, const DenseWorkspace& ws, cudaStream_t stream) {
  constexpr int kSmem = STAGES * (BM + BN) * 128;
  auto kernel = bf16_dense_gemm_mma<BM, BN, WM, WN, STAGES, SPLIT>;
  GPTOSS_RETURN_IF_ERROR(ensure_smem(kernel, kSmem, "bf16_dense_gemm_mma"));
  const int mt = (a.T + BM - 1) / BM, nt = (a.N + BN - 1) / BN, tiles = mt * nt, chunks = (a.K + 63) / 64;
  int Z = 1;
  if (SPLIT && ws.num_sms > 0 && tiles < 2 * ws.num_sms)  // ~2 blocks per SM, >= 4 chunks per split
    Z = std::min({(2 * ws.num_sms + tiles - 1) / tiles, std::max(1, chunks / 4), 16});
  fit_split(&a, ws, tiles, Z, size_t(BM) * BN);
  return launch_pdl(kernel, dim3(mt, nt, a.Z), dim3(WM * WN * 32), kSmem, ws.pdl, stream, "bf16_dense_gemm_mma", a);
}

// The split-K GEMM for 16 < T <= kGemmSplitMaxT (batched decode, weight-bound): 64 tokens x 128
// weight rows (8 warps, 3 stages: 72 KB, three blocks per SM), which reads each token tile half as
// often as 64 x 64; N < 256 (the router's 32 rows) keeps 64 x 64, which wastes less of the tile.
// H200 (kernel bench, 20b shapes; 64 x 64 -> 64 x 128 x 3): qkv T=64 25.7 -> 21.7 us, out T=64
// 26.5 -> 24.3, out T=128 40.7 -> 32.4, unembedding T=64 550 -> 448; router T=64 11.0 vs 12.7.
Status launch_gemm_mid(const DenseArgs& a, const DenseWorkspace& ws, cudaStream_t stream) {
  if (a.N >= 256) return launch_gemm<64, 128, 2, 4, 3, true>(a, ws, stream);
  return launch_gemm<64, 64, 2, 2, 4, true>(a, ws, stream);
}

// A/B knob GPT_OSS_C_GEMV_PRELOAD=0: the GEMV issues its first weight loads after pdl_wait and the norm.
bool gemv_preload_enabled() {
  static const bool on = !env_knob_off("GPT_OSS_C_GEMV_PRELOAD");
  return on;
}

DenseArgs dense_args(const DenseParams& p) {
  DenseArgs a;
  std::memset(static_cast<void*>(&a), 0, sizeof(a));
  static_cast<DenseCoreArgs&>(a) = dense_core_args(p);
  const size_t ybytes = a.y_f32 ? 4 : 2;
  a.y_pairs = p.ldy % 2 == 0 && (reinterpret_cast<uintptr_t>(p.y) % (2 * ybytes)) == 0;
  a.Z = 1;
  a.zero = 0;
  a.preload = gemv_preload_enabled();
  return a;
}

// The fused-norm prologue: x = rmsnorm(n.x) * n.w into shared memory (block 0 writes it to n.out).
void set_norm(DenseArgs* a, const RMSNormParams& n) {
  a->xf = n.x;
  a->ldxf = n.ldx;
  a->norm_w = n.w;
  a->eps = n.eps;
  a->xn = static_cast<bf16_t*>(n.out);
  a->ldxn = n.ldo;
}

// What the fused kernels need from the norm and the dense call that reads its output.
bool norm_dense_fusable(const RMSNormParams& n, const DenseParams& d) {
  const int T = d.T;
  return T >= 1 && T <= 8 && n.T == T && n.rows == nullptr && n.out_type == DType::BF16 && d.x_type == DType::BF16 &&
         !d.accumulate && d.x == n.out && d.ldx == n.ldo && d.K == n.H && d.K > 0 && d.K % 32 == 0 &&
         T * gemv_xs_row_bytes(d.K) <= kXsMaxBytes && n.x && n.w && n.out && d.w && d.y && n.ldx % 4 == 0 &&
         n.ldx >= n.H && n.ldo % 4 == 0 && n.ldo >= n.H && aligned_to(n.x, 16) && aligned_to(n.w, 16) && aligned_to(d.w, 16) &&
         (reinterpret_cast<uintptr_t>(n.out) & 7u) == 0 && d.ldy >= d.N && d.N > 0;
}

}  // namespace

size_t dense_workspace_bytes(int num_sms) { return kCounterBytes + size_t(std::max(num_sms, 1)) * 64 * 1024; }

// Floors on H100 (2.9 TB/s, ~770 TFLOP/s bf16) / H200 (4.2 TB/s), for reference when reading bench
// numbers:
//   decode  T = 1: bytes = 2 N K (weights dominate). qkv 5120x2880: 29.5 MB -> 10.2 / 7.0 us; attention
//           out 2880x4096: 23.6 MB -> 8.1 / 5.6 us; unembedding 201088x2880: 1.16 GB -> 399 / 274 us;
//           router 32x2880: 184 KB -> 0.06 us (latency bound: one round of loads + the split-K
//           meeting, ~2.5 us expected).
//   T = 64: still weight-bound: out 2880x4096 23.6 MB -> 8.1 / 5.6 us (split-K: 45 tiles x 6),
//           qkv 29.5 MB -> 10.2 / 7.0 us (80 tiles x 4), router ~3 us (1 tile x 11).
//   prefill T = 2048: FLOPs = 2 T N K. qkv: 60.4 GFLOP -> 78 us; out: 48.3 GFLOP -> 63 us.
Status launch_dense_bf16(const DenseParams& p, const DenseWorkspace& ws, cudaStream_t stream) {
  const std::string shape = " (T=" + std::to_string(p.T) + ", K=" + std::to_string(p.K) + ", N=" + std::to_string(p.N) + ")";
  if (p.x_type != DType::BF16)
    return make_error(StatusCode::Unsupported, std::string("dense on CUDA takes bf16 activations, got x_type ") +
                                                   dtype_name(p.x_type) + shape);
  if (p.y_type != DType::BF16 && p.y_type != DType::F32)
    return make_error(StatusCode::Unsupported, std::string("dense on CUDA writes bf16 or f32, got y_type ") +
                                                   dtype_name(p.y_type) + shape);
  if (p.accumulate && p.y_type != DType::F32)
    return make_error(StatusCode::InvalidArgument, "dense: accumulate=true needs an f32 y" + shape);
  if (p.T < 0 || p.N < 0 || p.K <= 0)
    return make_error(StatusCode::InvalidArgument, "dense: need K > 0 and T, N >= 0" + shape);
  if (p.T == 0 || p.N == 0) return Status::Ok();
  if (!p.x || !p.w || !p.y) return make_error(StatusCode::InvalidArgument, "dense: null x, w or y" + shape);
  if (p.ldx < p.K) return make_error(StatusCode::InvalidArgument, "dense: ldx=" + std::to_string(p.ldx) + " < K" + shape);
  if (p.ldy < p.N) return make_error(StatusCode::InvalidArgument, "dense: ldy=" + std::to_string(p.ldy) + " < N" + shape);
  if ((reinterpret_cast<uintptr_t>(p.x) | reinterpret_cast<uintptr_t>(p.w)) & 1u)
    return make_error(StatusCode::InvalidArgument, "dense: x and w must be 2-byte aligned bf16 arrays" + shape);
  if (p.y_type == DType::F32 ? (reinterpret_cast<uintptr_t>(p.y) & 3u) : (reinterpret_cast<uintptr_t>(p.y) & 1u))
    return make_error(StatusCode::InvalidArgument, "dense: y is not aligned to its dtype" + shape);

  const DenseArgs a = dense_args(p);
  // The tensor-core kernels read 16-byte pieces of whole 32-wide k halves.
  if (p.K % 32 != 0 || p.ldx % 8 != 0 || !aligned_to(p.x, 16) || !aligned_to(p.w, 16)) {
    const dim3 grid((p.N + 7) / 8, std::min(p.T, 65535));
    bf16_dense_generic<<<grid, 256, 0, stream>>>(a);
    GPTOSS_CUDA_LAUNCH_CHECK("bf16_dense_generic");
    return Status::Ok();
  }
  if (dense_gemv_resident_fits(p, ws)) return launch_dense_gemv_resident(p, ws, stream);
  if (p.T <= 8) return gemv<1, false>(a, ws, 0, stream);
  if (p.T <= 16) return gemv<2, false>(a, ws, 0, stream);
  if (p.T <= kGemmSplitMaxT) return launch_gemm_mid(a, ws, stream);
  if (dense_wgmma_available()) return launch_dense_bf16_wgmma(p, stream);
  return launch_gemm<128, 128, 2, 4, 3, false>(a, ws, stream);
}

bool attn_input_fusable(const AttnInputParams& p) {
  const DenseParams& d = p.dense[0];
  const RopeParams& r = p.rope;
  if (p.n_dense != 1 || !norm_dense_fusable(p.norm, d) || d.y_type != DType::BF16 || d.N % 64 != 0) return false;
  const bf16_t* y = static_cast<const bf16_t*>(d.y);
  if (r.type != DType::BF16 || r.batch.T != d.T || r.q != d.y || r.ldq != d.ldy || r.ldk != d.ldy ||
      r.k != y + size_t(r.n_q) * kHeadDim || r.n_q < 0 || r.n_kv < 0 || (r.n_q + r.n_kv) * kHeadDim > d.N ||
      !r.cos || !r.sin || !r.batch.tok_pos)
    return false;
  if (!p.append_kv) return true;
  const KVAppendParams& k = p.append;
  return k.act_type == DType::BF16 && k.cache.type == DType::BF16 && k.batch.T == d.T && k.batch.S == d.T &&
         k.batch.tok_pos == r.batch.tok_pos && k.batch.tok_seq && k.batch.seq_slot && k.k == r.k &&
         k.v == y + size_t(r.n_q + r.n_kv) * kHeadDim && k.ldkv == d.ldy && k.cache.n_kv == r.n_kv &&
         (r.n_q + 2 * r.n_kv) * kHeadDim == d.N && k.cache.k && k.cache.v && k.cache.len > 0 && k.cache.slots > 0;
}

namespace {
// Dynamic shared memory of the fused router: the x rows, then the top-k's logits [T][E] f32.
size_t moe_input_smem(const MoEInputParams& p) {
  return size_t(p.gate.T) * gemv_xs_row_bytes(p.gate.K) + size_t(p.gate.T) * size_t(p.gate.N) * 4;
}
}  // namespace

bool moe_input_fusable(const MoEInputParams& p) {
  if (moe_input_expert_split_fits(p) || moe_input_cluster_fits(p)) return true;
  const DenseParams& d = p.gate;
  const RouterParams& r = p.router;
  return norm_dense_fusable(p.norm, d) && d.y_type == DType::F32 && (reinterpret_cast<uintptr_t>(d.y) & 3u) == 0 &&
         r.T == d.T && r.logits == d.y && r.ldl == d.ldy && r.E == d.N && r.E <= kRouterMaxExperts && r.k >= 1 &&
         r.k <= kRouterMaxK && r.k <= r.E && r.expert_idx && r.expert_w && moe_input_smem(p) <= size_t(kXsMaxBytes);
}

// Floor: the qkv weights (29.5 MB at 20b: 7.0 us on H200) plus the residual row(s) read by every
// block from L2; one launch instead of four (rmsnorm, dense, rope, kv_append).
Status launch_attn_input_fused(const AttnInputParams& p, const DenseWorkspace& ws, cudaStream_t stream) {
  if (!attn_input_fusable(p))
    return make_error(StatusCode::InvalidArgument, "attn_input: this call does not fit the fused CUDA kernel");
  const DenseParams& d = p.dense[0];
  DenseArgs a = dense_args(d);
  set_norm(&a, p.norm);
  a.rope = 1;
  a.rope_rows = (p.rope.n_q + p.rope.n_kv) * kHeadDim;
  a.cos = p.rope.cos;
  a.sin = p.rope.sin;
  a.tok_pos = p.rope.batch.tok_pos;
  if (p.append_kv) {
    const KVAppendParams& k = p.append;
    a.append = 1;
    a.q_rows = p.rope.n_q * kHeadDim;
    a.kv_rows = p.rope.n_kv * kHeadDim;
    a.n_kv = p.rope.n_kv;
    a.cache_k = static_cast<bf16_t*>(k.cache.k);
    a.cache_v = static_cast<bf16_t*>(k.cache.v);
    a.cache_slots = k.cache.slots;
    a.cache_len = k.cache.len;
    a.tok_seq = k.batch.tok_seq;
    a.seq_slot = k.batch.seq_slot;
    a.errors = ws.errors;
  }
  return gemv<1, true>(a, ws, size_t(d.T) * gemv_xs_row_bytes(d.K), stream);
}

// sm_90: one token takes the expert-split kernel (cuda/moe_input_expert_split.cu), up to 128 the
// K-split cluster kernel (cuda/moe_input_cluster.cu). Elsewhere the GEMV fusion, T <= 8. Floor: the
// router weights (184 KB at 20b) are nothing; one round of loads, the meeting of the blocks and the
// top-k of one warp: ~3 us of latency, in one launch instead of three.
Status launch_moe_input_fused(const MoEInputParams& p, const DenseWorkspace& ws, cudaStream_t stream) {
  if (moe_input_expert_split_fits(p)) return launch_moe_input_expert_split(p, ws.pdl, stream);
  if (moe_input_cluster_fits(p)) return launch_moe_input_cluster(p, ws.pdl, stream);
  if (!moe_input_fusable(p))
    return make_error(StatusCode::InvalidArgument, "moe_input: this call does not fit the fused CUDA kernel");
  DenseArgs a = dense_args(p.gate);
  set_norm(&a, p.norm);
  a.topk = p.router.k;
  a.expert_idx = p.router.expert_idx;
  a.expert_w = p.router.expert_w;
  if (ws.ptr == nullptr || ws.bytes < kCounterBytes)
    return make_error(StatusCode::InvalidArgument, "moe_input: the fused kernel needs the dense workspace");
  a.counters = static_cast<unsigned*>(ws.ptr);  // the top-k's finished-tile counter
  return gemv<1, true>(a, ws, moe_input_smem(p), stream);
}

}  // namespace gptoss
