// CpuBackend through the Backend interface: identity, memory (aligned alloc, a clear OutOfMemory
// status naming what was asked for), weights used in place, and the statuses ops return for
// unsupported dtypes (activations, KV cache) and bad parameters (never a crash).
#include <cstdint>
#include <cstring>
#include <string>

#include "backend.h"
#include "check.h"

using namespace gptoss;

static bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

int main() {
  auto b = make_cpu_backend(2);
  CHECK(std::strcmp(b->name(), "cpu") == 0 && b->act_type() == DType::F32 && b->kv_type() == DType::F32 &&
            b->host_memory(),
        "identity");
  CHECK(contains(b->device_name(), "2 threads"), "device name: %s", b->device_name().c_str());
  CHECK(cpu_default_threads() >= 1, "default threads");

  void* p = nullptr;
  Status s = b->alloc(&p, 1000, "test buffer");
  CHECK(s.ok() && p && (reinterpret_cast<uintptr_t>(p) % 64) == 0, "alloc: %s", s.message.c_str());
  CHECK(b->memset(p, 0x5a, 1000).ok() && static_cast<uint8_t*>(p)[999] == 0x5a, "memset");
  uint8_t host[16] = {1, 2, 3};
  CHECK(b->copy_to_device(p, host, 16).ok() && static_cast<uint8_t*>(p)[2] == 3, "copy_to_device");
  b->free(p);

  s = b->alloc(&p, size_t(1) << 62, "the KV cache");
  CHECK(s.code == StatusCode::OutOfMemory && contains(s.message, "the KV cache") && contains(s.message, "bytes"),
        "OOM status: %d %s", int(s.code), s.message.c_str());

  const int64_t shape[2] = {2, 8};
  const void* placed = nullptr;
  CHECK(b->place_weight(WeightKind::DenseBF16, host, 16, shape, 2, "w", &placed).ok() && placed == host,
        "place_weight must return the host pointer");

  float x[64] = {}, y[64] = {};
  const uint16_t w[64] = {};
  DenseParams d;
  d.x = x; d.w = w; d.y = y; d.T = 1; d.K = 8; d.N = 8; d.ldx = 8; d.ldy = 8;
  d.x_type = DType::BF16;
  s = b->dense(d);
  CHECK(s.code == StatusCode::Unsupported && contains(s.message, "x_type"), "bf16 dense: %s", s.message.c_str());
  d.x_type = DType::F32;
  d.ldy = 4;
  s = b->dense(d);
  CHECK(s.code == StatusCode::InvalidArgument && contains(s.message, "ldy"), "bad ldy: %s", s.message.c_str());

  RouterParams r;
  int32_t idx[4];
  r.logits = x; r.expert_idx = idx; r.expert_w = y; r.T = 1; r.E = 3; r.k = 4; r.ldl = 3;
  s = b->router_topk(r);
  CHECK(s.code == StatusCode::InvalidArgument && contains(s.message, "k=4"), "k > E: %s", s.message.c_str());

  SamplingConfig cfg;
  cfg.top_p = 0.0f;
  int64_t counter = 0;
  int32_t tok = 0;
  SampleParams sp;
  sp.logits = x; sp.ldl = 8; sp.cfg = &cfg; sp.counter = &counter; sp.out_token = &tok; sp.S = 1; sp.V = 8;
  s = b->sample(sp);
  CHECK(s.code == StatusCode::InvalidArgument && contains(s.message, "top_p"), "top_p 0: %s", s.message.c_str());

  const int32_t pos[1] = {0}, seq[1] = {0}, slot[1] = {0}, start[1] = {0}, tok0[2] = {0, 1};
  AttentionParams a;
  a.batch = BatchDesc{1, 1, pos, seq, slot, start, tok0};
  uint16_t cache[128] = {};
  a.cache = KVCacheView{cache, cache, DType::BF16, 1, 2, 1};  // 1 slot, 2 kv heads, 1 position
  a.q = x; a.k = x; a.v = x; a.out = y; a.sinks = x; a.n_q = 3; a.n_kv = 2; a.ldq = a.ldo = 192; a.ldkv = 128;
  s = b->attention(a);
  CHECK(s.code == StatusCode::InvalidArgument && contains(s.message, "multiple of n_kv"), "n_q %% n_kv: %s",
        s.message.c_str());
  a.n_q = 2;
  a.cache.type = DType::F16;
  s = b->attention(a);
  CHECK(s.code == StatusCode::Unsupported && contains(s.message, "F16"), "F16 cache: %s", s.message.c_str());
  KVAppendParams kv;
  kv.batch = a.batch; kv.k = x; kv.v = x; kv.ldkv = 128; kv.cache = a.cache;
  s = b->kv_append(kv);
  CHECK(s.code == StatusCode::Unsupported && contains(s.message, "F16"), "F16 cache append: %s", s.message.c_str());
  std::printf("cpu backend ok\n");
  return 0;
}
