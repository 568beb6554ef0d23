// Fused MoE input for one token on sm_90 (decode at batch 1): rmsnorm -> router GEMV -> top-k + softmax,
// with the router's experts split over the blocks of one cluster (ops.h MoEInputParams; the same math
// as the three ops one by one).
//
// Why (bench/NOTES.md, H200, session 9): the K-split cluster kernel (cuda/moe_input_cluster.cu) pays,
// after pdl_wait, a cluster barrier for the sums of squares, a second one for the partial logits
// (read back through distributed shared memory) and a third before exit, plus a global round trip
// for the norm weights: 6.1 us in the kernel bench, ~10 us per layer inside the decode step, for ~0
// bytes. Here each block holds whole expert rows, so nothing but the final logits crosses blocks:
//   - before pdl_wait (none of it depends on the preceding kernel), block b copies the rows of its
//     experts [b Eb, (b + 1) Eb) of W [E][K], the norm weights and its biases into shared memory
//     (cp.async). 8 blocks by default (Eb = 4 at 20b, 16 at 120b): one SM pulls only ~25 GB/s, and
//     all of the 20b's 184 KB in one block took 8.2 us, 4 blocks 5.3, 8 blocks 4.9;
//   - after pdl_wait, the first 256 threads normalise the residual row exactly as f32_rmsnorm does
//     (rmsnorm_row: same loop, same reduction tree, so xn is bit for bit the plain op's), block 0
//     writes xn (the experts' input), every block keeps the bf16-rounded values in shared memory;
//   - P = 32 / Eb warps per expert dot its row with xn (lanes stride K in 8-element vectors, a warp
//     sum, the P parts added in part order), so the logits are complete inside the block;
//   - every block writes its logits and stores them into block 0's shared memory (DSMEM), one
//     cluster barrier, and one warp of block 0 runs the standalone op's warp_router_topk (the DSMEM
//     stores first wait on a cluster barrier every block arrived at on entry: a peer's shared memory
//     may only be written once the peer runs).
// Latency after pdl_wait: one round of residual loads, the norm's and the dot products' block
// barriers, ~2 vectors of dot product per lane, one cluster barrier, one top-k. Whole model (H200): decode 505-510 -> 521-525
// tok/s.
#include "moe_input_expert_split.cuh"

#include <cooperative_groups.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
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

constexpr int kThreads = 1024;                 // 32 warps: P = 32 / Eb per expert row of the block (Eb <= 32)
constexpr int kWarps = kThreads / kWarpSize;
[[maybe_unused]] constexpr int kNormThreads = 256;  // f32_rmsnorm's block size: the same reduction tree
constexpr int kMaxCluster = 8;                 // portable cluster size: E <= 256
constexpr size_t kMaxSmem = 220 * 1024;        // of the 227 KB a block may opt in to on sm_90

struct SplitArgs {
  const float* xf;                 // [K] residual row (f32)
  const float* norm_w;  float eps; // [K]
  __nv_bfloat16* xn;               // [K] normalised, bf16 (written by block 0)
  const bf16_t* w;                 // [E][K] router weight (bf16 bits)
  const float* bias;               // [E] or nullptr
  float* logits;                   // [E]
  int32_t* idx;  float* wts;       // [k]
  int K, E, k;
  int Eb;                          // experts per block (<= 32)
  int P;                           // warps per expert: kWarps / Eb
};

// ws: bf16 [Eb][K]; gs: f32 [K]; xs: f32 [K] (xn's bf16 values); bs: f32 [32]; part: f32 [kWarps];
// lg: f32 [E] (block 0: every block's logits); red: f32 [32].
struct SmemLayout {
  size_t ws, gs, xs, bs, part, lg, red, bytes;
};

__host__ __device__ inline SmemLayout smem_layout(int K, int E, int Eb) {
  SmemLayout s{};
  s.ws = 0;
  s.gs = s.ws + size_t(Eb) * K * 2;
  s.xs = s.gs + size_t(K) * 4;
  s.bs = s.xs + size_t(K) * 4;
  s.part = s.bs + 32 * 4;
  s.lg = s.part + kWarps * 4;
  s.red = s.lg + size_t((E + 3) / 4 * 4) * 4;
  s.bytes = s.red + 32 * 4;
  return s;
}

template <bool kCluster>
__global__ void __launch_bounds__(kThreads) moe_input_expert_split(SplitArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) uint8_t smem[];
  const SmemLayout L = smem_layout(a.K, a.E, a.Eb);
  float* gs = reinterpret_cast<float*>(smem + L.gs);
  float* xs = reinterpret_cast<float*>(smem + L.xs);
  float* bs = reinterpret_cast<float*>(smem + L.bs);
  float* part = reinterpret_cast<float*>(smem + L.part);
  float* lg = reinterpret_cast<float*>(smem + L.lg);
  float* red = reinterpret_cast<float*>(smem + L.red);
  const int tid = int(threadIdx.x), warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int rank = kCluster ? int(cg::this_cluster().block_rank()) : 0;
  const int e0 = rank * a.Eb, ne = max(0, min(a.Eb, a.E - e0));
  const int nvec = a.K / 8;
  // A block may write a peer's shared memory only once the peer has started (CUDA programming guide,
  // distributed shared memory; compute-sanitizer racecheck flagged step 4's store into block 0):
  // arrive here, wait just before that store, long after every block has arrived.
  if constexpr (kCluster) asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");

  // 1. Weights, norm weights and biases: none depends on the preceding kernel. Two groups: the norm
  // weights are needed first.
  for (int i = tid; i < a.K / 4; i += kThreads) tc::cp_async_16(tc::smem_addr(gs + 4 * i), a.norm_w + 4 * i, true);
  if (a.bias && tid < ne) tc::cp_async_4(tc::smem_addr(bs + tid), a.bias + e0 + tid);
  tc::cp_async_commit();
  const uint8_t* wsrc = reinterpret_cast<const uint8_t*>(a.w + size_t(e0) * a.K);
  for (int i = tid; i < ne * nvec; i += kThreads)
    tc::cp_async_16(tc::smem_addr(smem + L.ws + 16 * size_t(i)), wsrc + 16 * size_t(i), true);
  tc::cp_async_commit();
  tc::cp_async_wait<1>();  // this thread's norm weights and biases; the barriers below publish them
  __syncthreads();
  pdl_wait();

  // 2. xn = bf16(x * (1 / rms) * g), f32_rmsnorm's arithmetic; kept in xs as the f32 value of that bf16.
  __nv_bfloat16* xn = rank == 0 ? a.xn : nullptr;
  rmsnorm_row(reinterpret_cast<const float4*>(a.xf), reinterpret_cast<const float4*>(gs), a.K / 4, a.K, a.eps, red,
              [&](int i, float4 v) {
                const uint32_t lo = pack_bf16x2(v.x, v.y), hi = pack_bf16x2(v.z, v.w);
                if (xn) *reinterpret_cast<uint2*>(xn + 4 * i) = make_uint2(lo, hi);
                const float2 l = unpack_bf16x2(lo), h = unpack_bf16x2(hi);
                *reinterpret_cast<float4*>(xs + 4 * i) = make_float4(l.x, l.y, h.x, h.y);
              },
              kNormThreads);
  tc::cp_async_wait<0>();
  __syncthreads();
  pdl_launch_dependents();  // every input is read; the experts' kernel still waits for all of this grid

  // 3. Logit of expert e0 + ew: warps ew * P .. ew * P + P - 1, lanes over 8-element vectors.
  const int ew = warp / a.P, p = warp % a.P;
  if (ew < ne) {
    const uint4* wr = reinterpret_cast<const uint4*>(smem + L.ws) + size_t(ew) * nvec;
    const float4* x4 = reinterpret_cast<const float4*>(xs);
    float acc = 0.0f;
    for (int v = p * kWarpSize + lane; v < nvec; v += a.P * kWarpSize) {
      const uint4 wv = wr[v];
      const float2 w[4] = {unpack_bf16x2(wv.x), unpack_bf16x2(wv.y), unpack_bf16x2(wv.z), unpack_bf16x2(wv.w)};
      acc = dot8(w, x4[2 * v], x4[2 * v + 1], acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) part[warp] = acc;
  }
  __syncthreads();

  // 4. This block's logits to global memory and to block 0's lg; then block 0 selects.
  if constexpr (kCluster) asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
  if (tid < ne) {
    float s = 0.0f;
    for (int q = 0; q < a.P; ++q) s += part[tid * a.P + q];
    if (a.bias) s += bs[tid];
    a.logits[e0 + tid] = s;
    if constexpr (kCluster) {
      *cg::this_cluster().map_shared_rank(lg + e0 + tid, 0) = s;
    } else {
      lg[e0 + tid] = s;
    }
  }
  if constexpr (kCluster) {
    cg::this_cluster().sync();  // release / acquire: block 0 sees every block's stores
  } else {
    __syncthreads();
  }
  if (rank == 0 && warp == 0) warp_router_topk<true>(lg, a.E, a.k, a.idx, a.wts);
#else
  __trap();  // never launched: moe_input_expert_split_fits() requires an sm_90 device and sm_90 code
#endif
}

bool kernels_available() {
  static const bool ok = sm90_code_runnable(moe_input_expert_split<true>, /*exact_90=*/false) &&
                         sm90_code_runnable(moe_input_expert_split<false>, /*exact_90=*/false);
  return ok;
}

// GPT_OSS_C_MOE_INPUT=cluster turns this kernel off (the K-split cluster kernel then takes T = 1 too),
// for A/B measurements.
bool disabled_by_env() {
  static const bool off = [] {
    const char* v = std::getenv("GPT_OSS_C_MOE_INPUT");
    return v && std::strcmp(v, "cluster") == 0;
  }();
  return off;
}

// Blocks per cluster (GPT_OSS_C_MOE_INPUT_BLOCKS, 1..8, an A/B knob; default 8, see the top).
int cluster_size_wanted() {
  static const int n = [] {
    const char* v = std::getenv("GPT_OSS_C_MOE_INPUT_BLOCKS");
    const int b = v ? std::atoi(v) : kMaxCluster;
    return b >= 1 && b <= kMaxCluster ? b : kMaxCluster;
  }();
  return n;
}

SplitArgs split_args(const MoEInputParams& p) {
  SplitArgs a{};
  a.xf = p.norm.x;
  a.norm_w = p.norm.w;
  a.eps = p.norm.eps;
  a.xn = static_cast<__nv_bfloat16*>(p.norm.out);
  a.w = p.gate.w;
  a.bias = p.gate.bias;
  a.logits = static_cast<float*>(p.gate.y);
  a.idx = p.router.expert_idx;
  a.wts = p.router.expert_w;
  a.K = p.gate.K;
  a.E = p.gate.N;
  a.k = p.router.k;
  const int blocks = std::max((a.E + kWarps - 1) / kWarps, std::min(a.E, cluster_size_wanted()));
  a.Eb = (a.E + blocks - 1) / blocks;
  a.P = kWarps / a.Eb;
  return a;
}

int cluster_blocks(const SplitArgs& a) { return (a.E + a.Eb - 1) / a.Eb; }

}  // namespace

bool moe_input_expert_split_fits(const MoEInputParams& p) {
  const float* bias = p.gate.bias;
  if (!moe_input_sm90_call_ok(p, 1, kMaxCluster * kWarps) || (bias && !aligned_to(bias, 4)) || disabled_by_env())
    return false;
  const SplitArgs a = split_args(p);
  return smem_layout(a.K, a.E, a.Eb).bytes <= kMaxSmem && kernels_available();
}

// Floor: the router weights (184 KB at 20b, ~0.05 us of HBM, loaded before pdl_wait) and one
// residual row; the cost is latency: one round of loads, the block barriers of the norm and the dot
// products, one cluster barrier (more than one block), one top-k.
Status launch_moe_input_expert_split(const MoEInputParams& p, bool pdl, cudaStream_t stream) {
  if (!moe_input_expert_split_fits(p))
    return make_error(StatusCode::InvalidArgument, "moe_input: this call does not fit the expert-split kernel");
  const SplitArgs a = split_args(p);
  const int blocks = cluster_blocks(a);
  const size_t smem = smem_layout(a.K, a.E, a.Eb).bytes;
  if (blocks == 1) {
    GPTOSS_RETURN_IF_ERROR(ensure_smem(moe_input_expert_split<false>, kMaxSmem, "moe_input_expert_split"));
    return launch_pdl(moe_input_expert_split<false>, dim3(1), dim3(kThreads), smem, pdl, stream,
                      "moe_input_expert_split", a);
  }
  GPTOSS_RETURN_IF_ERROR(ensure_smem(moe_input_expert_split<true>, kMaxSmem, "moe_input_expert_split"));
  return launch_pdl_cluster(moe_input_expert_split<true>, dim3(unsigned(blocks)), dim3(kThreads), smem,
                            unsigned(blocks), pdl, stream, "moe_input_expert_split", a);
}

}  // namespace gptoss
