// Micro-benchmark of CPU decode attention at long context, built and run by bench/cpu_attention.py.
// Calls Backend::attention directly (the ops binding would copy the whole cache on every call),
// with the gpt-oss head layout (64 q heads over 8 kv heads, head_dim 64), full causal attention
// (the long-context layers), one or several decode sequences at `context` cached keys each.
// The cache is rotated over enough copies (>= --min-mib in total) that it streams from memory,
// as it does in the engine, where each layer has its own cache. Read bandwidth is measured in the
// same process: all threads summing one large buffer.
//
//   cpu_attention_main --kv f32|bf16 --context N [--seqs S] [--threads N] [--reps R] [--min-mib M]
// Prints one JSON object.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "backend.h"

using namespace gptoss;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Values in [-1, 1) from a xorshift stream: cheap to make 1 GiB of, and never subnormal.
void fill(float* x, size_t n, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    x[i] = float(int32_t(s >> 32)) * (1.0f / 2147483648.0f);
  }
}

// GB/s of `threads` threads each summing its share of a 1 GiB buffer (median of 5).
double read_bandwidth(int threads) {
  const size_t n = (size_t(1) << 30) / sizeof(uint64_t);
  std::vector<uint64_t> buf(n, 1);
  std::vector<double> times;
  std::vector<uint64_t> sums(static_cast<size_t>(threads));
  for (int rep = 0; rep < 6; ++rep) {
    const double t0 = now();
    std::vector<std::thread> ts;
    for (int i = 0; i < threads; ++i)
      ts.emplace_back([&, i] {
        uint64_t a = 0, b = 0, c = 0, d = 0;
        const size_t lo = n * i / threads, hi = n * (i + 1) / threads;
        for (size_t j = lo; j + 4 <= hi; j += 4) { a += buf[j]; b += buf[j + 1]; c += buf[j + 2]; d += buf[j + 3]; }
        sums[size_t(i)] = a + b + c + d;
      });
    for (auto& t : ts) t.join();
    if (rep) times.push_back(now() - t0);
  }
  return double(n * sizeof(uint64_t)) / median(times) / 1e9;
}

int fail(const Status& s) {
  std::fprintf(stderr, "error: %s\n", s.message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string kv = "f32";
  int context = 4096, seqs = 1, threads = 0, reps = 30, min_mib = 1024;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--kv") kv = argv[i + 1];
    else if (a == "--context") context = std::atoi(argv[i + 1]);
    else if (a == "--seqs") seqs = std::atoi(argv[i + 1]);
    else if (a == "--threads") threads = std::atoi(argv[i + 1]);
    else if (a == "--reps") reps = std::atoi(argv[i + 1]);
    else if (a == "--min-mib") min_mib = std::atoi(argv[i + 1]);
    else { std::fprintf(stderr, "unknown argument %s\n", argv[i]); return 2; }
  }
  if ((kv != "f32" && kv != "bf16") || context < 1 || seqs < 1 || reps < 1) {
    std::fprintf(stderr, "usage: --kv f32|bf16 --context N>=1 [--seqs S>=1] [--threads N] [--reps R]\n");
    return 2;
  }
  const int n_q = 64, n_kv = 8, T = seqs, S = seqs;
  const DType type = kv == "f32" ? DType::F32 : DType::BF16;
  auto backend = make_cpu_backend(threads);
  const int nthreads = threads > 0 ? threads : cpu_default_threads();

  // One cache: [S][n_kv][context + 1][64]; position `context` is this step's token.
  const size_t elems = size_t(S) * n_kv * size_t(context + 1) * kHeadDim, bytes = elems * dtype_size(type);
  const int copies = int(std::max<size_t>(1, (size_t(min_mib) << 20) / (2 * bytes)));
  std::vector<float> tmp(elems);
  std::vector<void*> ks(static_cast<size_t>(copies)), vs(static_cast<size_t>(copies));
  for (int c = 0; c < copies; ++c) {
    for (void** p : {&ks[size_t(c)], &vs[size_t(c)]}) {
      if (Status s = backend->alloc(p, bytes, "kv cache"); !s.ok()) return fail(s);
      fill(tmp.data(), elems, uint64_t(c) * 2 + (p == &vs[size_t(c)]));
      if (type == DType::F32) {
        std::memcpy(*p, tmp.data(), bytes);
      } else {
        bf16_t* h = static_cast<bf16_t*>(*p);
        for (size_t i = 0; i < elems; ++i) h[i] = f32_to_bf16(tmp[i]);
      }
    }
  }
  std::vector<float> q(size_t(T) * n_q * kHeadDim), kv_step(size_t(T) * n_kv * kHeadDim), out(q.size());
  std::vector<float> sinks(n_q, 0.5f);
  fill(q.data(), q.size(), 99);
  fill(kv_step.data(), kv_step.size(), 98);
  std::vector<int32_t> tok_pos(T, context), tok_seq(T), seq_slot(S), seq_start(S, context), seq_tok0(S + 1);
  for (int s = 0; s < S; ++s) tok_seq[s] = seq_slot[s] = seq_tok0[s] = s;
  seq_tok0[S] = S;

  AttentionParams p;
  p.batch = BatchDesc{T, S, tok_pos.data(), tok_seq.data(), seq_slot.data(), seq_start.data(), seq_tok0.data()};
  p.q = q.data(); p.ldq = p.ldo = n_q * kHeadDim;
  p.k = kv_step.data(); p.v = kv_step.data(); p.ldkv = n_kv * kHeadDim;
  p.act_type = DType::F32;
  p.cache.type = type; p.cache.slots = S; p.cache.n_kv = n_kv; p.cache.len = context + 1;
  p.sinks = sinks.data(); p.out = out.data(); p.n_q = n_q; p.n_kv = n_kv;

  std::vector<double> times;
  for (int r = 0; r <= reps; ++r) {
    p.cache.k = ks[size_t(r % copies)];
    p.cache.v = vs[size_t(r % copies)];
    const double t0 = now();
    if (Status s = backend->attention(p); !s.ok()) return fail(s);
    if (r) times.push_back(now() - t0);  // the first call warms the pool and the scratch
  }
  const double t = median(times), kv_bytes = 2.0 * S * n_kv * double(context) * kHeadDim * dtype_size(type);
  const double bw = read_bandwidth(nthreads);
  std::printf("{\"device\": \"%s\", \"kv\": \"%s\", \"context\": %d, \"seqs\": %d, \"n_q\": %d, \"n_kv\": %d, "
              "\"threads\": %d, \"copies\": %d, \"ms\": %.4f, \"kv_GBps\": %.3f, \"read_GBps\": %.3f, "
              "\"fraction_of_read_bw\": %.3f}\n",
              backend->device_name().c_str(), dtype_name(type), context, seqs, n_q, n_kv, nthreads, copies,
              t * 1e3, kv_bytes / t / 1e9, bw, kv_bytes / t / 1e9 / bw);
  for (size_t c = 0; c < size_t(copies); ++c) {
    backend->free(ks[c]);
    backend->free(vs[c]);
  }
  return 0;
}
