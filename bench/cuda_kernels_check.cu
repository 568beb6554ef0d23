// Standalone correctness check of cuda-b's kernels, without the Python binding or the backend:
// `cuda_kernels check` (bench/cuda_kernels.py --check). Random inputs, float64 host references
// straight from the checkpoint formats (the MXFP4 weights go through mxfp4_upload, so the device
// re-layout is checked too), one line per case naming the kernel path, exit status 1 on failure.
// Bounds: dense 2^-16 of sum |x w| + |b| (f32 accumulation of exact products) plus one bf16
// rounding of a bf16 output (half an ulp: <= 2^-8 relative); MoE 2^-7 of the row magnitude sum_j w (|W2| |z| + |b2|) (z is bf16,
// and the kernel's f32 swiglu may round to the neighbouring bf16 of the float64 one) plus f32 terms.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend.h"
#include "cuda_backend.cuh"
#include "dense_bf16.cuh"
#include "moe_mxfp4.cuh"
#include "moe_mxfp4_impl.cuh"

using namespace gptoss;

namespace {

std::mt19937 g_rng(1234);

uint16_t rand_bf16(float scale) {
  std::normal_distribution<float> n(0.0f, scale);
  return f32_to_bf16(n(g_rng));
}

template <class T>
struct DevBuf {
  T* p = nullptr;
  explicit DevBuf(size_t n) { cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)); }
  ~DevBuf() { cudaFree(p); }
  void put(const std::vector<T>& h) { cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice); }
  void get(std::vector<T>& h) { cudaMemcpy(h.data(), p, h.size() * sizeof(T), cudaMemcpyDeviceToHost); }
};

int g_failures = 0;
DenseWorkspace g_dense_ws;  // split-K scratch, as the backend sizes it (run_checks)

void verdict(const std::string& what, double worst_ratio, const std::string& detail, const Status& st) {
  const bool ok = st.ok() && worst_ratio <= 1.0 && cudaGetLastError() == cudaSuccess;
  if (!ok) ++g_failures;
  std::printf("%s %-64s err/bound %.3f %s%s\n", ok ? "PASS" : "FAIL", what.c_str(), worst_ratio, detail.c_str(),
              st.ok() ? "" : (" status: " + st.message).c_str());
  std::fflush(stdout);
}

// Split-K (GEMV: N <~ 3000 rows at T <= 16, GEMM: fewer tiles than 2 per SM at T <= 128) is chosen
// from the SM count; the name gives the regime.
std::string dense_path(int T, int N, int K, int ldx) {
  if (K % 32 || ldx % 8) return "generic";
  if (T <= 16) return T <= 8 ? "gemv NT=1" : "gemv NT=2";
  if (T > 128) return "gemm 128x128";
  return N >= 256 ? "gemm 64x128 split-K" : "gemm 64x64 split-K";
}

// ldx = K + xpad, ldy = N + ypad (strided rows; the pads hold garbage that must not be read or
// written).
void check_dense(cudaStream_t st, int T, int N, int K, DType yt, bool acc, bool bias, int xpad = 0, int ypad = 0) {
  const int ldx = K + xpad, ldy = N + ypad;
  std::vector<uint16_t> x(size_t(T) * ldx), w(size_t(N) * K);
  for (auto& v : x) v = rand_bf16(1.0f);
  for (auto& v : w) v = rand_bf16(0.05f);
  std::vector<float> b(N), y0(size_t(T) * ldy, 0.0f);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  for (auto& v : b) v = bias ? n01(g_rng) : 0.0f;
  for (auto& v : y0) v = acc ? n01(g_rng) : 0.0f;
  if (yt == DType::BF16)  // a bf16 y has ldy * 2 bytes per row; fill its pads with a marker
    for (auto& v : y0) v = 0.0f;
  DevBuf<uint16_t> dx(x.size()), dw(w.size());
  DevBuf<float> db(b.size()), dy(y0.size());
  dx.put(x);
  dw.put(w);
  db.put(b);
  dy.put(y0);
  DenseParams p;
  p.x = dx.p; p.ldx = ldx; p.x_type = DType::BF16; p.w = dw.p; p.bias = bias ? db.p : nullptr;
  p.y = dy.p; p.ldy = ldy; p.y_type = yt; p.T = T; p.K = K; p.N = N; p.accumulate = acc;
  Status s = launch_dense_bf16(p, g_dense_ws, st);
  cudaStreamSynchronize(st);
  std::vector<float> out(size_t(T) * N);
  bool pads_ok = true;
  if (yt == DType::F32) {
    std::vector<float> full(size_t(T) * ldy);
    dy.get(full);
    for (int t = 0; t < T; ++t)
      for (int nn = 0; nn < ldy; ++nn) {
        if (nn < N) out[size_t(t) * N + nn] = full[size_t(t) * ldy + nn];
        else pads_ok &= full[size_t(t) * ldy + nn] == y0[size_t(t) * ldy + nn];
      }
  } else {
    std::vector<uint16_t> o16(size_t(T) * ldy);
    cudaMemcpy(o16.data(), dy.p, o16.size() * 2, cudaMemcpyDeviceToHost);
    for (int t = 0; t < T; ++t)
      for (int nn = 0; nn < ldy; ++nn) {
        if (nn < N) out[size_t(t) * N + nn] = bf16_to_f32(o16[size_t(t) * ldy + nn]);
        else pads_ok &= o16[size_t(t) * ldy + nn] == 0;
      }
  }
  double worst = 0;
  size_t worst_i = 0;
  double worst_ref = 0;
  for (int t = 0; t < T; ++t)
    for (int nn = 0; nn < N; ++nn) {
      double ref = b[nn], mag = std::fabs(b[nn]);
      for (int k = 0; k < K; ++k) {
        const double pr = double(bf16_to_f32(x[size_t(t) * ldx + k])) * bf16_to_f32(w[size_t(nn) * K + k]);
        ref += pr;
        mag += std::fabs(pr);
      }
      ref += y0[size_t(t) * ldy + nn];
      const double bound = std::ldexp(mag, -16) + (yt == DType::BF16 ? std::ldexp(std::fabs(ref), -8) : 0.0) +
                           1e-6 * std::fabs(ref) + 1e-30;
      const double r = std::fabs(out[size_t(t) * N + nn] - ref) / bound;
      if (!(r <= worst)) {
        worst = std::isnan(r) ? 1e30 : r;
        worst_i = size_t(t) * N + nn;
        worst_ref = ref;
      }
    }
  char detail[200];
  std::snprintf(detail, sizeof detail, "(worst t=%zu n=%zu: got %.6g want %.6g)%s", worst_i / N, worst_i % N,
                double(out[worst_i]), worst_ref, pads_ok ? "" : " WROTE INTO THE ROW PADDING");
  verdict("dense " + dense_path(T, N, K, ldx) + " T=" + std::to_string(T) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
              (yt == DType::F32 ? " f32" : " bf16") + (acc ? " +=" : "") + (bias ? " bias" : "") +
              (xpad || ypad ? " ldx=" + std::to_string(ldx) + " ldy=" + std::to_string(ldy) : ""),
          pads_ok ? worst : 1e30, detail, s);
}

double fp4(uint8_t code) { return fp4_e2m1_value(code); }

// Mirrors launch_moe_mxfp4's choice (moe_mxfp4.cu).
std::string moe_path(int T, int k, int E) {
  const int S = T * k;
  if (S <= moe::kStreamMaxSlots) return "stream";
  if (S <= moe::kStreamBatchMaxSlots) return "stream batch";
  if (moe::wgmma_available()) return "wgmma rs";
  const int avg = (S + E - 1) / E;
  return "gemm BM=" + std::to_string(avg <= 24 ? 32 : avg <= 64 ? 64 : 128);
}

void check_moe(cudaStream_t st, int T, int E, int k, int H, int I) {
  const int G1 = H / 32, G2 = I / 32, R1 = 2 * I;
  std::vector<uint16_t> x(size_t(T) * H);
  for (auto& v : x) v = rand_bf16(1.0f);
  std::vector<int32_t> idx(size_t(T) * k);
  std::vector<float> ew(size_t(T) * k);
  std::vector<int> perm(E);
  std::uniform_real_distribution<float> u01(0.05f, 1.0f);
  for (int t = 0; t < T; ++t) {
    for (int e = 0; e < E; ++e) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), g_rng);
    float sum = 0;
    for (int j = 0; j < k; ++j) {
      idx[size_t(t) * k + j] = perm[j];
      sum += (ew[size_t(t) * k + j] = u01(g_rng));
    }
    for (int j = 0; j < k; ++j) ew[size_t(t) * k + j] /= sum;
  }
  // Scales so that mlp1 outputs have rms ~7 (both swiglu clamps active), as in the Python tests.
  const int e1 = int(std::lround(std::log2(2.93 * std::sqrt(double(H)) / 7))), e2 = int(std::lround(std::log2(2.93 * std::sqrt(double(I)) * 10)));
  std::vector<uint8_t> w1b(size_t(E) * R1 * G1 * 16), w1s(size_t(E) * R1 * G1), w2b(size_t(E) * H * G2 * 16), w2s(size_t(E) * H * G2);
  for (auto& v : w1b) v = uint8_t(g_rng());
  for (auto& v : w2b) v = uint8_t(g_rng());
  for (auto& v : w1s) v = uint8_t(127 - e1 - 1 + int(g_rng() % 3));
  for (auto& v : w2s) v = uint8_t(127 - e2 - 1 + int(g_rng() % 3));
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> b1(size_t(E) * R1), b2(size_t(E) * H), y0(size_t(T) * H);
  for (auto& v : b1) v = n01(g_rng);
  for (auto& v : b2) v = n01(g_rng);
  for (auto& v : y0) v = n01(g_rng);

  const int64_t s1[4] = {E, R1, G1, 16}, s2[4] = {E, H, G2, 16};
  size_t n1b, n1s, n2b, n2s;
  Status s = mxfp4_device_bytes(WeightKind::Mxfp4Blocks, s1, 4, &n1b);
  if (s.ok()) s = mxfp4_device_bytes(WeightKind::Mxfp4Scales, s1, 3, &n1s);
  if (s.ok()) s = mxfp4_device_bytes(WeightKind::Mxfp4Blocks, s2, 4, &n2b);
  if (s.ok()) s = mxfp4_device_bytes(WeightKind::Mxfp4Scales, s2, 3, &n2s);
  const std::string what = "moe " + moe_path(T, k, E) + " T=" + std::to_string(T) + " E=" + std::to_string(E) + " k=" +
                           std::to_string(k) + " H=" + std::to_string(H) + " I=" + std::to_string(I);
  if (!s.ok()) return verdict(what, 0, "", s);
  DevBuf<uint8_t> d1b(n1b), d1s(n1s), d2b(n2b), d2s(n2s);
  s = mxfp4_upload(WeightKind::Mxfp4Blocks, w1b.data(), w1b.size(), s1, 4, d1b.p, st);
  if (s.ok()) s = mxfp4_upload(WeightKind::Mxfp4Scales, w1s.data(), w1s.size(), s1, 3, d1s.p, st);
  if (s.ok()) s = mxfp4_upload(WeightKind::Mxfp4Blocks, w2b.data(), w2b.size(), s2, 4, d2b.p, st);
  if (s.ok()) s = mxfp4_upload(WeightKind::Mxfp4Scales, w2s.data(), w2s.size(), s2, 3, d2s.p, st);
  if (!s.ok()) return verdict(what, 0, "", s);
  DevBuf<uint16_t> dx(x.size());
  DevBuf<int32_t> didx(idx.size());
  DevBuf<float> dew(ew.size()), db1(b1.size()), db2(b2.size()), dy(y0.size());
  dx.put(x); didx.put(idx); dew.put(ew); db1.put(b1); db2.put(b2); dy.put(y0);
  BackendLimits lim;
  lim.max_tokens = T; lim.top_k = k; lim.n_experts = E; lim.hidden = H; lim.intermediate = I;
  const size_t ws_bytes = moe_workspace_bytes(lim);
  DevBuf<uint8_t> ws(ws_bytes);
  MoEParams p;
  p.x = dx.p; p.ldx = H; p.x_type = DType::BF16; p.expert_idx = didx.p; p.expert_w = dew.p;
  p.w1_blocks = d1b.p; p.w1_scales = d1s.p; p.b1 = db1.p; p.w2_blocks = d2b.p; p.w2_scales = d2s.p; p.b2 = db2.p;
  p.y = dy.p; p.ldy = H; p.T = T; p.E = E; p.k = k; p.H = H; p.I = I;
  p.scales_below_128 = mxfp4_scales_below_128(w1s.data(), w1s.size()) && mxfp4_scales_below_128(w2s.data(), w2s.size());
  s = launch_moe_mxfp4(p, ws.p, ws_bytes, g_dense_ws.pdl && !cuda_force_portable(), st);
  // A watchdog instead of a blocking synchronise: a kernel that spins forever is reported by name
  // and the process exits, instead of eating the caller's time limit.
  const auto t_launch = std::chrono::steady_clock::now();
  while (cudaStreamQuery(st) == cudaErrorNotReady) {
    if (std::chrono::steady_clock::now() - t_launch > std::chrono::seconds(20)) {
      std::printf("HANG %s: the MoE kernels did not finish within 20 s\n", what.c_str());
      std::fflush(stdout);
      std::_Exit(3);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  cudaStreamSynchronize(st);
  std::vector<float> out(y0.size());
  dy.get(out);

  auto w_at = [](const std::vector<uint8_t>& blk, const std::vector<uint8_t>& sc, size_t row, int G, int kk) {
    const uint8_t byte = blk[(row * G + kk / 32) * 16 + (kk % 32) / 2];
    return fp4(kk % 2 ? byte >> 4 : byte & 15) * std::ldexp(1.0, int(sc[row * G + kk / 32]) - 127);
  };
  // float64 reference per token, tokens spread over host threads (the 20b-shape cases cost ~25M
  // weight decodes per slot: minutes on one core).
  std::vector<double> REF(size_t(T) * H), MAG(size_t(T) * H);
  std::atomic<int> next_t{0};
  auto worker = [&] {
    std::vector<double> z(I);
    for (int t; (t = next_t.fetch_add(1)) < T;) {
      double* ref = &REF[size_t(t) * H];
      double* mag = &MAG[size_t(t) * H];
      for (int nn = 0; nn < H; ++nn) ref[nn] = y0[size_t(t) * H + nn], mag[nn] = 0.0;
      for (int j = 0; j < k; ++j) {
        const int e = idx[size_t(t) * k + j];
        const double wt = ew[size_t(t) * k + j];
        for (int i = 0; i < I; ++i) {
          double g = b1[size_t(e) * R1 + 2 * i], l = b1[size_t(e) * R1 + 2 * i + 1];
          for (int kk = 0; kk < H; ++kk) {
            const double xv = bf16_to_f32(x[size_t(t) * H + kk]);
            g += w_at(w1b, w1s, size_t(e) * R1 + 2 * i, G1, kk) * xv;
            l += w_at(w1b, w1s, size_t(e) * R1 + 2 * i + 1, G1, kk) * xv;
          }
          g = std::min(g, 7.0);
          l = std::max(std::min(l, 7.0), -7.0);
          z[i] = bf16_to_f32(f32_to_bf16(float(g / (1.0 + std::exp(-1.702 * g)) * (l + 1.0))));
        }
        for (int nn = 0; nn < H; ++nn) {
          double acc = b2[size_t(e) * H + nn], m = std::fabs(b2[size_t(e) * H + nn]);
          for (int i = 0; i < I; ++i) {
            const double pr = w_at(w2b, w2s, size_t(e) * H + nn, G2, i) * z[i];
            acc += pr;
            m += std::fabs(pr);
          }
          ref[nn] += wt * acc;
          mag[nn] += wt * m;
        }
      }
    }
  };
  std::vector<std::thread> pool;
  const int nthreads = int(std::max(1u, std::min(std::thread::hardware_concurrency(), unsigned(T))));
  for (int i = 0; i < nthreads; ++i) pool.emplace_back(worker);
  for (auto& th : pool) th.join();

  double worst = 0;
  std::string detail;
  for (int t = 0; t < T; ++t) {
    for (int nn = 0; nn < H; ++nn) {
      const double rf = REF[size_t(t) * H + nn];
      const double bound = std::ldexp(MAG[size_t(t) * H + nn], -7) + std::ldexp(std::fabs(y0[size_t(t) * H + nn]), -20) + 1e-30;
      const double r = std::fabs(out[size_t(t) * H + nn] - rf) / bound;
      if (!(r <= worst)) {
        worst = std::isnan(r) ? 1e30 : r;
        char b[160];
        std::snprintf(b, sizeof b, "(worst t=%d n=%d: got %.6g want %.6g)", t, nn, double(out[size_t(t) * H + nn]), rf);
        detail = b;
      }
    }
  }
  verdict(what, worst, detail, s);
}

}  // namespace

int run_checks(cudaStream_t st, const std::string& only) {
  int dev = 0, sms = 0, major = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  g_dense_ws.num_sms = sms;
  g_dense_ws.pdl = major >= 9;
  g_dense_ws.bytes = dense_workspace_bytes(sms);
  cudaMalloc(&g_dense_ws.ptr, g_dense_ws.bytes);
  cudaMemset(g_dense_ws.ptr, 0, g_dense_ws.bytes);
  const struct { int T, N, K; } dshapes[] = {{1, 2880, 2880}, {3, 33, 96},   {8, 130, 32},   {9, 2880, 4096},
                                             {16, 32, 2880},  {17, 640, 160}, {64, 130, 96},  {65, 2880, 2880},
                                             {129, 33, 2880}, {300, 520, 96}, {2048, 96, 2880}, {5, 7, 100}};
  const bool dense = only.empty() || only == "dense", moe = only.empty() || only == "moe";
  for (const auto& d : dshapes) {
    if (!dense) break;
    check_dense(st, d.T, d.N, d.K, DType::BF16, false, true);
    check_dense(st, d.T, d.N, d.K, DType::F32, true, false);
  }
  if (dense) {
    check_dense(st, 1, 201088, 64, DType::F32, false, false);
    check_dense(st, 12, 8200, 256, DType::F32, false, true);
    check_dense(st, 2, 5120, 512, DType::BF16, false, true);
    // Strided rows: ldx = K + 8 keeps the 16-byte paths, K + 3 takes the generic kernel; odd ldy.
    check_dense(st, 3, 130, 96, DType::F32, true, true, 8, 3);
    check_dense(st, 70, 130, 2880, DType::BF16, false, true, 8, 5);
    check_dense(st, 2, 33, 64, DType::F32, false, true, 3, 1);
    // Split-K at the 20b decode / batched shapes: the router (GEMV over Z blocks, GEMM over 11 splits),
    // the output projection at T = 64 (45 tiles x 6 splits); twice in a row (counters left at zero).
    for (int rep = 0; rep < 2; ++rep) {
      check_dense(st, 1, 32, 2880, DType::F32, false, true);
      check_dense(st, 64, 32, 2880, DType::F32, false, true);
      check_dense(st, 64, 2880, 4096, DType::F32, true, true);
      check_dense(st, 100, 5120, 2880, DType::BF16, false, true);
    }
  }

  // stream (T * k <= 32: one expert's slots in 1 or several passes, odd K tails), stream batch
  // (T * k <= 512: one or many route tiles per expert), the prefill GEMMs (the mma.sync GEMM's three
  // token tiles), gpt-oss-20b and 120b-like expert counts.
  const struct { int T, E, k, H, I; } mshapes[] = {
      {1, 32, 4, 2880, 2880}, {8, 32, 4, 2880, 2880}, {64, 32, 4, 2880, 2880}, {1, 128, 4, 2880, 2880},
      {1, 32, 4, 96, 160},    {3, 32, 4, 160, 96},    {17, 8, 4, 96, 160},     {100, 8, 4, 160, 96},
      {128, 2, 2, 96, 160},   {128, 32, 4, 256, 256}, {129, 8, 4, 256, 256},   {300, 4, 2, 96, 96},
      {160, 64, 4, 96, 160},  {300, 32, 4, 160, 96},  {64, 128, 4, 256, 256},  {2048, 32, 4, 128, 64},
      {5, 256, 8, 64, 32},    {40, 8, 2, 32, 64},     {7, 4, 3, 96, 64},       {2, 16, 1, 64, 96},
      {20, 64, 2, 96, 160},   {10, 8, 3, 64, 32}};
  for (const auto& m : mshapes)
    if (moe) check_moe(st, m.T, m.E, m.k, m.H, m.I);
  cudaFree(g_dense_ws.ptr);
  std::printf("%d failure(s)\n", g_failures);
  return g_failures ? 1 : 0;
}
