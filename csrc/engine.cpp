// The engine: weights, KV cache, workspace, and the forward step as a flat list of op calls.
#include "engine.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <numeric>
#include <set>

namespace gptoss {

namespace {

enum class Kind { Dense, Embedding, Vector, Blocks, Scales };

struct Expected {
  std::string name;
  std::vector<int64_t> shape;
  Kind kind;
};

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

int64_t numel(const std::vector<int64_t>& s) {
  return std::accumulate(s.begin(), s.end(), int64_t(1), std::multiplies<int64_t>());
}

std::vector<Expected> expected_tensors(const ModelConfig& c) {
  const int64_t H = c.hidden, I = c.intermediate, E = c.n_experts, V = c.vocab;
  const int64_t Q = int64_t(c.n_q) * kHeadDim, KV = int64_t(c.n_kv) * kHeadDim;
  std::vector<Expected> v = {{"embed", {V, H}, Kind::Embedding}, {"norm", {H}, Kind::Vector},
                             {"unembed", {V, H}, Kind::Dense}};
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    v.push_back({p + "attn_norm", {H}, Kind::Vector});
    v.push_back({p + "q_w", {Q, H}, Kind::Dense});
    v.push_back({p + "q_b", {Q}, Kind::Vector});
    v.push_back({p + "k_w", {KV, H}, Kind::Dense});
    v.push_back({p + "k_b", {KV}, Kind::Vector});
    v.push_back({p + "v_w", {KV, H}, Kind::Dense});
    v.push_back({p + "v_b", {KV}, Kind::Vector});
    v.push_back({p + "o_w", {H, Q}, Kind::Dense});
    v.push_back({p + "o_b", {H}, Kind::Vector});
    v.push_back({p + "sinks", {c.n_q}, Kind::Vector});
    v.push_back({p + "mlp_norm", {H}, Kind::Vector});
    v.push_back({p + "gate_w", {E, H}, Kind::Dense});
    v.push_back({p + "gate_b", {E}, Kind::Vector});
    v.push_back({p + "w1_blocks", {E, 2 * I, H / kMxfp4Block, kMxfp4BlockBytes}, Kind::Blocks});
    v.push_back({p + "w1_scales", {E, 2 * I, H / kMxfp4Block}, Kind::Scales});
    v.push_back({p + "b1", {E, 2 * I}, Kind::Vector});
    v.push_back({p + "w2_blocks", {E, H, I / kMxfp4Block, kMxfp4BlockBytes}, Kind::Blocks});
    v.push_back({p + "w2_scales", {E, H, I / kMxfp4Block}, Kind::Scales});
    v.push_back({p + "b2", {E, H}, Kind::Vector});
  }
  return v;
}

Status invalid(const std::string& msg) { return make_error(StatusCode::InvalidArgument, msg); }

Status check_config(const ModelConfig& c) {
  auto unsupported = [](const std::string& m) { return make_error(StatusCode::Unsupported, "unsupported config: " + m); };
  if (c.head_dim != kHeadDim) return unsupported("head_dim is " + std::to_string(c.head_dim) + ", only 64 is supported");
  if (c.n_layers < 1 || c.n_experts < 1 || c.vocab < 1 || c.n_q < 1 || c.n_kv < 1)
    return unsupported("layers, experts, vocab and head counts must be >= 1");
  if (c.hidden < kMxfp4Block || c.hidden % kMxfp4Block) return unsupported("hidden_size " + std::to_string(c.hidden) + " is not a positive multiple of 32");
  if (c.intermediate < kMxfp4Block || c.intermediate % kMxfp4Block)
    return unsupported("intermediate_size " + std::to_string(c.intermediate) + " is not a positive multiple of 32");
  if (c.n_q % c.n_kv) return unsupported("num_attention_heads must be a multiple of num_key_value_heads");
  if (c.top_k < 1 || c.top_k > c.n_experts || c.top_k > 32) return unsupported("experts_per_token must be in [1, min(num_experts, 32)]");
  if (int(c.sliding.size()) != c.n_layers) return unsupported("layer_types must list every layer");
  for (int s : c.sliding)
    if (s && c.sliding_window < 1) return unsupported("sliding layers need sliding_window >= 1");
  if (c.max_position < 1) return unsupported("max_position must be >= 1");
  if (!(c.rope_theta > 1.0) || !(c.rope_factor >= 1.0) || !(c.ntk_beta > c.ntk_alpha) || c.initial_context < 1)
    return unsupported("rope parameters out of range");
  return Status::Ok();
}

// YaRN tables exactly as the reference computes them (gpt_oss/torch/model.py): everything in fp32,
// low/high NOT rounded, concentration folded into both cos and sin.
void yarn_tables(const ModelConfig& c, int positions, std::vector<float>* cos_t, std::vector<float>* sin_t) {
  constexpr int half = kHeadDim / 2;
  float inv_freq[half];
  double concentration = 1.0;
  const double d_half = half;
  const double low = d_half * std::log(c.initial_context / (c.ntk_beta * 2 * M_PI)) / std::log(c.rope_theta);
  const double high = d_half * std::log(c.initial_context / (c.ntk_alpha * 2 * M_PI)) / std::log(c.rope_theta);
  for (int i = 0; i < half; ++i) {
    float freq = std::pow(float(c.rope_theta), float(2 * i) / float(kHeadDim));
    if (c.rope_factor > 1.0) {
      float interpolation = 1.0f / (float(c.rope_factor) * freq);
      float extrapolation = 1.0f / freq;
      float ramp = (float(i) - float(low)) / float(high - low);
      float mask = 1.0f - std::min(std::max(ramp, 0.0f), 1.0f);
      inv_freq[i] = interpolation * (1.0f - mask) + extrapolation * mask;
    } else {
      inv_freq[i] = 1.0f / freq;
    }
  }
  if (c.rope_factor > 1.0) concentration = 0.1 * std::log(c.rope_factor) + 1.0;
  cos_t->resize(size_t(positions) * half);
  sin_t->resize(size_t(positions) * half);
  for (int p = 0; p < positions; ++p) {
    for (int i = 0; i < half; ++i) {
      float angle = float(p) * inv_freq[i];
      (*cos_t)[size_t(p) * half + i] = float(std::cos(double(angle))) * float(concentration);
      (*sin_t)[size_t(p) * half + i] = float(std::sin(double(angle))) * float(concentration);
    }
  }
}

// Element i of a BF16, F16 or F32 tensor's raw bytes, as f32 (unaligned-safe).
float element_f32(DType t, const uint8_t* data, size_t i) {
  if (t == DType::F32) {
    float f;
    std::memcpy(&f, data + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, data + 2 * i, 2);
  return t == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

void* offset_bytes(void* base, size_t bytes) { return static_cast<uint8_t*>(base) + bytes; }

}  // namespace

Engine::~Engine() {
  if (!backend_) return;
  backend_->synchronize();
  for (void* p : allocations_) backend_->free(p);
  backend_->release_weights();
}

Status Engine::create(const ModelConfig& cfg, const std::vector<TensorRef>& tensors, const EngineOptions& opts,
                      std::unique_ptr<Engine>* out) {
  GPTOSS_RETURN_IF_ERROR(check_config(cfg));
  if (opts.max_context < 1 || opts.max_context > cfg.max_position)
    return invalid("max_context " + std::to_string(opts.max_context) + " must be in [1, " + std::to_string(cfg.max_position) +
                   "] (the model's longest context)");
  if (opts.max_seqs < 1 || opts.max_seqs > 4096) return invalid("max_seqs must be in [1, 4096]");
  if (opts.max_step_tokens < 1 || opts.max_step_tokens > 65536) return invalid("max_step_tokens must be in [1, 65536]");
  std::unique_ptr<Engine> e(new Engine());
  e->cfg_ = cfg;
  e->opts_ = opts;
  e->opts_.max_step_tokens = std::max(opts.max_step_tokens, opts.max_seqs);
  if (opts.device == "cpu") {
    e->backend_ = make_cpu_backend(opts.threads);
  } else if (opts.device.rfind("cuda", 0) == 0) {
    int dev = 0;
    if (opts.device.size() > 4) {
      if (opts.device[4] != ':' || opts.device.size() == 5) return invalid("device must be 'cpu', 'cuda' or 'cuda:N', got '" + opts.device + "'");
      char* end = nullptr;
      long v = std::strtol(opts.device.c_str() + 5, &end, 10);
      if (*end != '\0' || v < 0) return invalid("device must be 'cpu', 'cuda' or 'cuda:N', got '" + opts.device + "'");
      dev = int(v);
    }
    GPTOSS_RETURN_IF_ERROR(make_cuda_backend(dev, &e->backend_));
  } else {
    return invalid("device must be 'cpu', 'cuda' or 'cuda:N', got '" + opts.device + "'");
  }
  GPTOSS_RETURN_IF_ERROR(e->load_weights(tensors));
  GPTOSS_RETURN_IF_ERROR(e->allocate_state());
  e->slot_len_.assign(size_t(opts.max_seqs), 0);
  const char* no_graphs = std::getenv("GPT_OSS_C_NO_GRAPHS");
  e->graphs_enabled_ = opts.use_graphs && !(no_graphs && *no_graphs && std::string(no_graphs) != "0");
  *out = std::move(e);
  return Status::Ok();
}

// ------------------------------------------------------------------------------------------------
// Weights
// ------------------------------------------------------------------------------------------------

Status Engine::load_weights(const std::vector<TensorRef>& tensors) {
  std::map<std::string, const TensorRef*> by_name;
  for (const TensorRef& t : tensors) by_name[t.name] = &t;
  std::map<std::string, const MappedFile*> files;

  // Validates one tensor against its expectation and returns its bytes in the mapped file.
  auto locate = [&](const Expected& ex, const TensorRef** ref_out, const uint8_t** data) -> Status {
    auto it = by_name.find(ex.name);
    if (it == by_name.end()) return make_error(StatusCode::InvalidArgument, "checkpoint is missing tensor '" + ex.name + "'");
    const TensorRef& r = *it->second;
    const std::string where = "tensor '" + ex.name + "' in " + r.file;
    if (r.shape != ex.shape) return invalid(where + " has shape " + shape_str(r.shape) + ", expected " + shape_str(ex.shape));
    bool blocky = ex.kind == Kind::Blocks || ex.kind == Kind::Scales;
    if (blocky && r.dtype != DType::U8) return invalid(where + " has dtype " + dtype_name(r.dtype) + ", expected U8 (MXFP4)");
    if (!blocky && r.dtype != DType::BF16 && r.dtype != DType::F16 && r.dtype != DType::F32)
      return invalid(where + " has dtype " + dtype_name(r.dtype) + ", expected BF16, F16 or F32");
    if (r.nbytes != uint64_t(numel(r.shape)) * dtype_size(r.dtype))
      return invalid(where + " has " + std::to_string(r.nbytes) + " bytes, expected " +
                     std::to_string(uint64_t(numel(r.shape)) * dtype_size(r.dtype)));
    auto fit = files.find(r.file);
    if (fit == files.end()) {
      std::unique_ptr<MappedFile> f;
      GPTOSS_RETURN_IF_ERROR(MappedFile::open(r.file, &f));
      fit = files.emplace(r.file, f.get()).first;
      files_.push_back(std::move(f));
    }
    if (r.offset > fit->second->size() || r.nbytes > fit->second->size() - r.offset)
      return invalid(where + " lies outside the file (bytes " + std::to_string(r.offset) + ".." +
                     std::to_string(r.offset + r.nbytes) + " of " + std::to_string(fit->second->size()) + "): truncated file?");
    *ref_out = &r;
    *data = fit->second->data() + r.offset;
    return Status::Ok();
  };

  // Dense weights stay in the mapped file when stored as bf16 on a host backend; F16/F32 are
  // converted to a bf16 copy once.
  auto to_bf16 = [&](const TensorRef& r, const uint8_t* data) -> const void* {
    if (r.dtype == DType::BF16) return data;
    const size_t n = size_t(numel(r.shape));
    host_owned_.emplace_back(n * 2);
    bf16_t* dst = reinterpret_cast<bf16_t*>(host_owned_.back().data());
    for (size_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(element_f32(r.dtype, data, i));
    return dst;
  };
  auto to_f32 = [&](const TensorRef& r, const uint8_t* data, std::vector<float>* dst) {
    const size_t n = size_t(numel(r.shape));
    const size_t base = dst->size();
    dst->resize(base + n);
    for (size_t i = 0; i < n; ++i) (*dst)[base + i] = element_f32(r.dtype, data, i);
  };
  auto place = [&](WeightKind kind, const void* host, size_t bytes, const std::vector<int64_t>& shape,
                   const std::string& name, const void** out) -> Status {
    weight_bytes_ += bytes;
    return backend_->place_weight(kind, host, bytes, shape.data(), int(shape.size()), name.c_str(), out);
  };
  auto place_f32 = [&](std::vector<float>&& v, const std::string& name, const float** out) -> Status {
    std::vector<int64_t> shape = {int64_t(v.size())};
    host_owned_.emplace_back(v.size() * 4);
    std::memcpy(host_owned_.back().data(), v.data(), v.size() * 4);
    const void* p = nullptr;
    GPTOSS_RETURN_IF_ERROR(place(WeightKind::VectorF32, host_owned_.back().data(), v.size() * 4, shape, name, &p));
    *out = static_cast<const float*>(p);
    return Status::Ok();
  };

  const std::vector<Expected> expected = expected_tensors(cfg_);
  std::map<std::string, std::pair<const TensorRef*, const uint8_t*>> found;
  for (const Expected& ex : expected) {
    const TensorRef* r = nullptr;
    const uint8_t* d = nullptr;
    GPTOSS_RETURN_IF_ERROR(locate(ex, &r, &d));
    found[ex.name] = {r, d};
  }
  auto vec = [&](const std::string& name, const float** out) -> Status {
    std::vector<float> v;
    to_f32(*found[name].first, found[name].second, &v);
    return place_f32(std::move(v), name, out);
  };
  auto dense = [&](const std::string& name, WeightKind kind, const bf16_t** out) -> Status {
    const TensorRef& r = *found[name].first;
    const void* p = nullptr;
    GPTOSS_RETURN_IF_ERROR(place(kind, to_bf16(r, found[name].second), size_t(numel(r.shape)) * 2, r.shape, name, &p));
    *out = static_cast<const bf16_t*>(p);
    return Status::Ok();
  };
  auto raw = [&](const std::string& name, WeightKind kind, const uint8_t** out) -> Status {
    const TensorRef& r = *found[name].first;
    const void* p = nullptr;
    GPTOSS_RETURN_IF_ERROR(place(kind, found[name].second, r.nbytes, r.shape, name, &p));
    *out = static_cast<const uint8_t*>(p);
    return Status::Ok();
  };

  GPTOSS_RETURN_IF_ERROR(dense("embed", WeightKind::EmbeddingBF16, &embed_));
  GPTOSS_RETURN_IF_ERROR(dense("unembed", WeightKind::DenseBF16, &unembed_));
  GPTOSS_RETURN_IF_ERROR(vec("norm", &final_norm_));

  const int64_t H = cfg_.hidden, Q = int64_t(cfg_.n_q) * kHeadDim, KV = int64_t(cfg_.n_kv) * kHeadDim;
  layers_.resize(size_t(cfg_.n_layers));
  for (int l = 0; l < cfg_.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    LayerWeights& w = layers_[size_t(l)];
    GPTOSS_RETURN_IF_ERROR(vec(p + "attn_norm", &w.attn_norm));
    GPTOSS_RETURN_IF_ERROR(vec(p + "mlp_norm", &w.mlp_norm));
    GPTOSS_RETURN_IF_ERROR(vec(p + "sinks", &w.sinks));
    GPTOSS_RETURN_IF_ERROR(vec(p + "o_b", &w.o_b));
    GPTOSS_RETURN_IF_ERROR(vec(p + "gate_b", &w.gate_b));
    GPTOSS_RETURN_IF_ERROR(vec(p + "b1", &w.b1));
    GPTOSS_RETURN_IF_ERROR(vec(p + "b2", &w.b2));
    {
      std::vector<float> b;
      for (const char* n : {"q_b", "k_b", "v_b"}) to_f32(*found[p + n].first, found[p + n].second, &b);
      GPTOSS_RETURN_IF_ERROR(place_f32(std::move(b), p + "qkv_b", &w.qkv_b));
    }
    // q, k and v as one [Q + 2 KV][H] matrix when possible: the original layout stores them fused
    // (the loader's refs are contiguous row slices), and a device backend gets one fused copy.
    const TensorRef *rq = found[p + "q_w"].first, *rk = found[p + "k_w"].first, *rv = found[p + "v_w"].first;
    const uint8_t *dq = found[p + "q_w"].second, *dk = found[p + "k_w"].second, *dv = found[p + "v_w"].second;
    const bool bf16_all = rq->dtype == DType::BF16 && rk->dtype == DType::BF16 && rv->dtype == DType::BF16;
    const bool contiguous = bf16_all && dk == dq + rq->nbytes && dv == dk + rk->nbytes;
    std::vector<int64_t> fused_shape = {Q + 2 * KV, H};
    if (contiguous || !backend_->host_memory()) {
      const void* src = dq;
      if (!contiguous) {
        host_owned_.emplace_back(size_t(Q + 2 * KV) * size_t(H) * 2);
        uint8_t* dst = host_owned_.back().data();
        size_t off = 0;
        for (auto [r, d] : {std::pair{rq, dq}, std::pair{rk, dk}, std::pair{rv, dv}}) {
          const void* b = to_bf16(*r, d);
          std::memcpy(dst + off, b, size_t(numel(r->shape)) * 2);
          off += size_t(numel(r->shape)) * 2;
        }
        src = dst;
      }
      const void* out = nullptr;
      GPTOSS_RETURN_IF_ERROR(place(WeightKind::DenseBF16, src, size_t(Q + 2 * KV) * size_t(H) * 2, fused_shape, p + "qkv_w", &out));
      w.qkv_w = static_cast<const bf16_t*>(out);
      w.q_w = w.qkv_w;
      w.k_w = w.qkv_w + size_t(Q) * size_t(H);
      w.v_w = w.k_w + size_t(KV) * size_t(H);
    } else {
      GPTOSS_RETURN_IF_ERROR(dense(p + "q_w", WeightKind::DenseBF16, &w.q_w));
      GPTOSS_RETURN_IF_ERROR(dense(p + "k_w", WeightKind::DenseBF16, &w.k_w));
      GPTOSS_RETURN_IF_ERROR(dense(p + "v_w", WeightKind::DenseBF16, &w.v_w));
    }
    GPTOSS_RETURN_IF_ERROR(dense(p + "o_w", WeightKind::DenseBF16, &w.o_w));
    GPTOSS_RETURN_IF_ERROR(dense(p + "gate_w", WeightKind::DenseBF16, &w.gate_w));
    GPTOSS_RETURN_IF_ERROR(raw(p + "w1_blocks", WeightKind::Mxfp4Blocks, &w.w1_blocks));
    GPTOSS_RETURN_IF_ERROR(raw(p + "w1_scales", WeightKind::Mxfp4Scales, &w.w1_scales));
    GPTOSS_RETURN_IF_ERROR(raw(p + "w2_blocks", WeightKind::Mxfp4Blocks, &w.w2_blocks));
    GPTOSS_RETURN_IF_ERROR(raw(p + "w2_scales", WeightKind::Mxfp4Scales, &w.w2_scales));
    w.scales_below_128 = true;
    for (const char* n : {"w1_scales", "w2_scales"}) {
      const auto& f = found[p + n];
      w.scales_below_128 = w.scales_below_128 && mxfp4_scales_below_128(f.second, f.first->nbytes);
    }
  }
  // A device backend holds its own copies now: drop the host conversions and the mappings.
  if (!backend_->host_memory()) {
    host_owned_.clear();
    host_owned_.shrink_to_fit();
    files_.clear();
  }
  return backend_->synchronize();
}

// ------------------------------------------------------------------------------------------------
// KV cache and workspace
// ------------------------------------------------------------------------------------------------

Status Engine::allocate_state() {
  const int T = opts_.max_step_tokens, S = opts_.max_seqs, H = cfg_.hidden;
  const int Q = cfg_.n_q * kHeadDim, KV = cfg_.n_kv * kHeadDim, QKV = Q + 2 * KV;
  const size_t act = dtype_size(backend_->act_type());
  logits_rows_ = std::max(S, std::min(T, 64));

  auto alloc = [&](size_t bytes, const char* what, void** p) -> Status {
    GPTOSS_RETURN_IF_ERROR(backend_->alloc(p, std::max<size_t>(bytes, 64), what));
    allocations_.push_back(*p);
    return Status::Ok();
  };

  kv_.resize(size_t(cfg_.n_layers));
  for (int l = 0; l < cfg_.n_layers; ++l) {
    KVCacheView& c = kv_[size_t(l)];
    c.slots = S;
    c.n_kv = cfg_.n_kv;
    c.len = cfg_.sliding[size_t(l)] ? std::min(cfg_.sliding_window, opts_.max_context) : opts_.max_context;
    c.type = backend_->kv_type();
    const size_t bytes = size_t(S) * size_t(c.n_kv) * size_t(c.len) * kHeadDim * dtype_size(c.type);
    GPTOSS_RETURN_IF_ERROR(alloc(bytes, "KV cache (keys)", &c.k));
    GPTOSS_RETURN_IF_ERROR(alloc(bytes, "KV cache (values)", &c.v));
    kv_bytes_ += 2 * bytes;
    if (c.len < opts_.max_context) ring_layers_ = true;
  }

  void* p = nullptr;
  GPTOSS_RETURN_IF_ERROR(alloc(size_t(T) * H * 4, "residual stream", &p)); ws_.x = static_cast<float*>(p);
  GPTOSS_RETURN_IF_ERROR(alloc(size_t(T) * H * act, "normed activations", &ws_.xn));
  GPTOSS_RETURN_IF_ERROR(alloc(size_t(T) * QKV * act, "qkv activations", &ws_.qkv));
  GPTOSS_RETURN_IF_ERROR(alloc(size_t(T) * Q * act, "attention output", &ws_.attn));
  GPTOSS_RETURN_IF_ERROR(alloc(size_t(T) * cfg_.n_experts * 4, "router logits", &p)); ws_.router = static_cast<float*>(p);
  GPTOSS_RETURN_IF_ERROR(alloc(size_t(T) * cfg_.top_k * 4, "expert indices", &p)); ws_.expert_idx = static_cast<int32_t*>(p);
  GPTOSS_RETURN_IF_ERROR(alloc(size_t(T) * cfg_.top_k * 4, "expert weights", &p)); ws_.expert_w = static_cast<float*>(p);
  GPTOSS_RETURN_IF_ERROR(alloc(size_t(logits_rows_) * H * act, "final normed rows", &ws_.xfinal));
  GPTOSS_RETURN_IF_ERROR(alloc(size_t(logits_rows_) * size_t(cfg_.vocab) * 4, "logits", &p)); ws_.logits = static_cast<float*>(p);
  GPTOSS_RETURN_IF_ERROR(alloc(io_bytes(), "step inputs", &ws_.io));
  GPTOSS_RETURN_IF_ERROR(alloc(size_t(S) * 8, "sampled tokens and logprobs", &p)); ws_.sampled = static_cast<int32_t*>(p);

  std::vector<float> cos_t, sin_t;
  yarn_tables(cfg_, opts_.max_context, &cos_t, &sin_t);
  GPTOSS_RETURN_IF_ERROR(alloc(cos_t.size() * 4, "RoPE cos table", &p)); ws_.rope_cos = static_cast<float*>(p);
  GPTOSS_RETURN_IF_ERROR(backend_->copy_to_device(p, cos_t.data(), cos_t.size() * 4));
  GPTOSS_RETURN_IF_ERROR(alloc(sin_t.size() * 4, "RoPE sin table", &p)); ws_.rope_sin = static_cast<float*>(p);
  GPTOSS_RETURN_IF_ERROR(backend_->copy_to_device(p, sin_t.data(), sin_t.size() * 4));

  BackendLimits lim;
  lim.max_tokens = T;
  lim.max_seqs = std::max(S, logits_rows_);
  lim.hidden = H;
  lim.intermediate = cfg_.intermediate;
  lim.n_experts = cfg_.n_experts;
  lim.top_k = cfg_.top_k;
  lim.vocab = cfg_.vocab;
  lim.n_q = cfg_.n_q;
  lim.n_kv = cfg_.n_kv;
  lim.max_context = opts_.max_context;
  GPTOSS_RETURN_IF_ERROR(backend_->reserve(lim));
  return backend_->synchronize();
}

// ids[T] | tok_pos[T] | tok_seq[T] | seq_slot[S] | seq_start[S] | seq_tok0[S+1] | rows[R], R at most
// logits_rows_ (LogitsMode::All reuses rows[] for its chunks of rows).
size_t Engine::ints_count() const {
  return size_t(opts_.max_step_tokens) * 3 + size_t(opts_.max_seqs) * 3 + 1 + size_t(logits_rows_);
}

// A chunk's inputs, packed by its own T, S and R (not by the maxima) so that a decode step uploads
// a few dozen bytes in one copy: the ints, then (8-byte aligned) the sampling counters and settings.
Engine::StepIO Engine::step_io(int T, int S, int R) const {
  StepIO io;
  const size_t ints = size_t(3) * T + size_t(3) * S + 1 + size_t(R);
  io.counters_at = (ints * 4 + 7) / 8 * 8;
  io.sampling_at = io.counters_at + size_t(R) * 8;
  io.upload_bytes = io.sampling_at + size_t(R) * sizeof(SamplingConfig);
  uint8_t* base = static_cast<uint8_t*>(ws_.io);
  io.ints = reinterpret_cast<int32_t*>(base);
  io.counters = reinterpret_cast<int64_t*>(base + io.counters_at);
  io.sampling = reinterpret_cast<SamplingConfig*>(base + io.sampling_at);
  return io;
}

size_t Engine::io_bytes() const {
  static_assert(sizeof(SamplingConfig) % 8 == 0, "sampling settings stay 8-byte aligned");
  return (ints_count() * 4 + 7) / 8 * 8 + size_t(opts_.max_seqs) * (8 + sizeof(SamplingConfig));
}

// ------------------------------------------------------------------------------------------------
// Steps
// ------------------------------------------------------------------------------------------------

Status Engine::validate(const std::vector<SeqInput>& seqs, LogitsMode mode, bool sample) const {
  if (seqs.empty()) return invalid("a step needs at least one sequence");
  if (mode == LogitsMode::All && sample) return invalid("sampling is not available together with full logits");
  std::set<int> slots;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const SeqInput& s = seqs[i];
    const std::string who = "sequence " + std::to_string(i) + ": ";
    if (s.slot < 0 || s.slot >= opts_.max_seqs)
      return invalid(who + "slot " + std::to_string(s.slot) + " is out of range [0, " + std::to_string(opts_.max_seqs) + ")");
    if (!slots.insert(s.slot).second) return invalid(who + "slot " + std::to_string(s.slot) + " appears twice in one step");
    if (s.tokens.empty()) return invalid(who + "has no tokens (an empty prompt?)");
    if (s.start < 0) return invalid(who + "start position is negative");
    if (int64_t(s.start) + int64_t(s.tokens.size()) > opts_.max_context)
      return invalid(who + std::to_string(s.tokens.size()) + " tokens starting at position " + std::to_string(s.start) +
                     " exceed max_context " + std::to_string(opts_.max_context));
    // The cache must hold [0, start). Restarting earlier than one token back would read ring
    // entries of the sliding layers that later positions have already overwritten.
    const int len = slot_len_[size_t(s.slot)];
    if (s.start > len)
      return invalid(who + "starts at position " + std::to_string(s.start) + " but slot " + std::to_string(s.slot) +
                     " holds only " + std::to_string(len) + " positions");
    if (s.start != 0 && s.start < len - 1 && ring_layers_)
      return invalid(who + "cannot rewind slot " + std::to_string(s.slot) + " from " + std::to_string(len) + " to " +
                     std::to_string(s.start) + " positions (sliding-window layers keep a ring); restart at 0");
    for (int32_t t : s.tokens)
      if (t < 0 || t >= cfg_.vocab)
        return invalid(who + "token id " + std::to_string(t) + " is out of range [0, " + std::to_string(cfg_.vocab) + ")");
    if (sample) {
      const SamplingConfig& c = s.sampling;
      if (!std::isfinite(c.temperature) || c.temperature < 0) return invalid(who + "temperature must be a finite number >= 0");
      if (c.top_k < 0) return invalid(who + "top_k must be >= 0 (0 disables it)");
      if (!(c.top_p > 0.0f && c.top_p <= 1.0f)) return invalid(who + "top_p must be in (0, 1]");
      if (!(c.min_p >= 0.0f && c.min_p <= 1.0f)) return invalid(who + "min_p must be in [0, 1]");
    }
  }
  return Status::Ok();
}

Status Engine::step(const std::vector<SeqInput>& seqs, LogitsMode mode, bool sample, StepOutput* out) {
  GPTOSS_RETURN_IF_ERROR(validate(seqs, mode, sample));
  const int S = int(seqs.size());
  size_t total = 0;
  for (const SeqInput& s : seqs) total += s.tokens.size();
  out->tokens.assign(sample ? size_t(S) : 0, -1);
  out->logprobs.assign(sample ? size_t(S) : 0, 0.0f);
  out->logits.clear();
  if (mode == LogitsMode::Last) out->logits.resize(size_t(S) * size_t(cfg_.vocab));
  if (mode == LogitsMode::All) out->logits.resize(total * size_t(cfg_.vocab));

  // Split into chunks of at most max_step_tokens tokens and max_seqs sequences. A sequence may span
  // chunks; its logits and sample come from the chunk holding its last token.
  std::vector<size_t> done(size_t(S), 0), logits_row0(size_t(S), 0);
  {
    size_t acc = 0;
    for (int s = 0; s < S; ++s) { logits_row0[size_t(s)] = acc; acc += seqs[size_t(s)].tokens.size(); }
  }
  int next = 0;
  while (next < S) {
    Chunk chunk;
    int budget = opts_.max_step_tokens;
    for (int s = next; s < S && budget > 0 && int(chunk.seq.size()) < opts_.max_seqs; ++s) {
      const size_t left = seqs[size_t(s)].tokens.size() - done[size_t(s)];
      const int take = int(std::min<size_t>(left, size_t(budget)));
      chunk.seq.push_back(s);
      chunk.begin.push_back(int(done[size_t(s)]));
      chunk.count.push_back(take);
      budget -= take;
      if (size_t(take) < left) break;  // this sequence continues in the next chunk
    }
    GPTOSS_RETURN_IF_ERROR(run_chunk(seqs, chunk, mode, sample, logits_row0, out));
    for (size_t i = 0; i < chunk.seq.size(); ++i) done[size_t(chunk.seq[i])] += size_t(chunk.count[i]);
    while (next < S && done[size_t(next)] == seqs[size_t(next)].tokens.size()) ++next;
  }
  for (const SeqInput& s : seqs) slot_len_[size_t(s.slot)] = s.start + int(s.tokens.size());
  return Status::Ok();
}

Status Engine::run_chunk(const std::vector<SeqInput>& seqs, const Chunk& chunk, LogitsMode mode, bool sample,
                         const std::vector<size_t>& logits_row0, StepOutput* out) {
  Backend& be = *backend_;
  const int S = int(chunk.seq.size());
  const int T = std::accumulate(chunk.count.begin(), chunk.count.end(), 0);
  const int V = cfg_.vocab;

  // Which sequences end in this chunk (they produce logits / a sample).
  std::vector<int> ending;  // chunk-local sequence indices
  for (int i = 0; i < S; ++i) {
    const SeqInput& s = seqs[size_t(chunk.seq[size_t(i)])];
    if (size_t(chunk.begin[size_t(i)] + chunk.count[size_t(i)]) == s.tokens.size()) ending.push_back(i);
  }
  const int R = mode == LogitsMode::All || (mode == LogitsMode::None && !sample) ? 0 : int(ending.size());

  // 1. Stage every input on the host and upload it, in one copy, before any launch (graph capture
  //    needs the launches to be the whole of the forward).
  const StepIO io = step_io(T, S, R);
  host_io_.assign(io.upload_bytes, 0);
  int32_t* ids = reinterpret_cast<int32_t*>(host_io_.data());
  int32_t *tok_pos = ids + T, *tok_seq = tok_pos + T, *seq_slot = tok_seq + T;
  int32_t *seq_start = seq_slot + S, *seq_tok0 = seq_start + S, *rows = seq_tok0 + S + 1;
  int t = 0;
  for (int i = 0; i < S; ++i) {
    const SeqInput& s = seqs[size_t(chunk.seq[size_t(i)])];
    seq_slot[i] = s.slot;
    seq_start[i] = s.start + chunk.begin[size_t(i)];
    seq_tok0[i] = t;
    for (int j = 0; j < chunk.count[size_t(i)]; ++j, ++t) {
      ids[t] = s.tokens[size_t(chunk.begin[size_t(i)] + j)];
      tok_pos[t] = seq_start[i] + j;
      tok_seq[t] = i;
    }
  }
  seq_tok0[S] = T;
  for (int r = 0; r < R; ++r) rows[r] = seq_tok0[ending[size_t(r)] + 1] - 1;
  bool greedy = sample && R > 0;  // every ending sequence decodes greedily
  if (sample && R > 0) {
    auto* counters = reinterpret_cast<int64_t*>(host_io_.data() + io.counters_at);
    auto* cfgs = reinterpret_cast<SamplingConfig*>(host_io_.data() + io.sampling_at);
    for (int r = 0; r < R; ++r) {
      const SeqInput& s = seqs[size_t(chunk.seq[size_t(ending[size_t(r)])])];
      cfgs[r] = s.sampling;
      counters[r] = int64_t(s.start) + int64_t(s.tokens.size());  // position of the new token
      greedy = greedy && s.sampling.temperature == 0.0f;
    }
  }
  GPTOSS_RETURN_IF_ERROR(be.copy_to_device(ws_.io, host_io_.data(), host_io_.size()));

  BatchDesc b;
  b.T = T;
  b.S = S;
  b.tok_pos = io.ints + (tok_pos - ids);
  b.tok_seq = io.ints + (tok_seq - ids);
  b.seq_slot = io.ints + (seq_slot - ids);
  b.seq_start = io.ints + (seq_start - ids);
  b.seq_tok0 = io.ints + (seq_tok0 - ids);

  // 2. The forward. A pure decode chunk (one new token per sequence) on a backend with graphs is
  //    captured once per batch size and sampling kind (all greedy or not) and replayed afterwards.
  const bool decode = T == S && R == S && mode != LogitsMode::All;
  if (decode && sample && be.supports_graphs() && graphs_enabled_) {
    const int key = 2 * S + (greedy ? 1 : 0);
    if (!be.has_graph(key)) {
      GPTOSS_RETURN_IF_ERROR(be.capture_begin());
      Status st = forward(b, io, R, sample, greedy);
      Status end = be.capture_end(key);
      GPTOSS_RETURN_IF_ERROR(st);
      GPTOSS_RETURN_IF_ERROR(end);
    }
    GPTOSS_RETURN_IF_ERROR(be.replay(key));
  } else {
    GPTOSS_RETURN_IF_ERROR(forward(b, io, R, sample, greedy));
  }

  // 3. Results back to the host.
  const int32_t* d_rows = io.ints + (rows - ids);
  if (mode == LogitsMode::All) {
    std::vector<int32_t> all(static_cast<size_t>(logits_rows_));
    for (int r0 = 0; r0 < T; r0 += logits_rows_) {
      const int n = std::min(logits_rows_, T - r0);
      for (int r = 0; r < n; ++r) all[size_t(r)] = r0 + r;
      GPTOSS_RETURN_IF_ERROR(be.copy_to_device(const_cast<int32_t*>(d_rows), all.data(), size_t(n) * 4));
      GPTOSS_RETURN_IF_ERROR(unembed(d_rows, n));
      for (int r = 0; r < n; ++r) {
        const int i = tok_seq[r0 + r];  // chunk sequence of token r0 + r
        const size_t global = logits_row0[size_t(chunk.seq[size_t(i)])] + size_t(chunk.begin[size_t(i)]) +
                              size_t(r0 + r - seq_tok0[i]);
        GPTOSS_RETURN_IF_ERROR(be.copy_to_host(out->logits.data() + global * size_t(V),
                                               ws_.logits + size_t(r) * size_t(V), size_t(V) * 4));
      }
    }
    return be.synchronize();
  }
  if (sample && R > 0) {
    // Tokens and logprobs in one copy (forward put the logprobs right after the R tokens).
    std::vector<int32_t> got(size_t(2) * size_t(R));
    GPTOSS_RETURN_IF_ERROR(be.copy_to_host(got.data(), ws_.sampled, got.size() * 4));
    for (int r = 0; r < R; ++r) {
      const size_t s = size_t(chunk.seq[size_t(ending[size_t(r)])]);
      out->tokens[s] = got[size_t(r)];
      std::memcpy(&out->logprobs[s], &got[size_t(R + r)], 4);
    }
    if (mode != LogitsMode::Last) return Status::Ok();  // copy_to_host synchronised and checked errors
  }
  if (mode == LogitsMode::Last) {
    for (int r = 0; r < R; ++r) {
      const size_t s = size_t(chunk.seq[size_t(ending[size_t(r)])]);
      GPTOSS_RETURN_IF_ERROR(be.copy_to_host(out->logits.data() + s * size_t(V), ws_.logits + size_t(r) * size_t(V),
                                             size_t(V) * 4));
    }
  }
  return be.synchronize();
}

Status Engine::forward(const BatchDesc& b, const StepIO& io, int rows, bool sample, bool greedy) {
  Backend& be = *backend_;
  const int T = b.T;
  const int H = cfg_.hidden, V = cfg_.vocab, E = cfg_.n_experts, K = cfg_.top_k;
  const int Q = cfg_.n_q * kHeadDim, KVW = cfg_.n_kv * kHeadDim, QKV = Q + 2 * KVW;
  const DType act = be.act_type();
  const size_t asz = dtype_size(act);
  void* q = ws_.qkv;
  void* k = offset_bytes(ws_.qkv, size_t(Q) * asz);
  void* v = offset_bytes(ws_.qkv, size_t(Q + KVW) * asz);

  EmbedParams ep;
  ep.ids = io.ints; ep.table = embed_; ep.out = ws_.x; ep.T = T; ep.H = H; ep.V = V;
  GPTOSS_RETURN_IF_ERROR(be.embed(ep));

  // A decode step (one token per sequence: T == S) appends k/v inside attn_input, before attention.
  // A longer chunk must append after attention: a later position of the chunk overwrites ring
  // entries of the sliding layers that earlier queries of the same chunk still read.
  const bool append_early = b.T == b.S;
  const size_t qkv_bytes = size_t(QKV) * size_t(H) * 2;
  for (int l = 0; l < cfg_.n_layers; ++l) {
    const LayerWeights& w = layers_[size_t(l)];
    // What the step reads after this layer's MoE: the next layer's q/k/v weight, after the last layer
    // as many bytes of the unembedding's first rows.
    ReadHint next_read;
    if (l + 1 < cfg_.n_layers && layers_[size_t(l) + 1].qkv_w != nullptr)
      next_read = ReadHint{layers_[size_t(l) + 1].qkv_w, qkv_bytes};
    else if (l + 1 == cfg_.n_layers && rows > 0)
      next_read = ReadHint{unembed_, std::min(qkv_bytes, size_t(V) * size_t(H) * 2)};
    AttnInputParams ai;
    RMSNormParams& np = ai.norm;
    np.x = ws_.x; np.ldx = H; np.w = w.attn_norm; np.out = ws_.xn; np.ldo = H; np.out_type = act;
    np.T = T; np.H = H; np.eps = cfg_.rms_eps;
    DenseParams dp;
    dp.x = ws_.xn; dp.ldx = H; dp.x_type = act; dp.y_type = act; dp.ldy = QKV; dp.T = T; dp.K = H;
    if (w.qkv_w != nullptr) {
      dp.w = w.qkv_w; dp.bias = w.qkv_b; dp.y = q; dp.N = QKV;
      ai.dense[0] = dp; ai.n_dense = 1;
    } else {
      dp.w = w.q_w; dp.bias = w.qkv_b; dp.y = q; dp.N = Q;
      ai.dense[0] = dp;
      dp.w = w.k_w; dp.bias = w.qkv_b + Q; dp.y = k; dp.N = KVW;
      ai.dense[1] = dp;
      dp.w = w.v_w; dp.bias = w.qkv_b + Q + KVW; dp.y = v; dp.N = KVW;
      ai.dense[2] = dp; ai.n_dense = 3;
    }
    RopeParams& rp = ai.rope;
    rp.batch = b; rp.q = q; rp.ldq = QKV; rp.k = k; rp.ldk = QKV; rp.type = act;
    rp.cos = ws_.rope_cos; rp.sin = ws_.rope_sin; rp.n_q = cfg_.n_q; rp.n_kv = cfg_.n_kv;
    KVAppendParams& kp = ai.append;
    kp.batch = b; kp.k = k; kp.v = v; kp.ldkv = QKV; kp.act_type = act; kp.cache = kv_[size_t(l)];
    ai.append_kv = append_early;
    GPTOSS_RETURN_IF_ERROR(be.attn_input(ai));

    AttentionParams ap;
    ap.batch = b; ap.q = q; ap.ldq = QKV; ap.k = k; ap.v = v; ap.ldkv = QKV; ap.act_type = act;
    ap.cache = kv_[size_t(l)]; ap.sinks = w.sinks; ap.out = ws_.attn; ap.ldo = Q;
    ap.n_q = cfg_.n_q; ap.n_kv = cfg_.n_kv; ap.window = cfg_.sliding[size_t(l)] ? cfg_.sliding_window : 0;
    ap.scale = 1.0f / std::sqrt(float(kHeadDim));
    GPTOSS_RETURN_IF_ERROR(be.attention(ap));

    if (!append_early) GPTOSS_RETURN_IF_ERROR(be.kv_append(kp));

    DenseParams op;
    op.x = ws_.attn; op.ldx = Q; op.x_type = act; op.w = w.o_w; op.bias = w.o_b; op.y = ws_.x; op.ldy = H;
    op.y_type = DType::F32; op.T = T; op.K = Q; op.N = H; op.accumulate = true;
    GPTOSS_RETURN_IF_ERROR(be.dense(op));

    MoEInputParams mi;
    mi.norm = np;
    mi.norm.w = w.mlp_norm;
    DenseParams& gp = mi.gate;
    gp.x = ws_.xn; gp.ldx = H; gp.x_type = act; gp.w = w.gate_w; gp.bias = w.gate_b; gp.y = ws_.router; gp.ldy = E;
    gp.y_type = DType::F32; gp.T = T; gp.K = H; gp.N = E;
    RouterParams& tp = mi.router;
    tp.logits = ws_.router; tp.ldl = E; tp.expert_idx = ws_.expert_idx; tp.expert_w = ws_.expert_w;
    tp.T = T; tp.E = E; tp.k = K;
    GPTOSS_RETURN_IF_ERROR(be.moe_input(mi));

    MoEParams mp;
    mp.x = ws_.xn; mp.ldx = H; mp.x_type = act; mp.expert_idx = ws_.expert_idx; mp.expert_w = ws_.expert_w;
    mp.w1_blocks = w.w1_blocks; mp.w1_scales = w.w1_scales; mp.b1 = w.b1;
    mp.w2_blocks = w.w2_blocks; mp.w2_scales = w.w2_scales; mp.b2 = w.b2;
    mp.y = ws_.x; mp.ldy = H; mp.T = T; mp.E = E; mp.k = K; mp.H = H; mp.I = cfg_.intermediate;
    mp.swiglu_alpha = cfg_.swiglu_alpha; mp.swiglu_limit = cfg_.swiglu_limit;
    mp.scales_below_128 = w.scales_below_128;
    mp.next_read = next_read;
    GPTOSS_RETURN_IF_ERROR(be.moe(mp));
  }
  if (rows == 0) return Status::Ok();

  const int32_t* d_rows = io.ints + 3 * size_t(b.T) + 3 * size_t(b.S) + 1;
  GPTOSS_RETURN_IF_ERROR(unembed(d_rows, rows));
  if (!sample) return Status::Ok();
  SampleParams sp;
  sp.logits = ws_.logits; sp.ldl = V; sp.cfg = io.sampling; sp.counter = io.counters;
  sp.out_token = ws_.sampled; sp.out_logprob = reinterpret_cast<float*>(ws_.sampled + rows); sp.S = rows; sp.V = V;
  sp.greedy = greedy;
  return be.sample(sp);
}

// Final norm of the residual rows d_rows[0..R) and their logits, into ws_.logits[0..R).
Status Engine::unembed(const int32_t* d_rows, int R) {
  const int H = cfg_.hidden;
  RMSNormParams np;
  np.x = ws_.x; np.ldx = H; np.rows = d_rows; np.w = final_norm_; np.out = ws_.xfinal; np.ldo = H;
  np.out_type = backend_->act_type(); np.T = R; np.H = H; np.eps = cfg_.rms_eps;
  GPTOSS_RETURN_IF_ERROR(backend_->rmsnorm(np));
  DenseParams up;
  up.x = ws_.xfinal; up.ldx = H; up.x_type = backend_->act_type(); up.w = unembed_; up.y = ws_.logits;
  up.ldy = cfg_.vocab; up.y_type = DType::F32; up.T = R; up.K = H; up.N = cfg_.vocab;
  return backend_->dense(up);
}

void Engine::reset_slot(int slot) {
  if (slot >= 0 && slot < opts_.max_seqs) slot_len_[size_t(slot)] = 0;
}

}  // namespace gptoss
