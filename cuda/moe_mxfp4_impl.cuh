// Internals of the MXFP4 MoE (cuda/moe_mxfp4.cu dispatches; the public interface and the weight
// layout are in moe_mxfp4.cuh): the argument structs and launchers of the four kernel families,
// one file each, and the device helpers they share (exact FP4 dequantisation into mma A
// fragments, the clamped SwiGLU, programmatic dependent launch).
//   moe_mxfp4_stream.cu        decode (T * k <= kStreamMaxSlots): per-warp cp.async rings, no routing pass
//   moe_mxfp4_stream_batch.cu  batched decode (T * k <= kStreamBatchMaxSlots) over expert_route tiles
//   moe_mxfp4_gemm.cu          tiled mma.sync GEMM over expert_route tiles (prefill; the sm_80 path)
//   moe_mxfp4_wgmma_rs.cu      prefill GEMM with wgmma on sm_90a, the weights as the register operand
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"
#include "ops.h"
#include "kernel_caps.cuh"
#include "mma_sm80.cuh"
#include "mxfp4_layout.cuh"
#include "pdl.cuh"

namespace gptoss {
namespace moe {

// ---------------------------------------------------------------------------------------------
// Device helpers
// ---------------------------------------------------------------------------------------------
constexpr uint32_t kBf16x2Two126 = 0x7E807E80u;  // (2^126, 2^126)

// a * b on bf16 pairs, round-to-nearest; exact for the power-of-two products below (subnormal
// bf16 inputs and results included: bf16 fma has no flush-to-zero).
__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(0x80008000u));
  return d;
}

__device__ __forceinline__ uint32_t scale_byte(uint32_t packed, int i) { return (packed >> (8 * i)) & 0xffu; }

// 2^(s-127) as a bf16 pair (s = 0: the bf16 subnormal 2^-127; s = 255: inf, as e8m0_to_f32).
__device__ __forceinline__ uint32_t scale_bf16x2(uint32_t s) {
  const uint32_t b = s ? s << 7 : 0x40u;
  return b | (b << 16);
}

// The A fragments of NW consecutive mma k16 steps s0 .. s0 + NW - 1 of a chunk (steps 2h, 2h + 1 lie
// in MXFP4 block 2j + h) from the lane's 16 code bytes `w` and packed scale word `sw`
// (mxfp4_layout.cuh): A[q] = step s0 + q = word s0 + q. Register i holds row r (i even) or r + 8
// (i odd), whose scale is byte 2h + (i & 1).
// kFast (MoEParams::scales_below_128, known at load, hence a template parameter of every kernel) when
// every scale byte is < 128 (real checkpoints: ~2^-7): then one bf16 multiply by 2^(s-1)
// (mxfp4_scale_muls_bf16x2) turns an unpacked register (fp4 * 2^-126) into the weight
// fp4 * 2^(s-127); otherwise two multiplies, by 2^126 and by 2^(s-127). All products are exact
// (2-bit significands, bf16 subnormals kept), so both ways give identical bits. A per-chunk
// run-time choice made the compiler keep both paths (~130 instead of ~85 instructions per chunk).
template <bool kFast, int NW>
__device__ __forceinline__ void dequant_steps(const uint4& w, uint32_t sw, int s0, uint32_t (&A)[NW][4]) {
  uint32_t m[4];
  if (kFast) {
    mxfp4_scale_muls_bf16x2(sw, m);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) m[i] = scale_bf16x2(scale_byte(sw, i));
  }
#pragma unroll
  for (int q = 0; q < NW; ++q) {
    uint32_t o[4];
    mxfp4_unpack_word(tc::word(w, s0 + q), o);
    const int b = 2 * ((s0 + q) >> 1);
#pragma unroll
    for (int i = 0; i < 4; ++i) A[q][i] = bf16x2_mul(kFast ? o[i] : bf16x2_mul(o[i], kBf16x2Two126), m[b + (i & 1)]);
  }
}

// The reference's clamped SwiGLU with NaN-propagating clamps (torch.clamp keeps NaN):
// a = min(glu, limit), l = clamp(lin, -limit, limit), a * sigmoid(alpha a) * (l + 1).
__device__ __forceinline__ float swiglu(float glu, float lin, float alpha, float limit) {
  const float a = glu > limit ? limit : glu;
  const float l = lin > limit ? limit : (lin < -limit ? -limit : lin);
  return a / (1.0f + __expf(-alpha * a)) * (l + 1.0f);
}

// ---------------------------------------------------------------------------------------------
// Host helpers
// ---------------------------------------------------------------------------------------------
// ensure_smem (raise a kernel's dynamic shared memory limit): kernel_caps.cuh.

// ---------------------------------------------------------------------------------------------
// Streaming kernels: decode and batched decode (moe_mxfp4_stream.cu, moe_mxfp4_stream_batch.cu)
// ---------------------------------------------------------------------------------------------
// Steps with at most this many slots (T * k) take the streaming decode kernel (no routing pass:
// every warp finds its expert and that expert's slots itself; lane i holds slot i).
constexpr int kStreamMaxSlots = 32;
// Steps with at most this many slots take the batched streaming kernel over expert_route tiles;
// larger ones the tiled GEMMs.
constexpr int kStreamBatchMaxSlots = 512;

struct StreamArgs {
  const int32_t* expert_idx = nullptr;  // [S] (S = T * k)
  const float* expert_w = nullptr;      // [S]
  int T = 0, k = 0, E = 0;
  int k_magic = 0;                      // launch_stream: ceil(2^16 / k), for slot / k
  const bf16_t* act = nullptr;          // B operand: mlp1 x [T][ld_act] (row = slot / k); mlp2 z [S][I]
  int ld_act = 0;
  const uint8_t* wb = nullptr;          // packed codes (device layout)
  const uint8_t* ws = nullptr;          // packed scales
  const float* bias = nullptr;          // [E][R]
  int R = 0, K = 0;                     // rows (2I or H) and reduction length (H or I)
  bf16_t* z = nullptr;                  // mlp1 output [S][I] (slot order)
  int I = 0;
  float alpha = 1.702f, limit = 7.0f;
  float* partial = nullptr;             // mlp2 output [S][H] (slot order), weighted
  float* y = nullptr;                   // residual [T][ldy] (launch_stream's fused combine)
  int ldy = 0;
  int32_t* counters = nullptr;          // launch_stream: arrivals per mlp2 output tile (mlp2 reads, mlp1 zeroes)
  int n_counters = 0;                   // >= H / 16
  bool fast_scales = false;             // MoEParams::scales_below_128 (one multiply per dequantised pair)
  ReadHint l2_next;                     // mlp2: MoEParams::next_read, pulled into L2 once a warp's loads landed
};

// moe_mxfp4_stream.cu: KS warps per (expert rank, 16-row tile), each over 1/KS of K, for T * k <=
// kStreamMaxSlots; mlp2 adds the weighted partials onto y (one arrival counter per output tile).
Status launch_stream(const StreamArgs& a, bool mlp1, bool pdl, cudaStream_t stream);

// moe_mxfp4_stream_batch.cu: batched decode (kStreamMaxSlots < T * k <= kStreamBatchMaxSlots) over
// expert_route tiles of kStreamRouteRows sorted rows. mlp2 writes only the weighted partials; the
// caller runs launch_expert_combine. Uses StreamArgs without y and the counters.
constexpr int kStreamRouteRows = 16;
struct RouteView {
  const int32_t* expert_off = nullptr;   // [E + 1]
  const int32_t* sorted_slot = nullptr;  // [S]
  const int32_t* tile_expert = nullptr;  // [max_tiles]
  const int32_t* tile_row0 = nullptr;    // [max_tiles]
  const int32_t* n_tiles = nullptr;      // [1]
  int max_tiles = 0;                     // expert_route_max_tiles(S, E, kStreamRouteRows)
};
Status launch_stream_routed(const StreamArgs& a, const RouteView& rv, bool mlp1, bool pdl, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Tiled GEMM over expert_route tiles (moe_mxfp4_gemm.cu: mma.sync; moe_mxfp4_wgmma_rs.cu: sm_90a)
// ---------------------------------------------------------------------------------------------
struct GemmArgs {
  const bf16_t* act = nullptr;  // mlp1: x [T][ld_act] gathered by token; mlp2: z [T*k][I] in sorted order
  int ld_act = 0;
  int gather_k = 0;             // mlp1: k (B row = x[sorted_slot / k]); mlp2: 0 (B row = sorted row)
  const int32_t* sorted_slot = nullptr;
  const int32_t* expert_off = nullptr;
  const int32_t* tile_expert = nullptr;
  const int32_t* tile_row0 = nullptr;
  const int32_t* n_tiles = nullptr;
  const uint8_t* wb = nullptr;
  const uint8_t* ws = nullptr;
  const float* bias = nullptr;  // [E][R]
  int R = 0, K = 0;
  bf16_t* z = nullptr;          // mlp1 output [T*k][I] (sorted order)
  int I = 0;
  const float* expert_w = nullptr;  // [T*k]
  float* partial = nullptr;         // mlp2 output [T*k][R] (slot order)
  float alpha = 1.702f, limit = 7.0f;
  bool fast_scales = false;         // MoEParams::scales_below_128
};

// Token-tile rows of the mma.sync GEMM for a step with `slots` slots over E experts.
int gemm_tile_rows(int slots, int E);
Status launch_gemm_mma(int tile_rows, bool mlp1, const GemmArgs& a, int max_tiles, cudaStream_t stream);

// The register-operand wgmma GEMM (moe_mxfp4_wgmma_rs.cu): route tiles of kRsTokenRows sorted rows
// (the wgmma N), weights as the register A operand, tokens (x through launch_prefill_permute, z as
// mlp1 writes it) in prefill k order.
constexpr int kRsTokenRows = 256;
Status launch_gemm_wgmma_rs(bool mlp1, const GemmArgs& a, int max_tiles, cudaStream_t stream);
// dst[T][K] (dense, ld = K) = src[T][ld_src] with each 64-wide k chunk in prefill k order.
Status launch_prefill_permute(const bf16_t* src, int ld_src, bf16_t* dst, int T, int K, cudaStream_t stream);
// True when the wgmma kernel can run here: an sm_90 device, kernels built from sm_90a code (not
// JIT-compiled compute_80 PTX), and no GPT_OSS_C_FORCE_PORTABLE=1.
bool wgmma_available();

}  // namespace moe
}  // namespace gptoss
