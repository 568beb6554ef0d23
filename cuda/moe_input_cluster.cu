// Fused MoE input for decode-sized steps on sm_90: rmsnorm -> router GEMV -> top-k + softmax in one
// launch of thread-block clusters (ops.h MoEInputParams; the same math as the three ops one by one).
//
// Why (bench/NOTES.md, H200, session 5): the GEMV fusion (dense_bf16.cu, kept for other archs)
// spreads the 184 KB router over split-K blocks that meet in global memory twice (partials, fence
// and an arrival counter; then a finished-tile counter before the top-k): 8.0 us at T = 1 for a
// floor of ~0, 206 us of the 2216 us decode step (bench/op_cost.py). Here the blocks meet at cluster
// barriers and read each other's partial sums from distributed shared memory.
//
// Layout: one cluster of kRanks blocks per chunk of kChunkTokens tokens. Block `rank` owns the
// 16-byte column vectors [rank nvec / kRanks, (rank + 1) nvec / kRanks) of K (nvec = K / 8):
//   1. it copies its slice of W [E][slice] into shared memory (cp.async, before pdl_wait: weights
//      never depend on the preceding kernel), then its slice of each token's residual row xf, and
//      publishes its partial sums of squares;
//   2. cluster barrier; every block adds the kRanks partials in rank order (so all agree on 1/rms),
//      normalises its slice, rounds it to bf16 as f32_rmsnorm does and writes it to xn (the
//      experts' input);
//   3. thread (e, part) dots W[e] with every token over the vectors part, part + P, ...; the P parts
//      are added in part order in shared memory (the block's partial logits);
//   4. cluster barrier; block `rank` finishes tokens rank and rank + kRanks of the chunk: adds the
//      kRanks partial logits in rank order (DSMEM) and the bias, writes the logits, and one warp
//      per token runs warp_router_topk (the standalone op's code) on them;
//   5. a cluster barrier between the last DSMEM read and any block's exit.
// The sums run in another order than the op-by-op path: xn may differ by one bf16 ulp, the logits
// by f32 rounding (test_fused_ops bounds both); the top-k is exact on the kernel's own logits.
#include <cooperative_groups.h>

#include <algorithm>
#include <string>

#include "cuda_check.cuh"
#include "device_common.cuh"
#include "kernel_caps.cuh"
#include "mma_sm80.cuh"
#include "moe_input_cluster.cuh"
#include "pdl.cuh"
#include "router_topk.cuh"

namespace gptoss {
namespace {

namespace cg = cooperative_groups;

constexpr int kRanks = 8;          // blocks per cluster (the portable cluster size): K slices
constexpr int kThreads = 256;
[[maybe_unused]] constexpr int kWarps = kThreads / kWarpSize;
constexpr int kChunkTokens = 16;   // tokens per cluster: each rank finishes at most 2 of them
constexpr int kMaxTokens = 128;    // larger steps take the composition (the GEMM path)
constexpr int kMaxExperts = 128;   // W slice in shared memory: 92 KB at E = 128, K = 2880
constexpr int kMaxSmem = 200 * 1024;
static_assert(kChunkTokens <= 2 * kRanks, "a rank finishes at most two tokens of its chunk");

struct ClusterArgs {
  const float* xf;  int ldxf;      // [T][K] residual (f32)
  const float* norm_w;  float eps; // [K]
  __nv_bfloat16* xn;  int ldxn;    // [T][K] normalised, bf16
  const bf16_t* w;                 // [E][K] router weight (bf16 bits)
  const float* bias;               // [E] or nullptr
  float* logits;  int ldl;         // [T][E]
  int32_t* idx;  float* wts;       // [T][k]
  int T, K, E, k;
  int nv_max;     // vectors in the largest slice
  int ws_stride;  // W slice row stride in 16-byte vectors (odd: conflict-free 128-bit reads)
  int P;          // column parts per expert (threads per expert row)
};

struct SmemLayout {
  size_t ws, xs, red, pl, ssp, lg, bytes;
};

// ws: uint4 [E][ws_stride]; xs: float4 [kChunkTokens][2][nv_max] (elements 0-3 / 4-7 of vector v
// at half 0 / 1); red: f32 [kChunkTokens][E][P]; pl: f32 [kChunkTokens][E] (read by the peers);
// ssp: f32 [kChunkTokens] (read by the peers); lg: f32 [2][E].
__host__ __device__ inline SmemLayout smem_layout(int E, int nv_max, int ws_stride, int P) {
  SmemLayout s{};
  s.ws = 0;
  s.xs = s.ws + size_t(E) * ws_stride * 16;
  s.red = s.xs + size_t(kChunkTokens) * 2 * nv_max * 16;
  s.pl = s.red + size_t(kChunkTokens) * E * P * 4;
  s.ssp = s.pl + size_t(kChunkTokens) * E * 4;
  s.lg = s.ssp + size_t(kChunkTokens) * 4;
  s.bytes = s.lg + size_t(2) * E * 4;
  return s;
}

__global__ void __launch_bounds__(kThreads) moe_input_cluster(ClusterArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) uint8_t smem[];
  cg::cluster_group cluster = cg::this_cluster();
  const SmemLayout L = smem_layout(a.E, a.nv_max, a.ws_stride, a.P);
  uint4* ws = reinterpret_cast<uint4*>(smem + L.ws);
  float4* xs = reinterpret_cast<float4*>(smem + L.xs);
  float* red = reinterpret_cast<float*>(smem + L.red);
  float* pl = reinterpret_cast<float*>(smem + L.pl);
  float* ssp = reinterpret_cast<float*>(smem + L.ssp);
  float* lg = reinterpret_cast<float*>(smem + L.lg);
  const int rank = int(cluster.block_rank());
  const int t0 = int(blockIdx.x / kRanks) * kChunkTokens, nt = min(kChunkTokens, a.T - t0);
  const int nvec = a.K / 8, v0 = rank * nvec / kRanks, nv = (rank + 1) * nvec / kRanks - v0;
  const int tid = int(threadIdx.x), warp = tid / kWarpSize, lane = tid % kWarpSize;
  auto xs_at = [&](int t, int half, int v) -> float4& { return xs[(t * 2 + half) * a.nv_max + v]; };

  // 1. The W slice (independent of the preceding kernel), then the residual slices.
  for (int i = tid; i < a.E * nv; i += kThreads) {
    const int e = i / nv, v = i % nv;
    tc::cp_async_16(tc::smem_addr(ws + e * a.ws_stride + v), a.w + size_t(e) * a.K + 8 * (v0 + v), true);
  }
  tc::cp_async_commit();
  pdl_wait();
  for (int t = warp; t < nt; t += kWarps) {
    const float4* x4 = reinterpret_cast<const float4*>(a.xf + size_t(t0 + t) * a.ldxf) + 2 * v0;
    float ss = 0.0f;
    for (int f = lane; f < 2 * nv; f += kWarpSize) {
      const float4 v = x4[f];
      xs_at(t, f & 1, f >> 1) = v;
      ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    ss = warp_sum(ss);
    if (lane == 0) ssp[t] = ss;
  }
  cluster.sync();

  // 2. Normalise the slice: xn = bf16(x * (1 / rms) * g), kept in xs as the f32 value of that bf16.
  const float4* g4 = reinterpret_cast<const float4*>(a.norm_w) + 2 * v0;
  for (int t = warp; t < nt; t += kWarps) {
    float ss = 0.0f;
    for (int r = 0; r < kRanks; ++r) ss += *cluster.map_shared_rank(ssp + t, r);
    const float inv = rsqrtf(ss / float(a.K) + a.eps);
    uint2* out = reinterpret_cast<uint2*>(a.xn + size_t(t0 + t) * a.ldxn) + 2 * v0;
    for (int f = lane; f < 2 * nv; f += kWarpSize) {
      float4& x = xs_at(t, f & 1, f >> 1);
      const float4 v = x, g = __ldg(g4 + f);
      const uint32_t lo = pack_bf16x2(v.x * inv * g.x, v.y * inv * g.y);
      const uint32_t hi = pack_bf16x2(v.z * inv * g.z, v.w * inv * g.w);
      out[f] = make_uint2(lo, hi);
      const float2 l = unpack_bf16x2(lo), h = unpack_bf16x2(hi);
      x = make_float4(l.x, l.y, h.x, h.y);
    }
  }
  tc::cp_async_wait<0>();
  __syncthreads();
  pdl_launch_dependents();  // every input is read; the experts' kernel still waits for all of this grid

  // 3. Partial logits of this slice.
  if (tid < a.E * a.P) {
    const int e = tid / a.P, part = tid % a.P;
    float acc[kChunkTokens];
#pragma unroll
    for (int t = 0; t < kChunkTokens; ++t) acc[t] = 0.0f;
    for (int v = part; v < nv; v += a.P) {
      const uint4 wv = ws[e * a.ws_stride + v];
      const float2 w[4] = {unpack_bf16x2(wv.x), unpack_bf16x2(wv.y), unpack_bf16x2(wv.z), unpack_bf16x2(wv.w)};
#pragma unroll
      for (int t = 0; t < kChunkTokens; ++t) {
        if (t >= nt) break;
        acc[t] = dot8(w, xs_at(t, 0, v), xs_at(t, 1, v), acc[t]);
      }
    }
#pragma unroll
    for (int t = 0; t < kChunkTokens; ++t)
      if (t < nt) red[(t * a.E + e) * a.P + part] = acc[t];
  }
  __syncthreads();
  for (int i = tid; i < nt * a.E; i += kThreads) {
    float s = 0.0f;
    for (int p = 0; p < a.P; ++p) s += red[i * a.P + p];
    pl[i] = s;
  }
  cluster.sync();

  // 4. This rank's tokens: rank and rank + kRanks of the chunk.
  const int mine = nt > rank + kRanks ? 2 : nt > rank ? 1 : 0;
  for (int i = tid; i < mine * a.E; i += kThreads) {
    const int j = i / a.E, e = i % a.E, t = rank + j * kRanks;
    float s = 0.0f;
    for (int r = 0; r < kRanks; ++r) s += cluster.map_shared_rank(pl, r)[t * a.E + e];
    if (a.bias) s += a.bias[e];
    lg[i] = s;
    a.logits[size_t(t0 + t) * a.ldl + e] = s;
  }
  cluster.sync();  // 5. no peer reads this block's shared memory after this
  if (warp < mine) {
    const int t = t0 + rank + warp * kRanks;
    warp_router_topk<true>(lg + warp * a.E, a.E, a.k, a.idx + size_t(t) * a.k, a.wts + size_t(t) * a.k);
  }
#else
  __trap();  // never launched: moe_input_cluster_fits() requires an sm_90 device and sm_90 code
#endif
}

// An sm_90+ device, this kernel built as sm_90 code (not compute_80 PTX JIT-compiled for it), and
// no GPT_OSS_C_FORCE_PORTABLE=1.
bool cluster_kernel_available() {
  static const bool ok = sm90_code_runnable(moe_input_cluster, /*exact_90=*/false);
  return ok;
}

ClusterArgs cluster_args(const MoEInputParams& p) {
  const RMSNormParams& n = p.norm;
  const DenseParams& d = p.gate;
  const RouterParams& r = p.router;
  ClusterArgs a{};
  a.xf = n.x;
  a.ldxf = n.ldx;
  a.norm_w = n.w;
  a.eps = n.eps;
  a.xn = static_cast<__nv_bfloat16*>(n.out);
  a.ldxn = n.ldo;
  a.w = d.w;
  a.bias = d.bias;
  a.logits = static_cast<float*>(d.y);
  a.ldl = d.ldy;
  a.idx = r.expert_idx;
  a.wts = r.expert_w;
  a.T = d.T;
  a.K = d.K;
  a.E = d.N;
  a.k = r.k;
  a.nv_max = (d.K / 8 + kRanks - 1) / kRanks;
  a.ws_stride = a.nv_max | 1;
  a.P = std::max(1, std::min({kThreads / std::max(1, a.E), a.nv_max, 8}));
  return a;
}

}  // namespace

bool moe_input_sm90_call_ok(const MoEInputParams& p, int max_tokens, int max_experts) {
  const RMSNormParams& n = p.norm;
  const DenseParams& d = p.gate;
  const RouterParams& r = p.router;
  const int T = d.T;
  const bool shape = T >= 1 && T <= max_tokens && n.T == T && r.T == T && n.rows == nullptr && n.H == d.K &&
                     d.K >= 8 && d.K % 8 == 0 && r.E == d.N && r.E >= 1 && r.E <= max_experts && r.k >= 1 &&
                     r.k <= kRouterMaxK && r.k <= r.E;
  const bool layout = n.out_type == DType::BF16 && d.x_type == DType::BF16 && d.y_type == DType::F32 &&
                      !d.accumulate && d.x == n.out && d.ldx == n.ldo && r.logits == d.y && r.ldl == d.ldy &&
                      d.ldy >= d.N && n.ldx >= n.H && n.ldx % 4 == 0 && n.ldo >= n.H && n.ldo % 4 == 0 && n.x &&
                      n.w && n.out && d.w && d.y && r.expert_idx && r.expert_w && aligned_to(n.x, 16) &&
                      aligned_to(n.w, 16) && aligned_to(d.w, 16) && aligned_to(n.out, 8) && aligned_to(d.y, 4);
  return shape && layout;
}

bool moe_input_cluster_fits(const MoEInputParams& p) {
  if (!moe_input_sm90_call_ok(p, kMaxTokens, kMaxExperts)) return false;
  const ClusterArgs a = cluster_args(p);
  return smem_layout(a.E, a.nv_max, a.ws_stride, a.P).bytes <= size_t(kMaxSmem) && cluster_kernel_available();
}

// Floor: the router weights (184 KB at 20b: ~0.05 us of HBM) and the residual rows; the cost is
// latency: one round of loads, three cluster barriers, one top-k round per token.
Status launch_moe_input_cluster(const MoEInputParams& p, bool pdl, cudaStream_t stream) {
  if (!moe_input_cluster_fits(p))
    return make_error(StatusCode::InvalidArgument, "moe_input: this call does not fit the cluster kernel");
  const ClusterArgs a = cluster_args(p);
  GPTOSS_RETURN_IF_ERROR(ensure_smem(moe_input_cluster, kMaxSmem, "moe_input_cluster"));
  return launch_pdl_cluster(moe_input_cluster, dim3(unsigned((a.T + kChunkTokens - 1) / kChunkTokens * kRanks)),
                            dim3(kThreads), smem_layout(a.E, a.nv_max, a.ws_stride, a.P).bytes, kRanks, pdl, stream,
                            "moe_input_cluster", a);
}

}  // namespace gptoss
