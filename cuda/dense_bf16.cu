// Dense bf16 matmul: y[t, n] (+)= sum_k x[t, k] * w[n, k] + bias[n], f32 accumulation.
//
// Layouts: x [T][ldx] bf16 (row t, contiguous k), w [N][K] bf16 row-major (nn.Linear), bias [N] f32
// or null, y [T][ldy] bf16 or f32. K is a multiple of 32 but not always of 64 (2880 = 45*64 is,
// 96 is not), so the 64-wide k chunks below may end in a half chunk, which both kernels skip.
//
// Two regimes, both on tensor cores (mma.sync m16n8k16, lane layout and k permutation described in
// mma_sm80.cuh):
//  * bf16_dense_gemv_mma (T <= 16: decode). Memory bound: every weight byte is read once from HBM.
//    A = 16 weight rows (the mma's M), B = up to 8 tokens per n8 tile, read straight from global
//    memory with 16-byte loads (a quad of lanes reads 64 contiguous bytes of one row). Each warp
//    owns one 16-row tile and a 1/KS share of the k chunks; KS warps of a block reduce their
//    partial tiles through shared memory in a fixed order (deterministic). KS is chosen so that
//    ~2000 warps stream weights even when N is only 2880; each warp issues the loads of U chunks
//    (2 KB of weights each) before its first mma of them (gemv_fence): ~6 KB in flight per warp.
//  * bf16_dense_gemm_mma (T > 16: prefill). Compute bound: BM x BN output tiles (A = BM tokens,
//    B = BN weight rows), 64-wide k chunks staged in shared memory by a STAGES-deep cp.async
//    pipeline (zero-filled past T, N and K), swizzled 128-byte rows (mma_sm80.cuh) read with
//    16-byte shared loads, f32 accumulators in registers, fused bias / accumulate epilogue.
#include "dense_bf16.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <string>

#include "cuda_check.cuh"
#include "mma_sm80.cuh"

namespace gptoss {
namespace {

struct DenseArgs {
  const bf16_t* x;
  int ldx;
  const bf16_t* w;
  const float* bias;
  void* y;
  int ldy;
  int T, K, N;
  int y_f32;       // 1: y is f32, 0: bf16
  int accumulate;  // 1: y (f32) += result
  int y_pairs;     // 1: y[t, n..n+1] (n even) may be written with one 4- or 8-byte store
  uint32_t zero;   // always 0; the compiler cannot know it (see gemv_fence)
};

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

// One 32-wide half chunk at k of the GEMV: 16 bytes of weight rows r and r + 8 and of each of the
// NT token rows (an invalid row or token reads row 0: its garbage stays in its own mma row or
// column, which is never stored).
template <int NT>
__device__ __forceinline__ void gemv_load(const bf16_t* wa, const bf16_t* wb, const bf16_t* const (&xp)[NT], int k,
                                          uint4& wra, uint4& wrb, uint4 (&xr)[NT][2], int h) {
  wra = tc::ldg_stream_128(wa + k);
  wrb = tc::ldg_stream_128(wb + k);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) xr[nt][h] = tc::ldg_128(xp[nt] + k);
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

// Decode GEMV. Block = 8 warps = (8 / KS) row tiles of 16 rows x KS k-splits. grid.x: groups of
// row tiles, grid.y: groups of 8 * NT tokens. Each lane holds, per chunk, 2 x 16 bytes of row
// r and of row r + 8 and 2 x 16 bytes of each of its NT tokens.
template <int NT, int KS, int U>
__global__ void __launch_bounds__(kGemvWarps * 32) bf16_dense_gemv_mma(DenseArgs a) {
  static_assert(kGemvWarps % KS == 0, "KS must divide the warps of a block");
  static_assert(NT >= 1 && NT <= 2 && U >= 1, "GEMV handles up to 16 tokens per pass");
  constexpr int kGroups = kGemvWarps / KS;
  __shared__ float red[KS > 1 ? kGemvWarps : 1][NT * 4][32];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r = lane >> 2, c = lane & 3;
  const int grp = warp / KS, ks = warp % KS;
  const int row0 = (blockIdx.x * kGroups + grp) * 16;
  const int tok0 = blockIdx.y * 8 * NT;
  const int ra = row0 + r, rb = row0 + r + 8;
  const bool va = ra < a.N, vb = rb < a.N;
  const bf16_t* wa = a.w + size_t(va ? ra : 0) * a.K + 8 * c;
  const bf16_t* wb = a.w + size_t(vb ? rb : 0) * a.K + 8 * c;
  const bf16_t* xp[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int t = tok0 + 8 * nt + r;
    xp[nt] = a.x + size_t(t < a.T ? t : 0) * a.ldx + 8 * c;
  }

  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;

  // Chunks j = ks, ks + KS, ...: groups of U whole chunks with no branch inside (so that all U
  // chunks' loads are in flight together), then single whole chunks, then the last half chunk
  // when K % 64 == 32.
  const int full = a.K / 64;
  int j0 = ks;
  for (; j0 + (U - 1) * KS < full; j0 += U * KS) {
    uint4 wra[U][2], wrb[U][2], xr[U][NT][2];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int h = 0; h < 2; ++h) gemv_load<NT>(wa, wb, xp, (j0 + u * KS) * 64 + 32 * h, wra[u][h], wrb[u][h], xr[u], h);
    gemv_fence<U, NT>(wra, wrb, xr, a.zero);
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int h = 0; h < 2; ++h) gemv_mma<NT>(acc, wra[u][h], wrb[u][h], xr[u], h);
  }
  for (; j0 < full; j0 += KS) {
    uint4 wra[2], wrb[2], xr[NT][2];
#pragma unroll
    for (int h = 0; h < 2; ++h) gemv_load<NT>(wa, wb, xp, j0 * 64 + 32 * h, wra[h], wrb[h], xr, h);
#pragma unroll
    for (int h = 0; h < 2; ++h) gemv_mma<NT>(acc, wra[h], wrb[h], xr, h);
  }
  if (j0 == full && a.K % 64 != 0) {
    uint4 wra, wrb, xr[NT][2];
    gemv_load<NT>(wa, wb, xp, j0 * 64, wra, wrb, xr, 0);
    gemv_mma<NT>(acc, wra, wrb, xr, 0);
  }

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

  // C tile: rows = weight rows (ra, rb), columns = tokens 2c, 2c + 1 of each n8 tile.
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int t0 = tok0 + 8 * nt + 2 * c;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int t = t0 + i;
      if (t >= a.T) continue;
      if (va) store_one(a, t, ra, acc[nt][i]);
      if (vb) store_one(a, t, rb, acc[nt][2 + i]);
    }
  }
}

// Prefill GEMM. Block = WM x WN warps, output tile BM tokens x BN rows; warp (wm, wn) owns
// (BM / WM) tokens x (BN / WN) rows = MT m16 tiles x NT n8 tiles. Shared memory per stage:
// BM token rows then BN weight rows, 128 swizzled bytes each (one 64-wide k chunk).
template <int BM, int BN, int WM, int WN, int STAGES>
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
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < chunks) load_stage(s, s);
    tc::cp_async_commit();
  }

  for (int j = 0; j < chunks; ++j) {
    tc::cp_async_wait<STAGES - 2>();
    __syncthreads();  // chunk j has landed for every thread; slot (j - 1) % STAGES is free
    const int jn = j + STAGES - 1;
    if (jn < chunks) load_stage(jn % STAGES, jn);
    tc::cp_async_commit();

    const uint32_t stage = smem0 + (j % STAGES) * kStageBytes;
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

// ---------------------------------------------------------------------------------------------
// launchers
// ---------------------------------------------------------------------------------------------
bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <int NT, int KS>
Status launch_gemv(const DenseArgs& a, cudaStream_t stream) {
  constexpr int U = 2;  // 2 chunks x (2 + NT) x 2 loads in flight per warp; <= ~100 registers keeps 2-3 blocks per SM
  const int tiles = (a.N + 15) / 16;
  const dim3 grid((tiles + kGemvWarps / KS - 1) / (kGemvWarps / KS), (a.T + 8 * NT - 1) / (8 * NT));
  bf16_dense_gemv_mma<NT, KS, U><<<grid, kGemvWarps * 32, 0, stream>>>(a);
  GPTOSS_CUDA_LAUNCH_CHECK("bf16_dense_gemv_mma");
  return Status::Ok();
}

template <int NT>
Status launch_gemv_ks(const DenseArgs& a, int ks, cudaStream_t stream) {
  switch (ks) {
    case 1: return launch_gemv<NT, 1>(a, stream);
    case 2: return launch_gemv<NT, 2>(a, stream);
    case 4: return launch_gemv<NT, 4>(a, stream);
    default: return launch_gemv<NT, 8>(a, stream);
  }
}

template <int BM, int BN, int WM, int WN, int STAGES>
Status launch_gemm(const DenseArgs& a, cudaStream_t stream) {
  constexpr int kSmem = STAGES * (BM + BN) * 128;
  auto kernel = bf16_dense_gemm_mma<BM, BN, WM, WN, STAGES>;
  // Opt in to > 48 KB of dynamic shared memory once per process (the first call; the attribute
  // call is host-side and may synchronise with pending copies, so not on every launch).
  static const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  GPTOSS_CUDA_CHECK(attr);
  const dim3 grid((a.T + BM - 1) / BM, (a.N + BN - 1) / BN);
  kernel<<<grid, WM * WN * 32, kSmem, stream>>>(a);
  GPTOSS_CUDA_LAUNCH_CHECK("bf16_dense_gemm_mma");
  return Status::Ok();
}

}  // namespace

// Floors on H100 (2.9 TB/s, ~770 TFLOP/s bf16), for reference when reading bench numbers:
//   decode  T = 1: bytes = 2 N K (weights dominate). qkv 5120x2880: 29.5 MB -> 10.2 us; attention
//           out 2880x4096: 23.6 MB -> 8.1 us; unembedding 201088x2880: 1.16 GB -> 399 us;
//           router 32x2880: 184 KB -> 0.06 us (latency bound, ~3 us in practice).
//   prefill T = 2048: FLOPs = 2 T N K. qkv: 60.4 GFLOP -> 78 us; out: 48.3 GFLOP -> 63 us.
Status launch_dense_bf16(const DenseParams& p, cudaStream_t stream) {
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

  DenseArgs a;
  a.x = static_cast<const bf16_t*>(p.x);
  a.ldx = p.ldx;
  a.w = p.w;
  a.bias = p.bias;
  a.y = p.y;
  a.ldy = p.ldy;
  a.T = p.T;
  a.K = p.K;
  a.N = p.N;
  a.y_f32 = p.y_type == DType::F32;
  a.accumulate = p.accumulate;
  const size_t ybytes = a.y_f32 ? 4 : 2;
  a.y_pairs = p.ldy % 2 == 0 && (reinterpret_cast<uintptr_t>(p.y) % (2 * ybytes)) == 0;
  a.zero = 0;

  // The tensor-core kernels read 16-byte pieces of whole 32-wide k halves.
  if (p.K % 32 != 0 || p.ldx % 8 != 0 || !aligned16(p.x) || !aligned16(p.w)) {
    const dim3 grid((p.N + 7) / 8, std::min(p.T, 65535));
    bf16_dense_generic<<<grid, 256, 0, stream>>>(a);
    GPTOSS_CUDA_LAUNCH_CHECK("bf16_dense_generic");
    return Status::Ok();
  }
  if (p.T <= 16) {
    // ~2000 warps streaming weights (~16 per SM, ~6 KB in flight each: ~100 KB per SM against
    // the ~20 KB that 2.9 TB/s x ~1 us of latency needs), but at least 2 chunks per warp.
    const int tiles = (p.N + 15) / 16, chunks = (p.K + 63) / 64;
    int ks = 1;
    while (ks < kGemvWarps && tiles * ks < 2048 && chunks >= 4 * ks) ks *= 2;
    return p.T <= 8 ? launch_gemv_ks<1>(a, ks, stream) : launch_gemv_ks<2>(a, ks, stream);
  }
  if (p.T <= 64) return launch_gemm<64, 64, 2, 2, 4>(a, stream);
  return launch_gemm<128, 128, 2, 4, 3>(a, stream);
}

}  // namespace gptoss
