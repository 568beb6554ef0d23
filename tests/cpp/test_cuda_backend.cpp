// The CUDA backend through the Backend interface, for what the Python op tests cannot reach:
//  * alloc beyond the GPU's memory: an OutOfMemory status naming what, bytes needed and bytes free,
//    and a backend that still works afterwards;
//  * graphs: a decode step (rmsnorm, rope, attention with split-K, kv_append, router, sampling)
//    captured once and replayed over several steps with refreshed inputs gives bit-for-bit the
//    eager results. Replays reuse the split-K arrival counters and the sampling scratch, so this
//    also shows the kernels leave them reset;
//  * an op that fails during capture abandons the capture, capture_end says which op and why, and
//    the backend keeps working;
//  * bad device-resident inputs (a KV-cache slot, a sampling setting) are skipped by the kernels and
//    reported by the next synchronisation.
// Without a GPU (or in a build without the CUDA backend) it prints "skipped" and exits 0.
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend.h"
#include "common.h"
#include "ops.h"

using namespace gptoss;

namespace {

int g_failures = 0;

bool report(bool ok, int line, const std::string& what) {
  if (!ok) {
    std::printf("FAIL (line %d): %s\n", line, what.c_str());
    ++g_failures;
  }
  return ok;
}
#define EXPECT(cond, msg) \
  if (!report((cond), __LINE__, std::string(#cond) + ": " + (msg))) return
#define EXPECT_OK(expr)                                                     \
  do {                                                                      \
    const Status _s = (expr);                                               \
    if (!report(_s.ok(), __LINE__, std::string(#expr) + ": " + _s.message)) \
      return;                                                               \
  } while (0)

// Device buffers freed on scope exit.
struct Buffers {
  Backend& b;
  std::vector<void*> ptrs;
  explicit Buffers(Backend& be) : b(be) {}
  ~Buffers() {
    for (void* p : ptrs) b.free(p);
  }
  template <class T>
  T* get(size_t n, const char* what) {
    void* p = nullptr;
    const Status s = b.alloc(&p, n * sizeof(T), what);
    report(s.ok(), __LINE__, std::string("alloc ") + what + ": " + s.message);
    ptrs.push_back(p);
    return static_cast<T*>(p);
  }
};

std::vector<bf16_t> random_bf16(std::mt19937& g, size_t n, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<bf16_t> v(n);
  for (auto& x : v) x = f32_to_bf16(d(g));
  return v;
}
std::vector<float> random_f32(std::mt19937& g, size_t n, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

void test_out_of_memory(Backend& b) {
  void* p = reinterpret_cast<void*>(1);
  const Status s = b.alloc(&p, size_t(1) << 50, "a 1 PiB test tensor");
  EXPECT(s.code == StatusCode::OutOfMemory, "expected OutOfMemory, got: " + s.message);
  EXPECT(p == nullptr, "a failed alloc must leave the pointer null");
  for (const char* part : {"a 1 PiB test tensor", "needed 1125899906842624 bytes", " are free of "})
    EXPECT(s.message.find(part) != std::string::npos, "message lacks '" + std::string(part) + "': " + s.message);
  size_t used0 = 0, used1 = 0, total = 0;
  b.memory_info(&used0, &total);
  void* q = nullptr;
  EXPECT_OK(b.alloc(&q, 1 << 20, "a small tensor after the failure"));
  b.memory_info(&used1, &total);
  EXPECT(used1 == used0 + (1 << 20) && total > 0, "memory_info does not track the allocation");
  b.free(q);
}

// Shapes of the decode step: 3 sequences (odd), gpt-oss heads, a full-attention cache long
// enough for split-K, a vocabulary of several tiles.
constexpr int S = 3, H = 128, NQ = 64, NKV = 8, L = 2048, E = 32, K = 4, V = 50000, STEPS = 4;
constexpr int QW = NQ * kHeadDim, KW = NKV * kHeadDim;

struct StepInputs {
  std::vector<float> x, router_logits, logits;
  std::vector<bf16_t> q, k, v;
  std::vector<int32_t> pos;
  std::vector<int64_t> counter;
};

struct StepOutputs {
  std::vector<bf16_t> xn, q, attn;
  std::vector<int32_t> idx, token;
  std::vector<float> w, logprob;
  bool operator==(const StepOutputs& o) const {
    return xn == o.xn && q == o.q && attn == o.attn && idx == o.idx && token == o.token &&
           std::memcmp(w.data(), o.w.data(), w.size() * 4) == 0 &&
           std::memcmp(logprob.data(), o.logprob.data(), logprob.size() * 4) == 0;
  }
};

void test_graph_replay_equals_eager(Backend& b) {
  std::mt19937 g(1234);
  Buffers d(b);
  BackendLimits lim;
  lim.max_tokens = S; lim.max_seqs = S; lim.hidden = H; lim.intermediate = H; lim.n_experts = E; lim.top_k = K;
  lim.vocab = V; lim.n_q = NQ; lim.n_kv = NKV; lim.max_context = L;
  EXPECT_OK(b.reserve(lim));

  // Device state and inputs.
  float* x = d.get<float>(S * H, "x");
  float* norm_w = d.get<float>(H, "norm w");
  bf16_t* xn = d.get<bf16_t>(S * H, "xn");
  bf16_t* q = d.get<bf16_t>(S * QW, "q");
  bf16_t* k = d.get<bf16_t>(S * KW, "k");
  bf16_t* v = d.get<bf16_t>(S * KW, "v");
  bf16_t* attn = d.get<bf16_t>(S * QW, "attn out");
  float* cos = d.get<float>(L * 32, "cos");
  float* sin = d.get<float>(L * 32, "sin");
  float* sinks = d.get<float>(NQ, "sinks");
  bf16_t* ck = d.get<bf16_t>(size_t(S) * KW * L, "cache k");
  bf16_t* cv = d.get<bf16_t>(size_t(S) * KW * L, "cache v");
  float* rlog = d.get<float>(S * E, "router logits");
  int32_t* idx = d.get<int32_t>(S * K, "expert idx");
  float* ew = d.get<float>(S * K, "expert w");
  float* logits = d.get<float>(size_t(S) * V, "logits");
  SamplingConfig* cfg = d.get<SamplingConfig>(S, "sampling configs");
  int64_t* counter = d.get<int64_t>(S, "counters");
  int32_t* token = d.get<int32_t>(S, "tokens");
  float* logprob = d.get<float>(S, "logprobs");
  int32_t* tok_pos = d.get<int32_t>(S, "tok_pos");
  int32_t* tok_seq = d.get<int32_t>(S, "tok_seq");
  int32_t* seq_slot = d.get<int32_t>(S, "seq_slot");
  int32_t* seq_tok0 = d.get<int32_t>(S + 1, "seq_tok0");
  if (g_failures) return;

  const std::vector<float> w_h = random_f32(g, H, 1.0f), cos_h = random_f32(g, L * 32, 1.0f),
                           sin_h = random_f32(g, L * 32, 1.0f), sinks_h = random_f32(g, NQ, 1.0f);
  const std::vector<bf16_t> ck0 = random_bf16(g, size_t(S) * KW * L, 1.0f);
  const std::vector<bf16_t> cv0 = random_bf16(g, size_t(S) * KW * L, 1.0f);
  const std::vector<int32_t> seq_h = {0, 1, 2}, slot_h = {2, 0, 1}, tok0_h = {0, 1, 2, 3};
  const int start[S] = {1500, 3, 700};
  std::vector<SamplingConfig> cfg_h(S);
  cfg_h[0].temperature = 0.0f;                                    // greedy
  cfg_h[1].top_p = 0.9f;                                          // top-p
  cfg_h[2].temperature = 0.7f; cfg_h[2].top_k = 50; cfg_h[2].min_p = 0.01f;  // top-k + min-p
  for (int s = 0; s < S; ++s) cfg_h[s].seed = 77 + s;
  EXPECT_OK(b.copy_to_device(norm_w, w_h.data(), H * 4));
  EXPECT_OK(b.copy_to_device(cos, cos_h.data(), cos_h.size() * 4));
  EXPECT_OK(b.copy_to_device(sin, sin_h.data(), sin_h.size() * 4));
  EXPECT_OK(b.copy_to_device(sinks, sinks_h.data(), NQ * 4));
  EXPECT_OK(b.copy_to_device(tok_seq, seq_h.data(), S * 4));
  EXPECT_OK(b.copy_to_device(seq_slot, slot_h.data(), S * 4));
  EXPECT_OK(b.copy_to_device(seq_tok0, tok0_h.data(), (S + 1) * 4));
  EXPECT_OK(b.copy_to_device(cfg, cfg_h.data(), S * sizeof(SamplingConfig)));

  std::vector<StepInputs> in(STEPS);
  for (int i = 0; i < STEPS; ++i) {
    in[i].x = random_f32(g, S * H, 2.0f);
    in[i].q = random_bf16(g, S * QW, 1.0f);
    in[i].k = random_bf16(g, S * KW, 1.0f);
    in[i].v = random_bf16(g, S * KW, 1.0f);
    in[i].router_logits = random_f32(g, S * E, 1.0f);
    in[i].logits = random_f32(g, size_t(S) * V, 3.0f);
    for (int s = 0; s < S; ++s) {
      in[i].pos.push_back(start[s] + i);
      in[i].counter.push_back(start[s] + i + 1);
    }
  }

  BatchDesc batch;
  batch.T = S; batch.S = S;
  batch.tok_pos = tok_pos; batch.tok_seq = tok_seq; batch.seq_slot = seq_slot;
  batch.seq_start = tok_pos;  // one token per sequence: its position is the sequence's start
  batch.seq_tok0 = seq_tok0;
  KVCacheView cache;
  cache.k = ck; cache.v = cv; cache.slots = S; cache.n_kv = NKV; cache.len = L;

  RMSNormParams norm;
  norm.x = x; norm.ldx = H; norm.w = norm_w; norm.out = xn; norm.ldo = H; norm.out_type = DType::BF16;
  norm.T = S; norm.H = H;
  RopeParams rope;
  rope.batch = batch; rope.q = q; rope.ldq = QW; rope.k = k; rope.ldk = KW; rope.type = DType::BF16;
  rope.cos = cos; rope.sin = sin; rope.n_q = NQ; rope.n_kv = NKV;
  AttentionParams at;
  at.batch = batch; at.q = q; at.ldq = QW; at.k = k; at.v = v; at.ldkv = KW; at.act_type = DType::BF16;
  at.cache = cache; at.sinks = sinks; at.out = attn; at.ldo = QW; at.n_q = NQ; at.n_kv = NKV;
  KVAppendParams app;
  app.batch = batch; app.k = k; app.v = v; app.ldkv = KW; app.act_type = DType::BF16; app.cache = cache;
  RouterParams router;
  router.logits = rlog; router.ldl = E; router.expert_idx = idx; router.expert_w = ew; router.T = S; router.E = E;
  router.k = K;
  SampleParams samp;
  samp.logits = logits; samp.ldl = V; samp.cfg = cfg; samp.counter = counter; samp.out_token = token;
  samp.out_logprob = logprob; samp.S = S; samp.V = V;

  auto reset_cache = [&]() -> Status {
    GPTOSS_RETURN_IF_ERROR(b.copy_to_device(ck, ck0.data(), ck0.size() * 2));
    return b.copy_to_device(cv, cv0.data(), cv0.size() * 2);
  };
  auto upload = [&](const StepInputs& s) -> Status {
    GPTOSS_RETURN_IF_ERROR(b.copy_to_device(x, s.x.data(), s.x.size() * 4));
    GPTOSS_RETURN_IF_ERROR(b.copy_to_device(q, s.q.data(), s.q.size() * 2));
    GPTOSS_RETURN_IF_ERROR(b.copy_to_device(k, s.k.data(), s.k.size() * 2));
    GPTOSS_RETURN_IF_ERROR(b.copy_to_device(v, s.v.data(), s.v.size() * 2));
    GPTOSS_RETURN_IF_ERROR(b.copy_to_device(rlog, s.router_logits.data(), s.router_logits.size() * 4));
    GPTOSS_RETURN_IF_ERROR(b.copy_to_device(logits, s.logits.data(), s.logits.size() * 4));
    GPTOSS_RETURN_IF_ERROR(b.copy_to_device(tok_pos, s.pos.data(), S * 4));
    return b.copy_to_device(counter, s.counter.data(), S * 8);
  };
  auto run_step = [&]() -> Status {
    GPTOSS_RETURN_IF_ERROR(b.rmsnorm(norm));
    GPTOSS_RETURN_IF_ERROR(b.rope(rope));
    GPTOSS_RETURN_IF_ERROR(b.attention(at));
    GPTOSS_RETURN_IF_ERROR(b.kv_append(app));
    GPTOSS_RETURN_IF_ERROR(b.router_topk(router));
    return b.sample(samp);
  };
  auto download = [&](StepOutputs* o) -> Status {
    o->xn.resize(S * H); o->q.resize(S * QW); o->attn.resize(S * QW);
    o->idx.resize(S * K); o->w.resize(S * K); o->token.resize(S); o->logprob.resize(S);
    GPTOSS_RETURN_IF_ERROR(b.copy_to_host(o->xn.data(), xn, S * H * 2));
    GPTOSS_RETURN_IF_ERROR(b.copy_to_host(o->q.data(), q, S * QW * 2));
    GPTOSS_RETURN_IF_ERROR(b.copy_to_host(o->attn.data(), attn, S * QW * 2));
    GPTOSS_RETURN_IF_ERROR(b.copy_to_host(o->idx.data(), idx, S * K * 4));
    GPTOSS_RETURN_IF_ERROR(b.copy_to_host(o->w.data(), ew, S * K * 4));
    GPTOSS_RETURN_IF_ERROR(b.copy_to_host(o->token.data(), token, S * 4));
    return b.copy_to_host(o->logprob.data(), logprob, S * 4);
  };

  std::vector<StepOutputs> eager(STEPS), graph(STEPS);
  EXPECT_OK(reset_cache());
  for (int i = 0; i < STEPS; ++i) {
    EXPECT_OK(upload(in[i]));
    EXPECT_OK(run_step());
    EXPECT_OK(download(&eager[i]));
  }
  std::vector<bf16_t> cache_eager(ck0.size()), cache_graph(ck0.size());
  EXPECT_OK(b.copy_to_host(cache_eager.data(), cv, cv0.size() * 2));
  for (int s = 0; s < S; ++s) {
    EXPECT(eager[STEPS - 1].token[s] >= 0 && eager[STEPS - 1].token[s] < V, "token out of range");
    for (int j = 0; j < QW; ++j)
      EXPECT(bf16_to_f32(eager[STEPS - 1].attn[s * QW + j]) == bf16_to_f32(eager[STEPS - 1].attn[s * QW + j]),
             "attention output has a NaN");
  }

  EXPECT_OK(reset_cache());
  EXPECT_OK(upload(in[0]));
  EXPECT_OK(b.capture_begin());
  EXPECT_OK(run_step());
  EXPECT_OK(b.capture_end(3));
  EXPECT(b.has_graph(3), "no graph under key 3 after capture_end(3)");
  for (int i = 0; i < STEPS; ++i) {
    if (i > 0) EXPECT_OK(upload(in[i]));
    EXPECT_OK(b.replay(3));
    EXPECT_OK(download(&graph[i]));
    EXPECT(graph[i] == eager[i], "replay of step " + std::to_string(i) + " differs from the eager step");
  }
  EXPECT_OK(b.copy_to_host(cache_graph.data(), cv, cv0.size() * 2));
  EXPECT(cache_graph == cache_eager, "the V cache after the replays differs from the eager one");
}

void test_failed_op_abandons_capture(Backend& b) {
  RouterParams bad;  // k = 0: rejected by the launcher before any launch
  EXPECT_OK(b.capture_begin());
  const Status s = b.router_topk(bad);
  EXPECT(!s.ok(), "router_topk with k = 0 must fail");
  const Status e = b.capture_end(11);
  EXPECT(e.code == StatusCode::InvalidArgument &&
             e.message.find("abandoned because router_topk failed") != std::string::npos,
         "capture_end after a failed op: " + e.message);
  EXPECT(!b.has_graph(11), "a graph was kept from an abandoned capture");
  const Status r = b.replay(11);
  EXPECT(r.code == StatusCode::InvalidArgument, "replay of a missing graph: " + r.message);
  void* p = nullptr;  // the stream left capture mode: eager work runs again
  EXPECT_OK(b.alloc(&p, 4096, "after an abandoned capture"));
  EXPECT_OK(b.memset(p, 0, 4096));
  EXPECT_OK(b.synchronize());
  b.free(p);
}

// Slots and sampling settings live on the device: the kernels validate them, skip what is bad
// (no out-of-bounds write) and the next synchronisation reports it, once.
void test_device_side_validation(Backend& b) {
  Buffers d(b);
  const int n_kv = 1, len = 8, slots = 2;
  bf16_t* ck = d.get<bf16_t>(slots * n_kv * len * kHeadDim, "cache k");
  bf16_t* cv = d.get<bf16_t>(slots * n_kv * len * kHeadDim, "cache v");
  bf16_t* kv = d.get<bf16_t>(2 * kHeadDim, "k/v");
  int32_t* ints = d.get<int32_t>(8, "batch");
  float* logits = d.get<float>(2 * 16, "logits");
  SamplingConfig* cfg = d.get<SamplingConfig>(2, "configs");
  int64_t* counter = d.get<int64_t>(2, "counters");
  int32_t* tok = d.get<int32_t>(2, "tokens");
  float* lp = d.get<float>(2, "logprobs");
  if (g_failures) return;
  // One token of one sequence in slot 5 (the cache has 2): tok_pos, tok_seq, seq_slot, seq_start, seq_tok0.
  const int32_t batch_h[8] = {3, 0, 5, 3, 0, 1, 0, 0};
  EXPECT_OK(b.copy_to_device(ints, batch_h, sizeof(batch_h)));
  EXPECT_OK(b.memset(ck, 0, slots * n_kv * len * kHeadDim * 2));
  EXPECT_OK(b.memset(kv, 0x3f, 2 * kHeadDim * 2));
  KVAppendParams app;
  app.batch.T = 1; app.batch.S = 1;
  app.batch.tok_pos = ints; app.batch.tok_seq = ints + 1; app.batch.seq_slot = ints + 2;
  app.batch.seq_start = ints + 3; app.batch.seq_tok0 = ints + 4;
  app.k = kv; app.v = kv + kHeadDim; app.ldkv = kHeadDim; app.act_type = DType::BF16;
  app.cache.k = ck; app.cache.v = cv; app.cache.slots = slots; app.cache.n_kv = n_kv; app.cache.len = len;
  EXPECT_OK(b.kv_append(app));
  const Status s = b.synchronize();
  EXPECT(s.code == StatusCode::InvalidArgument &&
             s.message.find("kv_append: sequence 0 uses KV-cache slot 5, outside the cache's [0, 2)") !=
                 std::string::npos,
         "bad slot: " + s.message);
  EXPECT_OK(b.synchronize());  // reported once, then cleared
  std::vector<bf16_t> cache_h(slots * n_kv * len * kHeadDim, 1);
  EXPECT_OK(b.copy_to_host(cache_h.data(), ck, cache_h.size() * 2));
  for (bf16_t x : cache_h) EXPECT(x == 0, "kv_append wrote although the slot was invalid");

  std::vector<SamplingConfig> cfg_h(2);
  cfg_h[1].top_p = 0.0f;
  const std::vector<int64_t> ctr_h = {1, 2};
  EXPECT_OK(b.copy_to_device(cfg, cfg_h.data(), 2 * sizeof(SamplingConfig)));
  EXPECT_OK(b.copy_to_device(counter, ctr_h.data(), 16));
  EXPECT_OK(b.memset(logits, 0, 2 * 16 * 4));
  SampleParams sp;
  sp.logits = logits; sp.ldl = 16; sp.cfg = cfg; sp.counter = counter; sp.out_token = tok; sp.out_logprob = lp;
  sp.S = 2; sp.V = 16;
  EXPECT_OK(b.sample(sp));
  int32_t tok_h[2];
  const Status t = b.copy_to_host(tok_h, tok, sizeof(tok_h));
  EXPECT(t.code == StatusCode::InvalidArgument && t.message.find("sequence 1 has top_p = 0") != std::string::npos,
         "bad top_p: " + t.message);
}

}  // namespace

int main() {
  if (!cuda_available()) {
    std::printf("test_cuda_backend: skipped (no CUDA backend or GPU)\n");
    return 0;
  }
  std::unique_ptr<Backend> b;
  const Status s = make_cuda_backend(0, &b);
  if (!s.ok()) {
    std::printf("FAIL: make_cuda_backend: %s\n", s.message.c_str());
    return 1;
  }
  std::printf("test_cuda_backend on %s\n", b->device_name().c_str());
  test_out_of_memory(*b);
  test_graph_replay_equals_eager(*b);
  test_failed_op_abandons_capture(*b);
  test_device_side_validation(*b);
  std::printf("test_cuda_backend: %s\n", g_failures ? "FAILED" : "ok");
  return g_failures ? 1 : 0;
}
