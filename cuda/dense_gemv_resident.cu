// Decode GEMV (T <= 8) whose blocks hold all of their weight rows in shared memory, copied before
// pdl_wait: y[t, n] (+)= sum_k x[t, k] w[n, k] + bias[n] (DenseParams; x bf16 [T][ldx], w bf16 [N][K],
// bias f32 [N] or null, y bf16 or f32, accumulate onto f32).
//
// Why (bench/NOTES.md, session 10): the streaming GEMV (cuda/dense_bf16.cu) can only load what a
// warp holds in registers (2 chunks of 2 KB) and prefetch the rest into L2, so after pdl_wait it
// still pays ~4 dependent round trips; as the attention output projection (23.6 MB at 20b) it costs
// ~10 us per layer in the decode step against 5.6 us of bytes. Its predecessor, the decode
// attention, occupies a handful of SMs and almost no DRAM bandwidth for ~6 us at short contexts.
// Here the grid is one block per SM and each block owns rows [b R, (b + 1) R) of w (R = N / SMs, 22
// at 20b: 176 KB, which leaves room for a decode attention block on the same SM), so the whole matrix
// is requested the moment the blocks land and can arrive while attention still runs; after pdl_wait
// only x (L2), the tensor-core dot products from shared memory and one block reduction remain.
//
// Layout: row i of the block at byte i * rb (rb = 2K rounded up to 128), its 16-byte pieces swizzled
// (resident_piece). Warp w of 16 takes k32 blocks [w nkb / 16, (w + 1) nkb / 16) of every row. mma
// m16n8k16 with A = x (token r in row r; rows 8..15 zero), B = up to three n8 tiles of weight rows
// (lane row 8 tile + r, clamped into the block's rows: a clamped column is never stored), k mapped as
// in mma_sm80.cuh (a lane's 16-byte piece at k0 + 8c serves two k16 steps). The warps' partial tiles
// are summed in warp order (deterministic).
#include "dense_gemv_resident.cuh"

#include <cuda_bf16.h>

#include <algorithm>

#include "cuda_check.cuh"
#include "device_common.cuh"
#include "kernel_caps.cuh"
#include "mma_sm80.cuh"
#include "pdl.cuh"

namespace gptoss {
namespace {

constexpr int kWarps = 16;
constexpr int kThreads = kWarps * 32;
constexpr int kTiles = 3;                      // n8 tiles of weight rows per block
constexpr int kMaxRows = 8 * kTiles;
constexpr int kMaxK32 = 8;                     // k32 blocks per warp (K <= 4096): x in registers, one round trip
// One block per SM, leaving room for a decode attention block (32 KB) on the same SM.
constexpr size_t kMaxSmem = 192 * 1024;
constexpr size_t kRedBytes = size_t(kTiles) * kWarps * 32 * 2 * sizeof(float);  // the partial tiles

struct ResidentArgs : DenseCoreArgs {
  int rows;  // weight rows per block (<= kMaxRows)
};

// Row i of the block at byte i * rb, its 16-byte piece q at position q ^ (4 (i & 1)): the two rows
// a quarter warp reads (adjacent rows, the same four pieces) fall on eight distinct bank groups.
__host__ __device__ __forceinline__ int resident_row_bytes(int K) { return (2 * K + 127) / 128 * 128; }
__device__ __forceinline__ uint32_t resident_piece(int row, int q) { return uint32_t(16 * (q ^ ((row & 1) << 2))); }

__global__ void __launch_bounds__(kThreads, 1) bf16_dense_gemv_resident(ResidentArgs a) {
  extern __shared__ __align__(16) uint8_t smem[];  // [rows][rb]; at the end the warps' partial tiles
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, r = lane >> 2, c = lane & 3;
  const int n0 = int(blockIdx.x) * a.rows, nrows = min(a.rows, a.N - n0), ntiles = (nrows + 7) / 8;
  const int rb = resident_row_bytes(a.K), pieces = a.K / 8;
  const uint32_t s0 = tc::smem_addr(smem);

  // The weights depend on no kernel: request every row of the block before waiting for the
  // predecessor, so that they stream in while it finishes.
  for (int row = 0; row < nrows; ++row) {
    const bf16_t* src = a.w + size_t(n0 + row) * a.K;
    for (int q = tid; q < pieces; q += kThreads)
      tc::cp_async_16(s0 + uint32_t(row * rb) + resident_piece(row, q), src + 8 * q, true);
  }
  tc::cp_async_commit();
  pdl_wait();  // x (and an accumulated y) come from earlier kernels
  pdl_launch_dependents();

  // This warp's k32 blocks (at most kMaxK32), and its lane's x piece of each (token r; tokens past T
  // read token 0: their mma rows are never stored), all in one round of L2 loads.
  const int nkb = a.K / 32, kb0 = warp * nkb / kWarps, nk = (warp + 1) * nkb / kWarps - kb0;
  const bf16_t* xr = a.x + size_t(r < a.T ? r : 0) * a.ldx + 32 * kb0 + 8 * c;
  uint4 xv[kMaxK32];
#pragma unroll
  for (int j = 0; j < kMaxK32; ++j)
    if (j < nk) xv[j] = tc::ldg_128(xr + 32 * j);
  tc::cp_async_wait<0>();
  __syncthreads();  // every thread's rows have landed

  float acc[kTiles][4];
#pragma unroll
  for (int tl = 0; tl < kTiles; ++tl) {
    acc[tl][0] = acc[tl][1] = acc[tl][2] = acc[tl][3] = 0.0f;
    if (tl >= ntiles) continue;
    const int row = min(8 * tl + r, nrows - 1);  // a clamped column is computed but never stored
    const uint32_t wrow = s0 + uint32_t(row * rb);
#pragma unroll
    for (int j = 0; j < kMaxK32; ++j) {
      if (j >= nk) break;
      const uint4 b = tc::lds_128(wrow + resident_piece(row, 4 * (kb0 + j) + c));
      tc::mma_bf16_16816(acc[tl], xv[j].x, 0u, xv[j].y, 0u, b.x, b.y);
      tc::mma_bf16_16816(acc[tl], xv[j].z, 0u, xv[j].w, 0u, b.z, b.w);
    }
  }

  // acc[tl][0..1] = token r, rows 8 tl + 2c, 2c + 1. The partial tiles reuse the weight rows' space.
  __syncthreads();
  float* red = reinterpret_cast<float*>(smem);  // [kTiles][kWarps][32][2]
#pragma unroll
  for (int tl = 0; tl < kTiles; ++tl)
    *reinterpret_cast<float2*>(red + ((tl * kWarps + warp) * 32 + lane) * 2) = make_float2(acc[tl][0], acc[tl][1]);
  __syncthreads();
  if (tid >= kTiles * 32) return;
  const int tl = tid >> 5, l = tid & 31, t = l >> 2, row = 8 * tl + 2 * (l & 3);
  if (t >= a.T || row >= nrows) return;
  float v0 = 0.0f, v1 = 0.0f;
  for (int w = 0; w < kWarps; ++w) {  // warp order: deterministic
    const float2 p = *reinterpret_cast<const float2*>(red + ((tl * kWarps + w) * 32 + l) * 2);
    v0 += p.x;
    v1 += p.y;
  }
  const float v[2] = {v0, v1};
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (row + i >= nrows) break;
    const int n = n0 + row + i;
    const float s = v[i] + (a.bias ? a.bias[n] : 0.0f);
    const size_t off = size_t(t) * a.ldy + n;
    if (a.y_f32) {
      float* y = static_cast<float*>(a.y) + off;
      *y = a.accumulate ? *y + s : s;
    } else {
      static_cast<__nv_bfloat16*>(a.y)[off] = __float2bfloat16_rn(s);
    }
  }
}

bool resident_enabled() {
  static const bool on = !env_knob_off("GPT_OSS_C_GEMV_RESIDENT");
  return on;
}

int resident_rows(const DenseParams& p, int num_sms) { return (p.N + num_sms - 1) / num_sms; }

// Dynamic shared memory of a block: its rows, or the partial tiles that later reuse them if larger.
size_t resident_smem(int rows, int K) { return std::max(size_t(rows) * resident_row_bytes(K), kRedBytes); }

}  // namespace

bool dense_gemv_resident_fits(const DenseParams& p, const DenseWorkspace& ws) {
  if (!resident_enabled() || !ws.pdl || ws.num_sms <= 0) return false;
  if (p.T < 1 || p.T > 8 || p.N < 1 || p.K < 32 || p.K % 32 != 0 || p.ldx % 8 != 0 || p.ldx < p.K || p.ldy < p.N)
    return false;
  if (p.x_type != DType::BF16 || (p.y_type != DType::BF16 && p.y_type != DType::F32)) return false;
  if (p.accumulate && p.y_type != DType::F32) return false;
  if (!aligned_to(p.x, 16) || !aligned_to(p.w, 16) || p.K / 32 > kMaxK32 * kWarps) return false;
  // The device's opt-in limit too: sm_120 has PDL but 99 KB per block.
  const int rows = resident_rows(p, ws.num_sms);
  const size_t smem = resident_smem(rows, p.K);
  return rows <= kMaxRows && smem <= kMaxSmem && smem <= smem_optin_bytes();
}

// Floor (H200, ~4.2 TB/s): 2 N K bytes; the 20b's output projection 23.6 MB -> 5.6 us, most of which
// may overlap the decode attention before it.
Status launch_dense_gemv_resident(const DenseParams& p, const DenseWorkspace& ws, cudaStream_t stream) {
  if (!dense_gemv_resident_fits(p, ws))
    return make_error(StatusCode::InvalidArgument, "dense: this call does not fit the resident GEMV");
  GPTOSS_RETURN_IF_ERROR(ensure_smem(bf16_dense_gemv_resident, kMaxSmem, "bf16_dense_gemv_resident"));
  ResidentArgs a;
  static_cast<DenseCoreArgs&>(a) = dense_core_args(p);
  a.rows = resident_rows(p, ws.num_sms);
  const int blocks = (p.N + a.rows - 1) / a.rows;
  return launch_pdl(bf16_dense_gemv_resident, dim3(blocks), dim3(kThreads), resident_smem(a.rows, p.K), ws.pdl, stream,
                    "bf16_dense_gemv_resident", a);
}

}  // namespace gptoss
