// Micro-benchmark of the CUDA kernels (dense bf16, decode attention, MXFP4 MoE) on random device data, built and run
// by bench/cuda_kernels.py. Each case is captured as a CUDA graph of `reps` back-to-back calls, so
// the time is GPU time without host launch overhead; the median of several graph launches is
// reported. Prints one JSON object per line.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "attention.cuh"
#include "backend.h"
#include "cuda_backend.cuh"
#include "cuda_check.cuh"
#include "dense_bf16.cuh"
#include "moe_mxfp4.cuh"
#include "mxfp4_layout.cuh"

using namespace gptoss;

namespace gptoss {
// The backend's GPT_OSS_C_FORCE_PORTABLE switch (defined in cuda/cuda_backend.cu, which this
// standalone binary does not link).
bool cuda_force_portable() {
  const char* v = std::getenv("GPT_OSS_C_FORCE_PORTABLE");
  return v != nullptr && std::string(v) == "1";
}
}  // namespace gptoss

#define CHECK_CUDA(x)                                                                 \
  do {                                                                                \
    cudaError_t e_ = (x);                                                             \
    if (e_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s failed: %s (%s:%d)\n", #x, cudaGetErrorString(e_), __FILE__, __LINE__); \
      return 1;                                                                       \
    }                                                                                 \
  } while (0)
#define CHECK_STATUS(x)                                                  \
  do {                                                                   \
    Status s_ = (x);                                                     \
    if (!s_.ok()) {                                                      \
      std::fprintf(stderr, "%s failed: %s\n", #x, s_.message.c_str());  \
      return 1;                                                          \
    }                                                                    \
  } while (0)

// Deterministic pseudo-random fill: bf16 N(0,~1)-ish values, random bytes, or scale bytes.
__global__ void fill_bf16(uint16_t* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
    const float v = (float(h & 0xffff) / 65536.0f - 0.5f) * 3.4f * scale;
    p[i] = f32_to_bf16(v);
  }
}
__global__ void fill_bytes(uint8_t* p, size_t n, uint32_t seed, int lo, int span) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
    p[i] = uint8_t(span ? lo + int(h % uint32_t(span)) : h);
  }
}

struct Timer {
  cudaStream_t stream;
  // Median microseconds per call of `fn` (which enqueues one call on `stream`).
  template <class Fn>
  int time(Fn fn, int reps, float* us) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < reps; ++i) {
      Status s = fn();
      if (!s.ok()) {
        std::fprintf(stderr, "launch failed: %s\n", s.message.c_str());
        cudaStreamEndCapture(stream, &graph);
        return 1;
      }
    }
    CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
    CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t a, b;
    CHECK_CUDA(cudaEventCreate(&a));
    CHECK_CUDA(cudaEventCreate(&b));
    CHECK_CUDA(cudaGraphLaunch(exec, stream));  // warm-up
    CHECK_CUDA(cudaStreamSynchronize(stream));
    std::vector<float> t;
    for (int i = 0; i < 7; ++i) {
      CHECK_CUDA(cudaEventRecord(a, stream));
      CHECK_CUDA(cudaGraphLaunch(exec, stream));
      CHECK_CUDA(cudaEventRecord(b, stream));
      CHECK_CUDA(cudaEventSynchronize(b));
      float ms = 0;
      CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
      t.push_back(ms * 1000.0f / reps);
    }
    std::sort(t.begin(), t.end());
    *us = t[t.size() / 2];
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    return 0;
  }
};

static double g_copy_gbs = 0;  // measured device-to-device copy rate (read + write), GB/s
static const double kPeakTflops = 770.0;

static void report(const char* kernel, const std::string& shape, float us, double bytes, double flops) {
  const double gbs = bytes / (us * 1e-6) / 1e9, tflops = flops / (us * 1e-6) / 1e12;
  const double floor_us = std::max(bytes / (g_copy_gbs * 1e9), flops / (kPeakTflops * 1e12)) * 1e6;
  std::printf("{\"kernel\": \"%s\", \"shape\": \"%s\", \"us\": %.2f, \"GB/s\": %.0f, \"TFLOP/s\": %.1f, "
              "\"floor_us\": %.2f, \"of_floor\": %.3f}\n",
              kernel, shape.c_str(), us, gbs, tflops, floor_us, floor_us / us);
  std::fflush(stdout);
}

int run_checks(cudaStream_t stream, const std::string& only);  // cuda_kernels_check.cu

__global__ void copy_u4(const uint4* __restrict__ a, uint4* __restrict__ b, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) b[i] = a[i];
}

// Usage: cuda_kernels [REPS [dense|fused|moe]]   (benchmark)  |  cuda_kernels check [dense|moe]   (correctness)
int main(int argc, char** argv) {
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  if (argc > 1 && std::string(argv[1]) == "check") {
    std::printf("checking on %s\n", prop.name);
    return run_checks(stream, argc > 2 ? argv[2] : "");
  }
  const int reps = argc > 1 ? std::atoi(argv[1]) : 20;
  // One family: dense | fused | attention | moe, or moe:T for the MoE cases with T tokens only (for ncu).
  const std::string only = argc > 2 ? argv[2] : "";
  const int only_t = only.rfind("moe:", 0) == 0 ? std::atoi(only.c_str() + 4) : 0;
  auto want = [&](const char* family) {
    return only.empty() || only == family || (only_t > 0 && std::string(family) == "moe");
  };
  Timer timer{stream};

  // Copy ceiling: 1 GiB device-to-device (counts read + write).
  {
    const size_t n = size_t(1) << 30;
    void *a, *b;
    CHECK_CUDA(cudaMalloc(&a, n));
    CHECK_CUDA(cudaMalloc(&b, n));
    float us = 0;
    // An SM copy kernel, as the kernels read: a graph's memcpy node may run on a copy engine, which
    // measured ~2.7 TB/s on the H200 against ~4.2 TB/s for SM loads and stores.
    const unsigned blocks = unsigned(prop.multiProcessorCount) * 8;
    auto copy = [&] {
      copy_u4<<<blocks, 256, 0, stream>>>(static_cast<const uint4*>(a), static_cast<uint4*>(b), n / 16);
      return cuda_status(cudaGetLastError(), "copy", __FILE__, __LINE__);
    };
    if (timer.time(copy, 3, &us)) return 1;
    g_copy_gbs = 2.0 * n / (us * 1e-6) / 1e9;
    std::printf("{\"device\": \"%s\", \"sms\": %d, \"copy_GB/s\": %.0f, \"reps\": %d}\n", prop.name, prop.multiProcessorCount,
                g_copy_gbs, reps);
    cudaFree(a);
    cudaFree(b);
  }

  // ---- dense (gpt-oss-20b shapes), with the backend's split-K workspace and PDL setting ----
  DenseWorkspace dws;
  dws.num_sms = prop.multiProcessorCount;
  dws.pdl = prop.major >= 9;
  dws.bytes = dense_workspace_bytes(dws.num_sms);
  CHECK_CUDA(cudaMalloc(&dws.ptr, dws.bytes));
  CHECK_CUDA(cudaMemset(dws.ptr, 0, dws.bytes));
  struct DenseCase { const char* name; int T, N, K; DType y; bool acc; };
  const DenseCase dense[] = {
      {"qkv", 1, 5120, 2880, DType::BF16, false},      {"out+=", 1, 2880, 4096, DType::F32, true},
      {"router", 1, 32, 2880, DType::F32, false},      {"unembed", 1, 201088, 2880, DType::F32, false},
      {"qkv", 8, 5120, 2880, DType::BF16, false},      {"qkv", 16, 5120, 2880, DType::BF16, false},
      {"out+=", 8, 2880, 4096, DType::F32, true},      {"router", 8, 32, 2880, DType::F32, false},
      {"qkv", 32, 5120, 2880, DType::BF16, false},     {"out+=", 32, 2880, 4096, DType::F32, true},
      {"qkv", 64, 5120, 2880, DType::BF16, false},     {"out+=", 64, 2880, 4096, DType::F32, true},
      {"router", 64, 32, 2880, DType::F32, false},     {"out+=", 128, 2880, 4096, DType::F32, true},
      {"unembed", 64, 201088, 2880, DType::F32, false}, {"qkv", 2048, 5120, 2880, DType::BF16, false},
      {"out+=", 2048, 2880, 4096, DType::F32, true},
  };
  // Back-to-back calls on one weight matrix find it in L2 when it fits (the 20b's q/k/v: 29.5 MB of a
  // 50 MB L2), which a decode step never does: each case is also timed "cold", each call reading the
  // next of enough copies of the weights to span twice the L2.
  const size_t l2 = size_t(std::max(prop.l2CacheSize, 1));
  auto cold_copies = [&](size_t bytes) { return int(std::min<size_t>(1024, (2 * l2 + bytes - 1) / bytes)); };
  for (const DenseCase& c : dense) {
    if (!want("dense")) break;
    uint16_t *x, *w;
    float* bias;
    void* y;
    const size_t wn = size_t(c.N) * c.K;
    const int copies = cold_copies(2 * wn);
    CHECK_CUDA(cudaMalloc(&x, size_t(c.T) * c.K * 2));
    CHECK_CUDA(cudaMalloc(&w, wn * 2 * copies));
    CHECK_CUDA(cudaMalloc(&bias, size_t(c.N) * 4));
    CHECK_CUDA(cudaMalloc(&y, size_t(c.T) * c.N * 4));
    fill_bf16<<<1024, 256, 0, stream>>>(x, size_t(c.T) * c.K, 1, 1.0f);
    fill_bf16<<<4096, 256, 0, stream>>>(w, wn * copies, 2, 0.02f);
    CHECK_CUDA(cudaMemsetAsync(bias, 0, size_t(c.N) * 4, stream));
    CHECK_CUDA(cudaMemsetAsync(y, 0, size_t(c.T) * c.N * 4, stream));
    DenseParams p;
    p.x = x; p.ldx = c.K; p.x_type = DType::BF16; p.w = w; p.bias = bias; p.y = y; p.ldy = c.N; p.y_type = c.y;
    p.T = c.T; p.K = c.K; p.N = c.N; p.accumulate = c.acc;
    float us = 0;
    if (timer.time([&] { return launch_dense_bf16(p, dws, stream); }, reps, &us)) return 1;
    const double bytes = 2.0 * c.N * c.K + 2.0 * c.T * c.K + (c.y == DType::F32 ? (c.acc ? 8.0 : 4.0) : 2.0) * c.T * c.N;
    const std::string shape =
        std::string(c.name) + " T=" + std::to_string(c.T) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K);
    report("dense", shape, us, bytes, 2.0 * c.T * c.N * c.K);
    if (copies > 1) {
      int call = 0;
      auto cold = [&] {
        DenseParams pc = p;
        pc.w = w + wn * size_t(call++ % copies);
        return launch_dense_bf16(pc, dws, stream);
      };
      if (timer.time(cold, std::max(reps, copies), &us)) return 1;
      report("dense", shape + " cold", us, bytes, 2.0 * c.T * c.N * c.K);
    }
    cudaFree(x); cudaFree(w); cudaFree(bias); cudaFree(y);
  }

  // ---- fused decode blocks (20b shapes): attn_input = rmsnorm + qkv + RoPE + KV append,
  // moe_input = rmsnorm + router + top-k; one kernel each ----
  for (int T : {1, 8}) {
    if (!want("fused")) break;
    const int H = 2880, NQ = 64, NKV = 8, QKV = (NQ + 2 * NKV) * 64, E = 32, TOPK = 4, CTX = 4096;
    float *xres, *nw, *bias, *cosb, *sinb, *logits, *ew;
    uint16_t *xn, *wq, *wg, *qkv, *ck, *cv;
    int32_t *ints, *eidx;
    CHECK_CUDA(cudaMalloc(&xres, size_t(T) * H * 4)); CHECK_CUDA(cudaMalloc(&nw, H * 4));
    CHECK_CUDA(cudaMalloc(&bias, QKV * 4)); CHECK_CUDA(cudaMalloc(&cosb, size_t(CTX) * 32 * 4));
    CHECK_CUDA(cudaMalloc(&sinb, size_t(CTX) * 32 * 4)); CHECK_CUDA(cudaMalloc(&logits, size_t(T) * E * 4));
    CHECK_CUDA(cudaMalloc(&ew, size_t(T) * TOPK * 4)); CHECK_CUDA(cudaMalloc(&eidx, size_t(T) * TOPK * 4));
    // Cold copies of the weights, as for the dense cases.
    const size_t nq = size_t(QKV) * H, ng = size_t(E) * H;
    const int cq = cold_copies(2 * nq), cg = cold_copies(2 * ng);
    CHECK_CUDA(cudaMalloc(&xn, size_t(T) * H * 2)); CHECK_CUDA(cudaMalloc(&wq, nq * 2 * cq));
    CHECK_CUDA(cudaMalloc(&wg, ng * 2 * cg)); CHECK_CUDA(cudaMalloc(&qkv, size_t(T) * QKV * 2));
    CHECK_CUDA(cudaMalloc(&ck, size_t(T) * NKV * CTX * 64 * 2)); CHECK_CUDA(cudaMalloc(&cv, size_t(T) * NKV * CTX * 64 * 2));
    CHECK_CUDA(cudaMalloc(&ints, 4 * 64 * 4));
    fill_bf16<<<4096, 256, 0, stream>>>(wq, nq * cq, 8, 0.02f);
    fill_bf16<<<4096, 256, 0, stream>>>(wg, ng * cg, 9, 0.02f);
    CHECK_CUDA(cudaMemsetAsync(xres, 0, size_t(T) * H * 4, stream)); CHECK_CUDA(cudaMemsetAsync(nw, 0, H * 4, stream));
    CHECK_CUDA(cudaMemsetAsync(bias, 0, QKV * 4, stream)); CHECK_CUDA(cudaMemsetAsync(cosb, 0, size_t(CTX) * 32 * 4, stream));
    CHECK_CUDA(cudaMemsetAsync(sinb, 0, size_t(CTX) * 32 * 4, stream));
    std::vector<int32_t> h(4 * 64, 0);  // tok_pos | tok_seq | seq_slot | seq_tok0
    for (int t = 0; t < T; ++t) { h[t] = 200 + t; h[64 + t] = t; h[128 + t] = t; h[192 + t] = t; }
    h[192 + T] = T;
    CHECK_CUDA(cudaMemcpy(ints, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
    BatchDesc b;
    b.T = T; b.S = T; b.tok_pos = ints; b.tok_seq = ints + 64; b.seq_slot = ints + 128; b.seq_start = ints;
    b.seq_tok0 = ints + 192;
    AttnInputParams ai;
    ai.norm.x = xres; ai.norm.ldx = H; ai.norm.w = nw; ai.norm.out = xn; ai.norm.ldo = H; ai.norm.out_type = DType::BF16;
    ai.norm.T = T; ai.norm.H = H;
    DenseParams& d = ai.dense[0];
    d.x = xn; d.ldx = H; d.x_type = DType::BF16; d.w = wq; d.bias = bias; d.y = qkv; d.ldy = QKV; d.y_type = DType::BF16;
    d.T = T; d.K = H; d.N = QKV;
    ai.rope.batch = b; ai.rope.q = qkv; ai.rope.ldq = QKV; ai.rope.k = qkv + NQ * 64; ai.rope.ldk = QKV;
    ai.rope.type = DType::BF16; ai.rope.cos = cosb; ai.rope.sin = sinb; ai.rope.n_q = NQ; ai.rope.n_kv = NKV;
    ai.append_kv = true;
    ai.append.batch = b; ai.append.k = ai.rope.k; ai.append.v = qkv + (NQ + NKV) * 64; ai.append.ldkv = QKV;
    ai.append.act_type = DType::BF16; ai.append.cache.k = ck; ai.append.cache.v = cv; ai.append.cache.type = DType::BF16;
    ai.append.cache.slots = T; ai.append.cache.n_kv = NKV; ai.append.cache.len = CTX;
    float us = 0;
    if (timer.time([&] { return launch_attn_input_fused(ai, dws, stream); }, reps, &us)) return 1;
    report("fused", "attn_input T=" + std::to_string(T) + " N=5120 K=2880", us, 2.0 * QKV * H + 4.0 * T * H + 2.0 * T * QKV,
           2.0 * T * QKV * H);
    int call = 0;
    auto attn_cold = [&] {
      AttnInputParams c = ai;
      c.dense[0].w = wq + nq * size_t(call++ % cq);
      return launch_attn_input_fused(c, dws, stream);
    };
    if (timer.time(attn_cold, std::max(reps, cq), &us)) return 1;
    report("fused", "attn_input T=" + std::to_string(T) + " N=5120 K=2880 cold", us,
           2.0 * QKV * H + 4.0 * T * H + 2.0 * T * QKV, 2.0 * T * QKV * H);
    MoEInputParams mi;
    mi.norm = ai.norm;
    mi.gate.x = xn; mi.gate.ldx = H; mi.gate.x_type = DType::BF16; mi.gate.w = wg; mi.gate.bias = bias; mi.gate.y = logits;
    mi.gate.ldy = E; mi.gate.y_type = DType::F32; mi.gate.T = T; mi.gate.K = H; mi.gate.N = E;
    mi.router.logits = logits; mi.router.ldl = E; mi.router.expert_idx = eidx; mi.router.expert_w = ew;
    mi.router.T = T; mi.router.E = E; mi.router.k = TOPK;
    if (timer.time([&] { return launch_moe_input_fused(mi, dws, stream); }, reps, &us)) return 1;
    report("fused", "moe_input T=" + std::to_string(T) + " N=32 K=2880", us, 2.0 * E * H + 6.0 * T * H, 2.0 * T * E * H);
    call = 0;
    auto moe_in_cold = [&] {
      MoEInputParams c = mi;
      c.gate.w = wg + ng * size_t(call++ % cg);
      return launch_moe_input_fused(c, dws, stream);
    };
    if (timer.time(moe_in_cold, std::max(reps, cg), &us)) return 1;
    report("fused", "moe_input T=" + std::to_string(T) + " N=32 K=2880 cold", us, 2.0 * E * H + 6.0 * T * H, 2.0 * T * E * H);
    for (void* ptr : {(void*)xres, (void*)nw, (void*)bias, (void*)cosb, (void*)sinb, (void*)logits, (void*)ew, (void*)eidx,
                      (void*)xn, (void*)wq, (void*)wg, (void*)qkv, (void*)ck, (void*)cv, (void*)ints})
      cudaFree(ptr);
  }
  cudaFree(dws.ptr);

  // ---- decode attention (20b heads: 64 query, 8 KV, head_dim 64, bf16 cache), S sequences of one
  // token each at context `ctx`; full attention (window 0, cache len = ctx) or the 128-token window.
  // Bytes: the KV read (ctx or 128 positions x 8 heads x 64 x 2 x 2) + q / out.
  {
    struct AttnCase { int S, ctx, window; };
    const AttnCase attns[] = {{1, 128, 0}, {1, 1024, 0}, {1, 8192, 0}, {1, 8192, 128}, {64, 256, 0}, {64, 256, 128}};
    const int NQ = 64, NKV = 8;
    for (const AttnCase& c : attns) {
      if (!want("attention")) break;
      const int S = c.S, len = c.window ? c.window : c.ctx + 1;
      uint16_t *q, *kv, *ck, *cv, *out;
      float* sinks;
      int32_t* ints;
      CHECK_CUDA(cudaMalloc(&q, size_t(S) * NQ * 64 * 2)); CHECK_CUDA(cudaMalloc(&out, size_t(S) * NQ * 64 * 2));
      CHECK_CUDA(cudaMalloc(&kv, size_t(S) * 2 * NKV * 64 * 2)); CHECK_CUDA(cudaMalloc(&sinks, NQ * 4));
      CHECK_CUDA(cudaMalloc(&ck, size_t(S) * NKV * len * 64 * 2)); CHECK_CUDA(cudaMalloc(&cv, size_t(S) * NKV * len * 64 * 2));
      CHECK_CUDA(cudaMalloc(&ints, size_t(5 * S + 1) * 4));
      fill_bf16<<<1024, 256, 0, stream>>>(q, size_t(S) * NQ * 64, 21, 1.0f);
      fill_bf16<<<1024, 256, 0, stream>>>(kv, size_t(S) * 2 * NKV * 64, 22, 1.0f);
      fill_bf16<<<4096, 256, 0, stream>>>(ck, size_t(S) * NKV * len * 64, 23, 1.0f);
      fill_bf16<<<4096, 256, 0, stream>>>(cv, size_t(S) * NKV * len * 64, 24, 1.0f);
      CHECK_CUDA(cudaMemsetAsync(sinks, 0, NQ * 4, stream));
      // tok_pos | tok_seq | seq_slot | seq_start | seq_tok0: token s is sequence s's token at position ctx.
      std::vector<int32_t> h(size_t(5 * S + 1));
      for (int i = 0; i < S; ++i) {
        h[i] = c.ctx; h[S + i] = i; h[2 * S + i] = i; h[3 * S + i] = c.ctx; h[4 * S + i] = i;
      }
      h[5 * S] = S;
      CHECK_CUDA(cudaMemcpy(ints, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
      AttentionParams ap;
      ap.batch.T = S; ap.batch.S = S; ap.batch.tok_pos = ints; ap.batch.tok_seq = ints + S; ap.batch.seq_slot = ints + 2 * S;
      ap.batch.seq_start = ints + 3 * S; ap.batch.seq_tok0 = ints + 4 * S;
      ap.q = q; ap.ldq = NQ * 64; ap.k = kv; ap.v = kv + NKV * 64; ap.ldkv = 2 * NKV * 64; ap.act_type = DType::BF16;
      ap.cache.k = ck; ap.cache.v = cv; ap.cache.type = DType::BF16; ap.cache.slots = S; ap.cache.n_kv = NKV; ap.cache.len = len;
      ap.sinks = sinks; ap.out = out; ap.ldo = NQ * 64; ap.n_q = NQ; ap.n_kv = NKV; ap.window = c.window;
      AttentionWorkspace aws;
      aws.num_sms = prop.multiProcessorCount;
      aws.pdl = dws.pdl;  // as CudaBackend: sm_90+
      aws.bytes = attention_workspace_bytes(S, NQ, NKV, aws.num_sms);
      CHECK_CUDA(cudaMalloc(&aws.ptr, aws.bytes));
      CHECK_CUDA(cudaMemset(aws.ptr, 0, aws.bytes));
      CHECK_CUDA(cudaMalloc(&aws.errors, sizeof(DeviceErrorRecord)));
      CHECK_CUDA(cudaMemset(aws.errors, 0, sizeof(DeviceErrorRecord)));
      float us = 0;
      if (timer.time([&] { return launch_attention(ap, aws, stream); }, reps, &us)) return 1;
      const double keys = c.window ? std::min(c.window, c.ctx + 1) : c.ctx + 1;
      report("attention", "S=" + std::to_string(S) + " ctx=" + std::to_string(c.ctx) + " window=" + std::to_string(c.window), us,
             double(S) * (keys * NKV * 64 * 2 * 2 + 2.0 * NQ * 64 * 2), double(S) * 4.0 * NQ * 64 * keys);
      for (void* ptr : {(void*)q, (void*)kv, (void*)ck, (void*)cv, (void*)out, (void*)sinks, (void*)ints, aws.ptr,
                        (void*)aws.errors})
        cudaFree(ptr);
    }
  }

  // ---- MoE ----
  const bool moe_pdl = prop.major >= 9 && !cuda_force_portable();  // as CudaBackend's pdl_
  struct MoeCase { int T, E, k, H, I; };
  const MoeCase moes[] = {{1, 32, 4, 2880, 2880},    {2, 32, 4, 2880, 2880},   {8, 32, 4, 2880, 2880},
                          {16, 32, 4, 2880, 2880},   {32, 32, 4, 2880, 2880},  {64, 32, 4, 2880, 2880},
                          {128, 32, 4, 2880, 2880},  {512, 32, 4, 2880, 2880}, {2048, 32, 4, 2880, 2880},
                          {1, 128, 4, 2880, 2880},   {64, 128, 4, 2880, 2880}, {2048, 128, 4, 2880, 2880}};
  for (const MoeCase& c : moes) {
    if (!want("moe")) break;
    if (only_t > 0 && c.T != only_t) continue;
    const int64_t s1[4] = {c.E, 2 * c.I, c.H / 32, 16}, s2[4] = {c.E, c.H, c.I / 32, 16};
    size_t b1b, b1s, b2b, b2s;
    CHECK_STATUS(mxfp4_device_bytes(WeightKind::Mxfp4Blocks, s1, 4, &b1b));
    CHECK_STATUS(mxfp4_device_bytes(WeightKind::Mxfp4Scales, s1, 3, &b1s));
    CHECK_STATUS(mxfp4_device_bytes(WeightKind::Mxfp4Blocks, s2, 4, &b2b));
    CHECK_STATUS(mxfp4_device_bytes(WeightKind::Mxfp4Scales, s2, 3, &b2s));
    uint8_t *w1b, *w1s, *w2b, *w2s;
    float *b1, *b2, *y, *ew;
    uint16_t* x;
    int32_t* idx;
    CHECK_CUDA(cudaMalloc(&w1b, b1b)); CHECK_CUDA(cudaMalloc(&w1s, b1s));
    CHECK_CUDA(cudaMalloc(&w2b, b2b)); CHECK_CUDA(cudaMalloc(&w2s, b2s));
    CHECK_CUDA(cudaMalloc(&b1, size_t(c.E) * 2 * c.I * 4)); CHECK_CUDA(cudaMalloc(&b2, size_t(c.E) * c.H * 4));
    CHECK_CUDA(cudaMalloc(&x, size_t(c.T) * c.H * 2)); CHECK_CUDA(cudaMalloc(&y, size_t(c.T) * c.H * 4));
    CHECK_CUDA(cudaMalloc(&idx, size_t(c.T) * c.k * 4)); CHECK_CUDA(cudaMalloc(&ew, size_t(c.T) * c.k * 4));
    fill_bytes<<<4096, 256, 0, stream>>>(w1b, b1b, 3, 0, 0);
    fill_bytes<<<4096, 256, 0, stream>>>(w2b, b2b, 4, 0, 0);
    fill_bytes<<<1024, 256, 0, stream>>>(w1s, b1s, 5, 118, 4);
    fill_bytes<<<1024, 256, 0, stream>>>(w2s, b2s, 6, 116, 4);
    fill_bf16<<<1024, 256, 0, stream>>>(x, size_t(c.T) * c.H, 7, 1.0f);
    CHECK_CUDA(cudaMemsetAsync(b1, 0, size_t(c.E) * 2 * c.I * 4, stream));
    CHECK_CUDA(cudaMemsetAsync(b2, 0, size_t(c.E) * c.H * 4, stream));
    CHECK_CUDA(cudaMemsetAsync(y, 0, size_t(c.T) * c.H * 4, stream));
    // Routing: k distinct experts per token, uniformly at random.
    std::mt19937 rng(c.T * 7 + c.E);
    std::vector<int32_t> hidx(size_t(c.T) * c.k);
    std::vector<float> hw(size_t(c.T) * c.k, 1.0f / c.k);
    std::vector<char> used(c.E, 0);
    std::vector<int> perm(c.E);
    for (int t = 0; t < c.T; ++t) {
      for (int e = 0; e < c.E; ++e) perm[e] = e;
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int j = 0; j < c.k; ++j) {
        hidx[size_t(t) * c.k + j] = perm[j];
        used[perm[j]] = 1;
      }
    }
    const int active = int(std::count(used.begin(), used.end(), 1));
    CHECK_CUDA(cudaMemcpy(idx, hidx.data(), hidx.size() * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(ew, hw.data(), hw.size() * 4, cudaMemcpyHostToDevice));
    BackendLimits lim;
    lim.max_tokens = c.T; lim.top_k = c.k; lim.n_experts = c.E; lim.hidden = c.H; lim.intermediate = c.I;
    const size_t ws_bytes = moe_workspace_bytes(lim);
    void* ws;
    CHECK_CUDA(cudaMalloc(&ws, ws_bytes));
    MoEParams p;
    p.x = x; p.ldx = c.H; p.x_type = DType::BF16; p.expert_idx = idx; p.expert_w = ew;
    p.w1_blocks = w1b; p.w1_scales = w1s; p.b1 = b1; p.w2_blocks = w2b; p.w2_scales = w2s; p.b2 = b2;
    p.y = y; p.ldy = c.H; p.T = c.T; p.E = c.E; p.k = c.k; p.H = c.H; p.I = c.I;
    p.scales_below_128 = true;  // fill_bytes above: scale bytes 116 .. 121, as in real checkpoints
    float us = 0;
    if (timer.time([&] { return launch_moe_mxfp4(p, ws, ws_bytes, moe_pdl, stream); }, reps, &us)) return 1;
    const double expert_bytes = double(b1b + b1s + b2b + b2s) / c.E;
    const double bytes = active * expert_bytes + 2.0 * c.T * c.H + 8.0 * c.T * c.H;
    const double flops = 2.0 * c.T * c.k * (2.0 * c.I + c.H) * c.H;
    report("moe", "T=" + std::to_string(c.T) + " E=" + std::to_string(c.E) + " k=" + std::to_string(c.k) + " H=I=" +
                      std::to_string(c.H) + " active=" + std::to_string(active),
           us, bytes, flops);
    cudaFree(w1b); cudaFree(w1s); cudaFree(w2b); cudaFree(w2s); cudaFree(b1); cudaFree(b2);
    cudaFree(x); cudaFree(y); cudaFree(idx); cudaFree(ew); cudaFree(ws);
  }
  return 0;
}
