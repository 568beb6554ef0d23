// gpt_oss_c._core.ops: one function per op family of csrc/ops.h, for tests and benchmarks.
//
// Every function runs *only through the Backend interface* of the device it is given ("cpu",
// "cpu:N" for a CPU backend with N threads, "cuda" or "cuda:N"), exactly as the engine does:
// weights go through place_weight (so a backend that re-lays-out MXFP4 is tested through that
// path), everything else through alloc + copy_to_device, the op runs, outputs come back with
// copy_to_host, and all memory is freed (release_weights for the placed weights). One backend
// per device string is created on first use and cached.
//
// Dtypes: activations are given and returned as float32 numpy arrays. When the backend's
// act_type() is BF16 (CUDA), activation inputs are rounded to bf16 (nearest even) before upload
// and activation outputs are widened back to float32, so the op sees what the engine would give
// it. The residual (embed/moe/accumulating dense outputs), router logits, sinks, biases and norm
// scales stay float32. bf16 weights are passed as their bit patterns in uint16 arrays; MXFP4
// blocks and scales as uint8. A KV cache is a float32 array (F32 cache) or a uint16 one (bf16 bits,
// BF16 cache), passed as is. Shapes and dtypes are checked here and reported as ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <vector>

#include "backend.h"
#include "bindings_common.h"
#include "bindings_ops_call.h"

namespace py = pybind11;

namespace gptoss {

namespace {

using namespace op_bindings;

// ---------------------------------------------------------------------------------------------
// The ops.
// ---------------------------------------------------------------------------------------------
py::dict backend_info(const std::string& device) {
  BackendEntry& e = backend_for(device);
  py::dict d;
  d["name"] = e.backend->name();
  d["act_type"] = dtype_name(e.backend->act_type());
  d["kv_type"] = dtype_name(e.backend->kv_type());
  d["device_name"] = e.backend->device_name();
  d["host_memory"] = e.backend->host_memory();
  return d;
}

py::array_t<float> op_embed(const py::object& ids_o, const py::object& table_o, const std::string& device) {
  auto ids = i32_arg(ids_o, "ids");
  auto table = exact_arg<uint16_t>(table_o, "table", "uint16 (bf16 bits)");
  const int T = int(need_shape(ids, "ids", {-1})[0]);
  auto ts = need_shape(table, "table", {-1, -1});
  const int V = int(ts[0]), H = int(ts[1]);
  for (int t = 0; t < T; ++t)
    if (ids.data()[t] < 0 || ids.data()[t] >= V)
      throw py::value_error("embed: ids[" + std::to_string(t) + "] = " + std::to_string(ids.data()[t]) +
                            " is outside [0, " + std::to_string(V) + ")");
  py::array_t<float> out(dims({T, H}));
  float* out_h = out.mutable_data();
  run_on(device, [&](Call& c) -> Status {
    EmbedParams p;
    p.T = T; p.H = H; p.V = V;
    GPTOSS_RETURN_IF_ERROR(c.upload(ids.data(), size_t(T), "ids", &p.ids));
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::EmbeddingBF16, table.data(), size_t(V) * H, ts, "table", &p.table));
    GPTOSS_RETURN_IF_ERROR(c.alloc(size_t(T) * H, "out", &p.out));
    GPTOSS_RETURN_IF_ERROR(c.backend().embed(p));
    return c.download(out_h, p.out, size_t(T) * H);
  });
  return out;
}

py::array_t<float> op_rmsnorm(const py::object& x_o, const py::object& w_o, const py::object& rows_o, float eps,
                              const std::string& device) {
  auto x = f32_arg(x_o, "x");
  auto w = f32_arg(w_o, "w");
  auto xs = need_shape(x, "x", {-1, -1});
  const int N = int(xs[0]), H = int(xs[1]);
  auto ws = need_shape(w, "w", {H});
  I32Array rows;
  int T = N;
  if (!rows_o.is_none()) {
    rows = i32_arg(rows_o, "rows");
    T = int(need_shape(rows, "rows", {-1})[0]);
    for (int r = 0; r < T; ++r)
      if (rows.data()[r] < 0 || rows.data()[r] >= N)
        throw py::value_error("rmsnorm: rows[" + std::to_string(r) + "] = " + std::to_string(rows.data()[r]) +
                              " is outside [0, " + std::to_string(N) + ")");
  }
  py::array_t<float> out(dims({T, H}));
  float* out_h = out.mutable_data();
  const bool gather = !rows_o.is_none();
  run_on(device, [&](Call& c) -> Status {
    RMSNormParams p;
    p.T = T; p.H = H; p.ldx = H; p.ldo = H; p.eps = eps; p.out_type = c.act();
    float* xd = nullptr;
    GPTOSS_RETURN_IF_ERROR(c.upload(x.data(), size_t(N) * H, "x", &xd));
    p.x = xd;
    if (gather) GPTOSS_RETURN_IF_ERROR(c.upload(rows.data(), size_t(T), "rows", &p.rows));
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::VectorF32, w.data(), size_t(H), ws, "w", &p.w));
    GPTOSS_RETURN_IF_ERROR(c.alloc_act(size_t(T) * H, "out", &p.out));
    GPTOSS_RETURN_IF_ERROR(c.backend().rmsnorm(p));
    return c.download_act(out_h, p.out, size_t(T) * H);
  });
  return out;
}

py::array_t<float> op_dense(const py::object& x_o, const py::object& w_o, const py::object& bias_o,
                            const py::object& y_o, bool f32_out, const std::string& device) {
  auto x = f32_arg(x_o, "x");
  auto w = exact_arg<uint16_t>(w_o, "w", "uint16 (bf16 bits)");
  auto xs = need_shape(x, "x", {-1, -1});
  const int T = int(xs[0]), K = int(xs[1]);
  auto wsh = need_shape(w, "w", {-1, K});
  const int N = int(wsh[0]);
  F32Array bias, y;
  std::vector<int64_t> bs;
  if (!bias_o.is_none()) {
    bias = f32_arg(bias_o, "bias");
    bs = need_shape(bias, "bias", {N});
  }
  const bool accumulate = !y_o.is_none();
  if (accumulate) {
    y = f32_arg(y_o, "y");
    need_shape(y, "y", {T, N});
  }
  py::array_t<float> out(dims({T, N}));
  float* out_h = out.mutable_data();
  const bool has_bias = !bias_o.is_none();
  run_on(device, [&](Call& c) -> Status {
    DenseParams p;
    p.T = T; p.K = K; p.N = N; p.ldx = K; p.ldy = N; p.accumulate = accumulate;
    p.x_type = c.act();
    p.y_type = (accumulate || f32_out) ? DType::F32 : c.act();
    GPTOSS_RETURN_IF_ERROR(c.upload_act(x.data(), size_t(T) * K, "x", &p.x));
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::DenseBF16, w.data(), size_t(N) * K, wsh, "w", &p.w));
    if (has_bias) GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::VectorF32, bias.data(), size_t(N), bs, "bias", &p.bias));
    if (accumulate) {
      float* yd = nullptr;
      GPTOSS_RETURN_IF_ERROR(c.upload(y.data(), size_t(T) * N, "y", &yd));
      p.y = yd;
    } else if (p.y_type == DType::F32) {
      float* yd = nullptr;
      GPTOSS_RETURN_IF_ERROR(c.alloc(size_t(T) * N, "y", &yd));
      p.y = yd;
    } else {
      GPTOSS_RETURN_IF_ERROR(c.alloc_act(size_t(T) * N, "y", &p.y));
    }
    GPTOSS_RETURN_IF_ERROR(c.backend().dense(p));
    if (p.y_type == DType::F32) return c.download(out_h, static_cast<const float*>(p.y), size_t(T) * N);
    return c.download_act(out_h, p.y, size_t(T) * N);
  });
  return out;
}

py::tuple op_rope(const py::object& q_o, const py::object& k_o, const py::object& pos_o, const py::object& cos_o,
                  const py::object& sin_o, const std::string& device) {
  auto q = f32_arg(q_o, "q");
  auto k = f32_arg(k_o, "k");
  auto pos = i32_arg(pos_o, "positions");
  auto cs = f32_arg(cos_o, "cos");
  auto sn = f32_arg(sin_o, "sin");
  auto qs = need_shape(q, "q", {-1, -1});
  const int T = int(qs[0]);
  auto ks = need_shape(k, "k", {T, -1});
  if (qs[1] % kHeadDim || ks[1] % kHeadDim) throw py::value_error("rope: q and k widths must be multiples of 64");
  const int nq = int(qs[1] / kHeadDim), nkv = int(ks[1] / kHeadDim);
  need_shape(pos, "positions", {T});
  const int P = int(need_shape(cs, "cos", {-1, kHeadDim / 2})[0]);
  need_shape(sn, "sin", {P, kHeadDim / 2});
  for (int t = 0; t < T; ++t)
    if (pos.data()[t] < 0 || pos.data()[t] >= P)
      throw py::value_error("rope: positions[" + std::to_string(t) + "] = " + std::to_string(pos.data()[t]) +
                            " is outside the tables' [0, " + std::to_string(P) + ")");
  py::array_t<float> qo(dims({T, qs[1]})), ko(dims({T, ks[1]}));
  float *qo_h = qo.mutable_data(), *ko_h = ko.mutable_data();
  run_on(device, [&](Call& c) -> Status {
    RopeParams p;
    p.batch.T = T;
    p.n_q = nq; p.n_kv = nkv; p.ldq = nq * kHeadDim; p.ldk = nkv * kHeadDim; p.type = c.act();
    GPTOSS_RETURN_IF_ERROR(c.upload(pos.data(), size_t(T), "positions", &p.batch.tok_pos));
    GPTOSS_RETURN_IF_ERROR(c.upload_act(q.data(), size_t(T) * p.ldq, "q", &p.q));
    GPTOSS_RETURN_IF_ERROR(c.upload_act(k.data(), size_t(T) * p.ldk, "k", &p.k));
    GPTOSS_RETURN_IF_ERROR(c.upload(cs.data(), size_t(P) * 32, "cos", &p.cos));
    GPTOSS_RETURN_IF_ERROR(c.upload(sn.data(), size_t(P) * 32, "sin", &p.sin));
    GPTOSS_RETURN_IF_ERROR(c.backend().rope(p));
    GPTOSS_RETURN_IF_ERROR(c.download_act(qo_h, p.q, size_t(T) * p.ldq));
    return c.download_act(ko_h, p.k, size_t(T) * p.ldk);
  });
  return py::make_tuple(qo, ko);
}

// A KV cache given as two numpy arrays [slots, n_kv, len, 64] of one dtype: float32 is an F32
// cache, uint16 (bf16 bits) a BF16 cache. The backend returns Unsupported (NotImplementedError)
// for a type it does not implement; ops.backend_info(device)["kv_type"] is the type it allocates.
struct CacheArgs {
  py::array k, v;  // C-contiguous, kept alive for the raw pointers below
  const void* k_data = nullptr;
  const void* v_data = nullptr;
  DType type = DType::F32;
  std::vector<int64_t> shape;
  size_t count = 0;  // elements per array
  int slots = 0, n_kv = 0, len = 0;
};

CacheArgs cache_args(const py::object& k_o, const py::object& v_o) {
  CacheArgs a;
  py::array k = as_array(k_o, "cache_k");
  if (k.dtype().is(py::dtype::of<float>())) {
    a.type = DType::F32;
    a.k = exact_arg<float>(k_o, "cache_k", "float32");
    a.v = exact_arg<float>(v_o, "cache_v", "float32 (the dtype of cache_k)");
  } else if (k.dtype().is(py::dtype::of<uint16_t>())) {
    a.type = DType::BF16;
    a.k = exact_arg<uint16_t>(k_o, "cache_k", "uint16");
    a.v = exact_arg<uint16_t>(v_o, "cache_v", "uint16 (bf16 bits, the dtype of cache_k)");
  } else {
    throw py::value_error("cache_k must have dtype float32 (an F32 cache) or uint16 (bf16 bits, a BF16 cache), got " +
                          std::string(py::str(k.dtype())));
  }
  a.shape = need_shape(a.k, "cache_k", {-1, -1, -1, kHeadDim});
  need_shape(a.v, "cache_v", {a.shape[0], a.shape[1], a.shape[2], kHeadDim});
  a.k_data = a.k.data();
  a.v_data = a.v.data();
  a.count = size_t(a.k.size());
  a.slots = int(a.shape[0]);
  a.n_kv = int(a.shape[1]);
  a.len = int(a.shape[2]);
  return a;
}

template <class T>
Status upload_cache_as(Call& c, const CacheArgs& a, KVCacheView* view) {
  T *k = nullptr, *v = nullptr;
  GPTOSS_RETURN_IF_ERROR(c.upload(static_cast<const T*>(a.k_data), a.count, "cache_k", &k));
  GPTOSS_RETURN_IF_ERROR(c.upload(static_cast<const T*>(a.v_data), a.count, "cache_v", &v));
  view->k = k;
  view->v = v;
  return Status::Ok();
}

Status upload_cache(Call& c, const CacheArgs& a, KVCacheView* view) {
  view->type = a.type;
  view->slots = a.slots; view->n_kv = a.n_kv; view->len = a.len;
  return a.type == DType::F32 ? upload_cache_as<float>(c, a, view) : upload_cache_as<uint16_t>(c, a, view);
}

py::array_t<float> op_attention(const py::object& q_o, const py::object& k_o, const py::object& v_o,
                                const py::object& ck_o, const py::object& cv_o, const py::object& slot_o,
                                const py::object& start_o, const py::object& lens_o, const py::object& sinks_o,
                                int window, float scale, const std::string& device) {
  auto q = f32_arg(q_o, "q");
  auto k = f32_arg(k_o, "k");
  auto v = f32_arg(v_o, "v");
  auto sinks = f32_arg(sinks_o, "sinks");
  CacheArgs cache = cache_args(ck_o, cv_o);
  auto qs = need_shape(q, "q", {-1, -1});
  const int T = int(qs[0]);
  if (qs[1] % kHeadDim) throw py::value_error("attention: q width must be a multiple of 64");
  const int nq = int(qs[1] / kHeadDim), nkv = cache.n_kv;
  need_shape(k, "k", {T, int64_t(nkv) * kHeadDim});
  need_shape(v, "v", {T, int64_t(nkv) * kHeadDim});
  auto ss = need_shape(sinks, "sinks", {nq});
  if (nq % nkv) throw py::value_error("attention: the number of q heads must be a multiple of the kv heads");
  if (window < 0) throw py::value_error("attention: window must be >= 0 (0 = full causal)");
  HostBatch hb = make_batch(i32_arg(slot_o, "seq_slot"), i32_arg(start_o, "seq_start"), i32_arg(lens_o, "seq_lens"),
                            T, cache.slots, "attention");
  py::array_t<float> out(dims({T, int64_t(nq) * kHeadDim}));
  float* out_h = out.mutable_data();
  run_on(device, [&](Call& c) -> Status {
    AttentionParams p;
    p.n_q = nq; p.n_kv = nkv; p.window = window; p.scale = scale; p.act_type = c.act();
    p.ldq = p.ldo = nq * kHeadDim;
    p.ldkv = nkv * kHeadDim;
    GPTOSS_RETURN_IF_ERROR(c.upload_batch(hb, &p.batch));
    GPTOSS_RETURN_IF_ERROR(c.upload_act(q.data(), size_t(T) * p.ldq, "q", &p.q));
    GPTOSS_RETURN_IF_ERROR(c.upload_act(k.data(), size_t(T) * p.ldkv, "k", &p.k));
    GPTOSS_RETURN_IF_ERROR(c.upload_act(v.data(), size_t(T) * p.ldkv, "v", &p.v));
    GPTOSS_RETURN_IF_ERROR(upload_cache(c, cache, &p.cache));
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::VectorF32, sinks.data(), size_t(nq), ss, "sinks", &p.sinks));
    GPTOSS_RETURN_IF_ERROR(c.alloc_act(size_t(T) * p.ldo, "out", &p.out));
    GPTOSS_RETURN_IF_ERROR(c.backend().attention(p));
    return c.download_act(out_h, p.out, size_t(T) * p.ldo);
  });
  return out;
}

py::tuple op_kv_append(const py::object& k_o, const py::object& v_o, const py::object& ck_o, const py::object& cv_o,
                       const py::object& slot_o, const py::object& start_o, const py::object& lens_o,
                       const std::string& device) {
  auto k = f32_arg(k_o, "k");
  auto v = f32_arg(v_o, "v");
  CacheArgs cache = cache_args(ck_o, cv_o);
  const int T = int(need_shape(k, "k", {-1, int64_t(cache.n_kv) * kHeadDim})[0]);
  need_shape(v, "v", {T, int64_t(cache.n_kv) * kHeadDim});
  HostBatch hb = make_batch(i32_arg(slot_o, "seq_slot"), i32_arg(start_o, "seq_start"), i32_arg(lens_o, "seq_lens"),
                            T, cache.slots, "kv_append");
  std::vector<py::ssize_t> cshape(cache.shape.begin(), cache.shape.end());
  py::array ko(cache.k.dtype(), cshape), vo(cache.k.dtype(), cshape);
  void *ko_h = ko.mutable_data(), *vo_h = vo.mutable_data();
  const size_t cache_bytes = cache.count * dtype_size(cache.type);
  run_on(device, [&](Call& c) -> Status {
    KVAppendParams p;
    p.act_type = c.act();
    p.ldkv = cache.n_kv * kHeadDim;
    GPTOSS_RETURN_IF_ERROR(c.upload_batch(hb, &p.batch));
    GPTOSS_RETURN_IF_ERROR(c.upload_act(k.data(), size_t(T) * p.ldkv, "k", &p.k));
    GPTOSS_RETURN_IF_ERROR(c.upload_act(v.data(), size_t(T) * p.ldkv, "v", &p.v));
    GPTOSS_RETURN_IF_ERROR(upload_cache(c, cache, &p.cache));
    GPTOSS_RETURN_IF_ERROR(c.backend().kv_append(p));
    GPTOSS_RETURN_IF_ERROR(c.backend().copy_to_host(ko_h, p.cache.k, cache_bytes));
    return c.backend().copy_to_host(vo_h, p.cache.v, cache_bytes);
  });
  return py::make_tuple(ko, vo);
}

py::tuple op_router_topk(const py::object& logits_o, int k, const std::string& device) {
  auto logits = f32_arg(logits_o, "logits");
  auto ls = need_shape(logits, "logits", {-1, -1});
  const int T = int(ls[0]), E = int(ls[1]);
  if (k < 1 || k > E) throw py::value_error("router_topk: k=" + std::to_string(k) + " must be in [1, " + std::to_string(E) + "]");
  py::array_t<int32_t> idx(dims({T, k}));
  py::array_t<float> w(dims({T, k}));
  int32_t* idx_h = idx.mutable_data();
  float* w_h = w.mutable_data();
  run_on(device, [&](Call& c) -> Status {
    RouterParams p;
    p.T = T; p.E = E; p.k = k; p.ldl = E;
    GPTOSS_RETURN_IF_ERROR(c.upload(logits.data(), size_t(T) * E, "logits", &p.logits));
    GPTOSS_RETURN_IF_ERROR(c.alloc(size_t(T) * k, "expert_idx", &p.expert_idx));
    GPTOSS_RETURN_IF_ERROR(c.alloc(size_t(T) * k, "expert_w", &p.expert_w));
    GPTOSS_RETURN_IF_ERROR(c.backend().router_topk(p));
    GPTOSS_RETURN_IF_ERROR(c.download(idx_h, p.expert_idx, size_t(T) * k));
    return c.download(w_h, p.expert_w, size_t(T) * k);
  });
  return py::make_tuple(idx, w);
}

py::array_t<float> op_moe(const py::object& x_o, const py::object& idx_o, const py::object& ew_o,
                          const py::object& w1b_o, const py::object& w1s_o, const py::object& b1_o,
                          const py::object& w2b_o, const py::object& w2s_o, const py::object& b2_o,
                          const py::object& y_o, float alpha, float limit, int64_t next_read_bytes,
                          const std::string& device) {
  if (next_read_bytes < 0) throw py::value_error("moe: next_read_bytes must be >= 0");
  auto x = f32_arg(x_o, "x");
  auto idx = i32_arg(idx_o, "expert_idx");
  auto ew = f32_arg(ew_o, "expert_w");
  auto w1b = exact_arg<uint8_t>(w1b_o, "w1_blocks", "uint8");
  auto w1s = exact_arg<uint8_t>(w1s_o, "w1_scales", "uint8");
  auto b1 = f32_arg(b1_o, "b1");
  auto w2b = exact_arg<uint8_t>(w2b_o, "w2_blocks", "uint8");
  auto w2s = exact_arg<uint8_t>(w2s_o, "w2_scales", "uint8");
  auto b2 = f32_arg(b2_o, "b2");
  auto y = f32_arg(y_o, "y");
  auto xs = need_shape(x, "x", {-1, -1});
  const int T = int(xs[0]), H = int(xs[1]);
  if (H % kMxfp4Block) throw py::value_error("moe: hidden size " + std::to_string(H) + " is not a multiple of 32");
  const int k = int(need_shape(idx, "expert_idx", {T, -1})[1]);
  need_shape(ew, "expert_w", {T, k});
  auto w1bs = need_shape(w1b, "w1_blocks", {-1, -1, H / kMxfp4Block, kMxfp4BlockBytes});
  const int E = int(w1bs[0]), R1 = int(w1bs[1]);
  if (R1 % (2 * kMxfp4Block)) throw py::value_error("moe: w1 has " + std::to_string(R1) + " rows; expected 2*I with I a multiple of 32");
  const int I = R1 / 2;
  auto w1ss = need_shape(w1s, "w1_scales", {E, R1, H / kMxfp4Block});
  auto b1s = need_shape(b1, "b1", {E, R1});
  auto w2bs = need_shape(w2b, "w2_blocks", {E, H, I / kMxfp4Block, kMxfp4BlockBytes});
  auto w2ss = need_shape(w2s, "w2_scales", {E, H, I / kMxfp4Block});
  auto b2s = need_shape(b2, "b2", {E, H});
  need_shape(y, "y", {T, H});
  if (k > E) throw py::value_error("moe: " + std::to_string(k) + " experts per token but only " + std::to_string(E) + " experts");
  for (int i = 0; i < T * k; ++i)
    if (idx.data()[i] < 0 || idx.data()[i] >= E)
      throw py::value_error("moe: expert_idx value " + std::to_string(idx.data()[i]) + " (token " + std::to_string(i / k) +
                            ") is outside [0, " + std::to_string(E) + ")");
  py::array_t<float> out(dims({T, H}));
  float* out_h = out.mutable_data();
  run_on(device, [&](Call& c) -> Status {
    MoEParams p;
    p.T = T; p.E = E; p.k = k; p.H = H; p.I = I; p.ldx = H; p.ldy = H; p.x_type = c.act();
    p.swiglu_alpha = alpha; p.swiglu_limit = limit;
    p.scales_below_128 = mxfp4_scales_below_128(w1s.data(), size_t(w1s.size())) &&
                         mxfp4_scales_below_128(w2s.data(), size_t(w2s.size()));
    GPTOSS_RETURN_IF_ERROR(c.upload_act(x.data(), size_t(T) * H, "x", &p.x));
    GPTOSS_RETURN_IF_ERROR(c.upload(idx.data(), size_t(T) * k, "expert_idx", &p.expert_idx));
    GPTOSS_RETURN_IF_ERROR(c.upload(ew.data(), size_t(T) * k, "expert_w", &p.expert_w));
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::Mxfp4Blocks, w1b.data(), size_t(w1b.size()), w1bs, "w1_blocks", &p.w1_blocks));
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::Mxfp4Scales, w1s.data(), size_t(w1s.size()), w1ss, "w1_scales", &p.w1_scales));
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::VectorF32, b1.data(), size_t(b1.size()), b1s, "b1", &p.b1));
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::Mxfp4Blocks, w2b.data(), size_t(w2b.size()), w2bs, "w2_blocks", &p.w2_blocks));
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::Mxfp4Scales, w2s.data(), size_t(w2s.size()), w2ss, "w2_scales", &p.w2_scales));
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::VectorF32, b2.data(), size_t(b2.size()), b2s, "b2", &p.b2));
    GPTOSS_RETURN_IF_ERROR(c.upload(y.data(), size_t(T) * H, "y", &p.y));
    std::vector<uint8_t> next(size_t(next_read_bytes), 0x5a);
    if (!next.empty()) {
      const uint8_t* next_dev = nullptr;
      GPTOSS_RETURN_IF_ERROR(c.upload(next.data(), next.size(), "next_read", &next_dev));
      p.next_read = ReadHint{next_dev, next.size()};
    }
    GPTOSS_RETURN_IF_ERROR(c.backend().moe(p));
    return c.download(out_h, p.y, size_t(T) * H);
  });
  return out;
}

py::tuple op_sample(const py::object& logits_o, const py::object& temp_o, const py::object& topk_o,
                    const py::object& topp_o, const py::object& minp_o, const py::object& seed_o,
                    const py::object& counter_o, const std::string& device) {
  auto logits = f32_arg(logits_o, "logits");
  auto ls = need_shape(logits, "logits", {-1, -1});
  const int S = int(ls[0]), V = int(ls[1]);
  // Scalars (Python numbers) are accepted for every per-sequence setting.
  auto np_asarray = [](const py::object& o) { return py::module_::import("numpy").attr("asarray")(o); };
  auto temp = per_seq(f32_arg(np_asarray(temp_o), "temperature"), S, "temperature");
  auto topk = per_seq(i32_arg(np_asarray(topk_o), "top_k"), S, "top_k");
  auto topp = per_seq(f32_arg(np_asarray(topp_o), "top_p"), S, "top_p");
  auto minp = per_seq(f32_arg(np_asarray(minp_o), "min_p"), S, "min_p");
  py::array seed_a = as_array(np_asarray(seed_o), "seed");
  if (seed_a.dtype().kind() != 'u' && seed_a.dtype().kind() != 'i')
    throw py::value_error("seed must be an integer (or an integer array), got dtype " + std::string(py::str(seed_a.dtype())));
  if (seed_a.dtype().kind() == 'i') {
    auto signed_seed = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(seed_a);
    for (py::ssize_t i = 0; i < signed_seed.size(); ++i)
      if (signed_seed.data()[i] < 0) throw py::value_error("seed must be >= 0");
  }
  auto seed = per_seq(py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(seed_a), S, "seed");
  py::array counter_a = as_array(np_asarray(counter_o), "counter");
  if (counter_a.dtype().kind() != 'u' && counter_a.dtype().kind() != 'i')
    throw py::value_error("counter must be an integer (or an integer array)");
  auto counter = per_seq(py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(counter_a), S, "counter");
  for (int s = 0; s < S; ++s)
    if (counter.data()[s] < 0) throw py::value_error("counter must be >= 0");
  std::vector<SamplingConfig> cfg(static_cast<size_t>(S));
  for (int s = 0; s < S; ++s) {
    cfg[s].temperature = temp.data()[s];
    cfg[s].top_k = topk.data()[s];
    cfg[s].top_p = topp.data()[s];
    cfg[s].min_p = minp.data()[s];
    cfg[s].seed = seed.data()[s];
  }
  py::array_t<int32_t> tok(dims({S}));
  py::array_t<float> lp(dims({S}));
  int32_t* tok_h = tok.mutable_data();
  float* lp_h = lp.mutable_data();
  run_on(device, [&](Call& c) -> Status {
    SampleParams p;
    p.S = S; p.V = V; p.ldl = V;
    GPTOSS_RETURN_IF_ERROR(c.upload(logits.data(), size_t(S) * V, "logits", &p.logits));
    GPTOSS_RETURN_IF_ERROR(c.upload(cfg.data(), cfg.size(), "sampling configs", &p.cfg));
    GPTOSS_RETURN_IF_ERROR(c.upload(counter.data(), size_t(S), "counter", &p.counter));
    GPTOSS_RETURN_IF_ERROR(c.alloc(size_t(S), "out_token", &p.out_token));
    GPTOSS_RETURN_IF_ERROR(c.alloc(size_t(S), "out_logprob", &p.out_logprob));
    GPTOSS_RETURN_IF_ERROR(c.backend().sample(p));
    GPTOSS_RETURN_IF_ERROR(c.download(tok_h, p.out_token, size_t(S)));
    return c.download(lp_h, p.out_logprob, size_t(S));
  });
  return py::make_tuple(tok, lp);
}

// attn_input: rmsnorm -> dense (fused q|k|v weight) -> rope [-> kv_append], with the buffers laid
// out as the engine lays them out (xn [T][H]; one q|k|v row per token), so a backend's fused
// kernel serves it when it can.
py::tuple op_attn_input(const py::object& x_o, const py::object& nw_o, const py::object& w_o, const py::object& b_o,
                        int n_q, int n_kv, const py::object& pos_o, const py::object& cos_o, const py::object& sin_o,
                        const py::object& ck_o, const py::object& cv_o, const py::object& slot_o, float eps,
                        const std::string& device) {
  auto x = f32_arg(x_o, "x");
  auto nw = f32_arg(nw_o, "norm_w");
  auto w = exact_arg<uint16_t>(w_o, "w", "uint16 (bf16 bits)");
  auto bias = f32_arg(b_o, "bias");
  auto pos = i32_arg(pos_o, "positions");
  auto cs = f32_arg(cos_o, "cos");
  auto sn = f32_arg(sin_o, "sin");
  auto xs = need_shape(x, "x", {-1, -1});
  const int T = int(xs[0]), H = int(xs[1]);
  if (n_q < 1 || n_kv < 1 || n_q % n_kv) throw py::value_error("attn_input: need n_q a positive multiple of n_kv >= 1");
  const int N = (n_q + 2 * n_kv) * kHeadDim;
  auto ns = need_shape(nw, "norm_w", {H});
  auto wsh = need_shape(w, "w", {N, H});
  auto bs = need_shape(bias, "bias", {N});
  need_shape(pos, "positions", {T});
  const int P = int(need_shape(cs, "cos", {-1, kHeadDim / 2})[0]);
  need_shape(sn, "sin", {P, kHeadDim / 2});
  for (int t = 0; t < T; ++t)
    if (pos.data()[t] < 0 || pos.data()[t] >= P)
      throw py::value_error("attn_input: positions[" + std::to_string(t) + "] = " + std::to_string(pos.data()[t]) +
                            " is outside the tables' [0, " + std::to_string(P) + ")");
  const bool append = !ck_o.is_none();
  CacheArgs cache;
  HostBatch hb;
  if (append) {
    cache = cache_args(ck_o, cv_o);
    if (cache.n_kv != n_kv) throw py::value_error("attn_input: the cache has " + std::to_string(cache.n_kv) + " kv heads, not n_kv");
    I32Array ones(T);
    std::fill(ones.mutable_data(), ones.mutable_data() + T, 1);
    hb = make_batch(i32_arg(slot_o, "seq_slot"), pos, ones, T, cache.slots, "attn_input");
  } else {
    hb.T = hb.S = T;
    hb.tok_pos.assign(pos.data(), pos.data() + T);
    for (int t = 0; t < T; ++t) {
      hb.tok_seq.push_back(t);
      hb.seq_slot.push_back(0);
      hb.seq_start.push_back(pos.data()[t]);
      hb.seq_tok0.push_back(t);
    }
    hb.seq_tok0.push_back(T);
  }
  py::array_t<float> xn_o(dims({T, H})), qkv_o(dims({T, N}));
  std::vector<py::ssize_t> cshape(cache.shape.begin(), cache.shape.end());
  py::array ko, vo;  // copies of the cache after the append, in the dtype it was given
  if (append) {
    ko = py::array(cache.k.dtype(), cshape);
    vo = py::array(cache.k.dtype(), cshape);
  }
  float *xn_h = xn_o.mutable_data(), *qkv_h = qkv_o.mutable_data();
  void* ko_h = append ? ko.mutable_data() : nullptr;
  void* vo_h = append ? vo.mutable_data() : nullptr;
  const size_t cache_bytes = append ? cache.count * dtype_size(cache.type) : 0;
  run_on(device, [&](Call& c) -> Status {
    AttnInputParams p;
    RMSNormParams& np = p.norm;
    np.ldx = np.ldo = H; np.out_type = c.act(); np.T = T; np.H = H; np.eps = eps;
    GPTOSS_RETURN_IF_ERROR(c.upload(x.data(), size_t(T) * H, "x", &np.x));
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::VectorF32, nw.data(), size_t(H), ns, "norm_w", &np.w));
    GPTOSS_RETURN_IF_ERROR(c.alloc_act(size_t(T) * H, "xn", &np.out));
    DenseParams& dp = p.dense[0];
    dp.x = np.out; dp.ldx = H; dp.x_type = c.act(); dp.y_type = c.act(); dp.ldy = N; dp.T = T; dp.K = H; dp.N = N;
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::DenseBF16, w.data(), size_t(N) * H, wsh, "w", &dp.w));
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::VectorF32, bias.data(), size_t(N), bs, "bias", &dp.bias));
    GPTOSS_RETURN_IF_ERROR(c.alloc_act(size_t(T) * N, "qkv", &dp.y));
    p.n_dense = 1;
    const size_t asz = dtype_size(c.act());
    RopeParams& rp = p.rope;
    GPTOSS_RETURN_IF_ERROR(c.upload_batch(hb, &rp.batch));
    rp.q = dp.y; rp.ldq = N; rp.k = static_cast<char*>(dp.y) + size_t(n_q) * kHeadDim * asz; rp.ldk = N;
    rp.type = c.act(); rp.n_q = n_q; rp.n_kv = n_kv;
    GPTOSS_RETURN_IF_ERROR(c.upload(cs.data(), size_t(P) * 32, "cos", &rp.cos));
    GPTOSS_RETURN_IF_ERROR(c.upload(sn.data(), size_t(P) * 32, "sin", &rp.sin));
    p.append_kv = append;
    if (append) {
      KVAppendParams& kp = p.append;
      kp.batch = rp.batch; kp.k = rp.k; kp.v = static_cast<char*>(dp.y) + size_t(n_q + n_kv) * kHeadDim * asz;
      kp.ldkv = N; kp.act_type = c.act();
      GPTOSS_RETURN_IF_ERROR(upload_cache(c, cache, &kp.cache));
    }
    GPTOSS_RETURN_IF_ERROR(c.backend().attn_input(p));
    GPTOSS_RETURN_IF_ERROR(c.download_act(xn_h, np.out, size_t(T) * H));
    GPTOSS_RETURN_IF_ERROR(c.download_act(qkv_h, dp.y, size_t(T) * N));
    if (!append) return Status::Ok();
    GPTOSS_RETURN_IF_ERROR(c.backend().copy_to_host(ko_h, p.append.cache.k, cache_bytes));
    return c.backend().copy_to_host(vo_h, p.append.cache.v, cache_bytes);
  });
  if (!append) return py::make_tuple(xn_o, qkv_o, py::none(), py::none());
  return py::make_tuple(xn_o, qkv_o, ko, vo);
}

// moe_input: rmsnorm -> dense (router, f32 logits) -> router_topk.
py::tuple op_moe_input(const py::object& x_o, const py::object& nw_o, const py::object& w_o, const py::object& b_o,
                       int k, float eps, const std::string& device) {
  auto x = f32_arg(x_o, "x");
  auto nw = f32_arg(nw_o, "norm_w");
  auto w = exact_arg<uint16_t>(w_o, "w", "uint16 (bf16 bits)");
  auto bias = f32_arg(b_o, "bias");
  auto xs = need_shape(x, "x", {-1, -1});
  const int T = int(xs[0]), H = int(xs[1]);
  auto ns = need_shape(nw, "norm_w", {H});
  auto wsh = need_shape(w, "w", {-1, H});
  const int E = int(wsh[0]);
  auto bs = need_shape(bias, "bias", {E});
  if (k < 1 || k > E) throw py::value_error("moe_input: k=" + std::to_string(k) + " must be in [1, " + std::to_string(E) + "]");
  py::array_t<float> xn_o(dims({T, H})), lg_o(dims({T, E})), w_out(dims({T, k}));
  py::array_t<int32_t> idx_o(dims({T, k}));
  float *xn_h = xn_o.mutable_data(), *lg_h = lg_o.mutable_data(), *w_h = w_out.mutable_data();
  int32_t* idx_h = idx_o.mutable_data();
  run_on(device, [&](Call& c) -> Status {
    MoEInputParams p;
    RMSNormParams& np = p.norm;
    np.ldx = np.ldo = H; np.out_type = c.act(); np.T = T; np.H = H; np.eps = eps;
    GPTOSS_RETURN_IF_ERROR(c.upload(x.data(), size_t(T) * H, "x", &np.x));
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::VectorF32, nw.data(), size_t(H), ns, "norm_w", &np.w));
    GPTOSS_RETURN_IF_ERROR(c.alloc_act(size_t(T) * H, "xn", &np.out));
    DenseParams& gp = p.gate;
    gp.x = np.out; gp.ldx = H; gp.x_type = c.act(); gp.y_type = DType::F32; gp.ldy = E; gp.T = T; gp.K = H; gp.N = E;
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::DenseBF16, w.data(), size_t(E) * H, wsh, "w", &gp.w));
    GPTOSS_RETURN_IF_ERROR(c.place(WeightKind::VectorF32, bias.data(), size_t(E), bs, "bias", &gp.bias));
    float* lg = nullptr;
    GPTOSS_RETURN_IF_ERROR(c.alloc(size_t(T) * E, "logits", &lg));
    gp.y = lg;
    RouterParams& rp = p.router;
    rp.logits = lg; rp.ldl = E; rp.T = T; rp.E = E; rp.k = k;
    GPTOSS_RETURN_IF_ERROR(c.alloc(size_t(T) * k, "expert_idx", &rp.expert_idx));
    GPTOSS_RETURN_IF_ERROR(c.alloc(size_t(T) * k, "expert_w", &rp.expert_w));
    GPTOSS_RETURN_IF_ERROR(c.backend().moe_input(p));
    GPTOSS_RETURN_IF_ERROR(c.download_act(xn_h, np.out, size_t(T) * H));
    GPTOSS_RETURN_IF_ERROR(c.download(lg_h, static_cast<const float*>(lg), size_t(T) * E));
    GPTOSS_RETURN_IF_ERROR(c.download(idx_h, rp.expert_idx, size_t(T) * k));
    return c.download(w_h, rp.expert_w, size_t(T) * k);
  });
  return py::make_tuple(xn_o, lg_o, idx_o, w_out);
}

}  // namespace

void register_op_bindings(py::module_& m) {
  py::module_ ops = m.def_submodule(
      "ops",
      "Per-op entry points over the Backend interface (tests, benchmarks). Activations are float32 "
      "in and out; on a backend whose act_type is BF16 they are rounded to bf16 on upload. bf16 "
      "weights are uint16 bit patterns; MXFP4 blocks/scales are uint8. device: 'cpu', 'cpu:THREADS', "
      "'cuda' or 'cuda:INDEX'.");
  ops.def("backend_info", &backend_info, py::arg("device") = "cpu",
          "dict(name, act_type, kv_type, device_name, host_memory) of the backend used for `device` "
          "(act_type: activations, kv_type: the KV cache the engine allocates; 'F32' or 'BF16').");
  ops.def("embed", &op_embed, py::arg("ids"), py::arg("table"), py::arg("device") = "cpu",
          "ids int[T], table uint16[V, H] (bf16 bits) -> float32[T, H] = table[ids].");
  ops.def("rmsnorm", &op_rmsnorm, py::arg("x"), py::arg("w"), py::arg("rows") = py::none(), py::arg("eps") = 1e-5f,
          py::arg("device") = "cpu",
          "x float32[N, H] (residual), w float32[H], rows int[T] or None -> float32[T, H] "
          "(act_type on the device).");
  ops.def("dense", &op_dense, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(), py::arg("y") = py::none(),
          py::arg("f32_out") = false, py::arg("device") = "cpu",
          "x float32[T, K] (act), w uint16[N, K] (bf16 bits), bias float32[N] or None. Returns "
          "x @ w.T + bias as float32[T, N]; with y float32[T, N] (the residual) returns y + that. "
          "The output is act_type on the device unless y is given or f32_out.");
  ops.def("rope", &op_rope, py::arg("q"), py::arg("k"), py::arg("positions"), py::arg("cos"), py::arg("sin"),
          py::arg("device") = "cpu",
          "q float32[T, n_q*64], k float32[T, n_kv*64], positions int[T], cos/sin float32[P, 32] "
          "-> (q, k) rotated (half-split pairing).");
  ops.def("attention", &op_attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("cache_k"),
          py::arg("cache_v"), py::arg("seq_slot"), py::arg("seq_start"), py::arg("seq_lens"), py::arg("sinks"),
          py::arg("window") = 0, py::arg("scale") = 0.125f, py::arg("device") = "cpu",
          "q float32[T, n_q*64], k/v float32[T, n_kv*64] (this step), cache_k/cache_v "
          "[slots, n_kv, len, 64] (position p at p % len), float32 for an F32 cache or uint16 (bf16 bits) "
          "for a BF16 cache; keys and values are used at the cache's precision. Per sequence s "
          "(tokens in order): seq_slot, seq_start (absolute position of its first token) and "
          "seq_lens, sinks float32[n_q] -> float32[T, n_q*64].");
  ops.def("kv_append", &op_kv_append, py::arg("k"), py::arg("v"), py::arg("cache_k"), py::arg("cache_v"),
          py::arg("seq_slot"), py::arg("seq_start"), py::arg("seq_lens"), py::arg("device") = "cpu",
          "Returns copies of (cache_k, cache_v) (float32 or uint16 bf16 bits, as given) with this step's "
          "k/v written at pos % len, converted to the cache's type.");
  ops.def("router_topk", &op_router_topk, py::arg("logits"), py::arg("k"), py::arg("device") = "cpu",
          "logits float32[T, E] -> (int32[T, k] experts sorted by logit, ties lower index first; "
          "float32[T, k] softmax over those k logits).");
  ops.def("moe", &op_moe, py::arg("x"), py::arg("expert_idx"), py::arg("expert_w"), py::arg("w1_blocks"),
          py::arg("w1_scales"), py::arg("b1"), py::arg("w2_blocks"), py::arg("w2_scales"), py::arg("b2"),
          py::arg("y"), py::arg("swiglu_alpha") = 1.702f, py::arg("swiglu_limit") = 7.0f,
          py::arg("next_read_bytes") = 0, py::arg("device") = "cpu",
          "x float32[T, H] (act), expert_idx int[T, k], expert_w float32[T, k], w1_blocks "
          "uint8[E, 2I, H/32, 16], w1_scales uint8[E, 2I, H/32], b1 float32[E, 2I], w2_blocks "
          "uint8[E, H, I/32, 16], w2_scales uint8[E, H, I/32], b2 float32[E, H], y float32[T, H] "
          "(residual) -> y + MoE(x) as float32[T, H]. next_read_bytes > 0 sets MoEParams::next_read "
          "to a device buffer of that size (a hint, which must not change the result).");
  ops.def("attn_input", &op_attn_input, py::arg("x"), py::arg("norm_w"), py::arg("w"), py::arg("bias"),
          py::arg("n_q"), py::arg("n_kv"), py::arg("positions"), py::arg("cos"), py::arg("sin"),
          py::arg("cache_k") = py::none(), py::arg("cache_v") = py::none(), py::arg("seq_slot") = py::none(),
          py::arg("eps") = 1e-5f, py::arg("device") = "cpu",
          "x float32[T, H] (residual), norm_w float32[H], w uint16[(n_q + 2 n_kv) 64, H], bias "
          "float32[N], positions int[T], cos/sin float32[P, 32] -> (xn float32[T, H], qkv float32[T, N] "
          "after RoPE, cache_k, cache_v). With cache_k/cache_v uint16[slots, n_kv, len, 64] and "
          "seq_slot int[T] (one token per sequence), k/v are also appended and the caches returned.");
  ops.def("moe_input", &op_moe_input, py::arg("x"), py::arg("norm_w"), py::arg("w"), py::arg("bias"), py::arg("k"),
          py::arg("eps") = 1e-5f, py::arg("device") = "cpu",
          "x float32[T, H] (residual), norm_w float32[H], w uint16[E, H], bias float32[E] -> (xn "
          "float32[T, H], logits float32[T, E], int32[T, k] experts, float32[T, k] weights).");
  ops.def("sample", &op_sample, py::arg("logits"), py::arg("temperature"), py::arg("top_k") = 0,
          py::arg("top_p") = 1.0f, py::arg("min_p") = 0.0f, py::arg("seed") = 0, py::arg("counter") = 0,
          py::arg("device") = "cpu",
          "logits float32[S, V]; temperature, top_k, top_p, min_p, seed, counter: scalars or [S] "
          "arrays -> (int32[S] tokens, float32[S] log_softmax(logits)[token]).");
}

}  // namespace gptoss
