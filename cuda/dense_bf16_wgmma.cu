// Dense bf16 GEMM on sm_90a for prefill-sized steps (T > 128): y[t, n] (+)= x[t, :] . w[n, :] +
// bias[n] with warpgroup MMA, both operands from shared memory (dense_bf16_wgmma.cuh).
//
// Why (bench/NOTES.md, session 6): the mma.sync GEMM (dense_bf16.cu, 128 x 128 tiles) ran the
// 20b prefill's q/k/v at 233 TFLOP/s and the output projection at 219 (30% of the H200's measured
// bf16 rate; kernel bench, session 4): ~480 us of a 2048-token prefill's ~1900 us per layer.
// Measured (H200, session 7): q/k/v 234.6 -> 127.9 us (472 TFLOP/s), out-projection 222.9 -> 133.1 us
// (363); prefill 2048 44.9k -> 50.4k tok/s.
//
// Block = 2 warpgroups (256 threads) = 128 weight rows (warpgroup g: rows 64 g .. 64 g + 63, the
// wgmma M) x 128 tokens (the wgmma N); grid (N / 128, T / 128), rounded up, weight blocks fastest
// so that the blocks of one token tile run together and share its rows through L2. Per 64-wide k
// chunk a kStages-deep cp.async ring stages both tiles, K-major with the 128-byte swizzle the wgmma
// descriptors name (row m at m * 128, 16-byte piece q at q ^ (m & 7); zero-filled past N, T and
// K). wgmma.wait_group 1 keeps one chunk's MMAs in flight while the next stage is refilled.
// Epilogue: the accumulators go through shared memory (padded rows) so that the stores, bias and
// the accumulate onto an f32 y are row-contiguous per token.
#include "dense_bf16_wgmma.cuh"

#include <cuda_bf16.h>

#include <cstring>

#include "cuda_check.cuh"
#include "dense_bf16.cuh"
#include "device_common.cuh"
#include "kernel_caps.cuh"
#include "mma_sm80.cuh"
#include "wgmma_sm90.cuh"

namespace gptoss {
namespace {

constexpr int kThreads = 256;  // two warpgroups
constexpr int kBM = 128;       // weight rows per block
constexpr int kBN = 128;       // tokens per block
constexpr int kStages = 4;
constexpr uint32_t kWBytes = kBM * 128, kXBytes = kBN * 128;  // one 64-wide chunk of each
constexpr uint32_t kStageBytes = kWBytes + kXBytes;           // 32 KB, a multiple of 1024
constexpr uint32_t kSmemBytes = kStages * kStageBytes + 1024;  // + alignment of the base
constexpr int kOutStride = kBM + 4;  // f32 per token row of the epilogue tile (conflict-free writes)
static_assert(size_t(kBN) * kOutStride * 4 <= size_t(kStages) * kStageBytes, "the epilogue tile fits the ring");

struct WgArgs : DenseCoreArgs {
  int y_vec4;  // y rows and ldy allow 4-element vector stores (16 bytes f32, 8 bytes bf16)
};

#ifdef GPTOSS_WGMMA
// D[64][128] += A[64][16] * B[16][128], A (the weight rows) and B (the tokens) K-major with the
// 128-byte swizzle in shared memory.
__device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], uint64_t a_desc, uint64_t b_desc) {
  asm volatile(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" GPTOSS_WG_PH64
      "}, %64, %65, 1, 1, 1, 0, 0;\n"
      "}\n"
      : GPTOSS_WG_ACC64(d)
      : "l"(a_desc), "l"(b_desc));
}
#endif  // GPTOSS_WGMMA

__global__ void __launch_bounds__(kThreads, 1) bf16_dense_gemm_wgmma(WgArgs a) {
#ifdef GPTOSS_WGMMA
  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (tc::smem_addr(smem_raw) + 1023u) & ~1023u;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2, wq = warp & 3;
  const int n0 = int(blockIdx.x) * kBM, t0 = int(blockIdx.y) * kBN;
  const int chunks = (a.K + 63) / 64;

  // Loader: 16-byte piece q of rows lrow + 32 p of both tiles (4 each per thread).
  const int q = tid & 7, lrow = tid >> 3;
  const bf16_t* wsrc[4];
  const bf16_t* xsrc[4];
  bool wv[4], xv[4];
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const int row = lrow + 32 * p;
    wv[p] = n0 + row < a.N;
    xv[p] = t0 + row < a.T;
    wsrc[p] = a.w + size_t(wv[p] ? n0 + row : 0) * a.K + 8 * q;
    xsrc[p] = a.x + size_t(xv[p] ? t0 + row : 0) * a.ldx + 8 * q;
  }
  auto load_stage = [&](int j) {
    const uint32_t st = base + uint32_t(j % kStages) * kStageBytes;
    const bool vk = j * 64 + 8 * q < a.K;
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const int row = lrow + 32 * p;
      const uint32_t off = row * 128 + ((q ^ (row & 7)) << 4);
      const bool w_ok = vk && wv[p], x_ok = vk && xv[p];
      tc::cp_async_16(st + off, w_ok ? wsrc[p] + j * 64 : wsrc[p], w_ok);
      tc::cp_async_16(st + kWBytes + off, x_ok ? xsrc[p] + j * 64 : xsrc[p], x_ok);
    }
  };

  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < chunks) load_stage(s);
    tc::cp_async_commit();
  }
  tc::cp_async_wait<kStages - 2>();  // chunk 0
  moe::fence_proxy_async();
  __syncthreads();

  for (int j = 0; j < chunks; ++j) {
    const uint32_t st = base + uint32_t(j % kStages) * kStageBytes;
    const uint32_t wa = st + uint32_t(wg) * 64 * 128, xb = st + kWBytes;
    moe::fence_acc(acc);
    moe::wgmma_fence();
#pragma unroll
    for (int s = 0; s < 4; ++s) wgmma_ss_n128(acc, moe::desc_sw128(wa + 32 * s), moe::desc_sw128(xb + 32 * s));
    moe::wgmma_commit();
    moe::wgmma_wait<1>();              // chunk j - 1's MMAs are done: its stage may be refilled
    tc::cp_async_wait<kStages - 3>();  // chunk j + 1 has landed
    moe::fence_proxy_async();
    __syncthreads();                   // every warpgroup is past chunk j - 1
    if (j + kStages - 1 < chunks) load_stage(j + kStages - 1);
    tc::cp_async_commit();
    moe::fence_acc(acc);
  }
  moe::wgmma_wait0();
  moe::fence_acc(acc);
  tc::cp_async_wait<0>();
  __syncthreads();  // the ring becomes the epilogue tile

  // acc[4i + 2h + v] = weight row 64 wg + 16 wq + r + 8h, token 8i + 2c + v of the block's tile.
  float* out = reinterpret_cast<float*>(smem_raw + (base - tc::smem_addr(smem_raw)));
  const int r = lane >> 2, c = lane & 3;
#pragma unroll
  for (int i = 0; i < 16; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int v = 0; v < 2; ++v)
        out[(8 * i + 2 * c + v) * kOutStride + 64 * wg + 16 * wq + r + 8 * h] = acc[4 * i + 2 * h + v];
  __syncthreads();

  // Token row tt of the tile by warp tt % 8; lane l holds rows n0 + 4 l .. 4 l + 3.
  for (int tt = warp; tt < kBN; tt += kThreads / 32) {
    const int t = t0 + tt, n = n0 + 4 * lane;
    if (t >= a.T || n >= a.N) continue;
    const float4 o = *reinterpret_cast<const float4*>(out + tt * kOutStride + 4 * lane);
    float v[4] = {o.x, o.y, o.z, o.w};
    const size_t off = size_t(t) * a.ldy + n;
    if (a.y_vec4 && n + 3 < a.N) {
      if (a.bias) {
        const float4 b = *reinterpret_cast<const float4*>(a.bias + n);
        v[0] += b.x; v[1] += b.y; v[2] += b.z; v[3] += b.w;
      }
      if (a.y_f32) {
        float4* y = reinterpret_cast<float4*>(static_cast<float*>(a.y) + off);
        if (a.accumulate) {
          const float4 p = *y;
          v[0] += p.x; v[1] += p.y; v[2] += p.z; v[3] += p.w;
        }
        *y = make_float4(v[0], v[1], v[2], v[3]);
      } else {
        const __nv_bfloat162 lo = __floats2bfloat162_rn(v[0], v[1]), hi = __floats2bfloat162_rn(v[2], v[3]);
        uint2 pk;
        std::memcpy(&pk.x, &lo, 4);
        std::memcpy(&pk.y, &hi, 4);
        *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(a.y) + off) = pk;
      }
    } else {
      for (int e = 0; e < 4 && n + e < a.N; ++e) {
        float x = v[e] + (a.bias ? a.bias[n + e] : 0.0f);
        if (a.y_f32) {
          float* y = static_cast<float*>(a.y) + off + e;
          *y = a.accumulate ? *y + x : x;
        } else {
          static_cast<__nv_bfloat16*>(a.y)[off + e] = __float2bfloat16_rn(x);
        }
      }
    }
  }
#else
  __trap();  // never launched: dense_wgmma_available() requires code compiled for sm_90a
#endif
}

}  // namespace

bool dense_wgmma_available() {
  static const bool ok =
      !env_knob_off("GPT_OSS_C_DENSE_WGMMA") && sm90_code_runnable(bf16_dense_gemm_wgmma, /*exact_90=*/true);
  return ok;
}

// Floors (gpt-oss-20b, T = 2048, ~770 TFLOP/s measured): q/k/v 60.4 GFLOP -> 78 us, the output
// projection 48.3 GFLOP -> 63 us. Shared memory per 64-wide chunk and block: 32 KB of copies and
// 2 x (8 + 16) KB of wgmma reads for 4.2 MFLOP: ~75 bytes per tensor-core cycle, under the 128.
Status launch_dense_bf16_wgmma(const DenseParams& p, cudaStream_t stream) {
  GPTOSS_RETURN_IF_ERROR(ensure_smem(bf16_dense_gemm_wgmma, kSmemBytes, "bf16_dense_gemm_wgmma"));
  WgArgs a;
  static_cast<DenseCoreArgs&>(a) = dense_core_args(p);
  a.y_vec4 = p.ldy % 4 == 0 && aligned_to(p.y, a.y_f32 ? 16 : 8) && (!p.bias || aligned_to(p.bias, 16));
  const dim3 grid(unsigned((p.N + kBM - 1) / kBM), unsigned((p.T + kBN - 1) / kBN));
  bf16_dense_gemm_wgmma<<<grid, kThreads, kSmemBytes, stream>>>(a);
  GPTOSS_CUDA_LAUNCH_CHECK("bf16_dense_gemm_wgmma");
  return Status::Ok();
}

}  // namespace gptoss
