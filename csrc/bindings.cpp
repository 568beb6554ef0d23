// pybind11 module gpt_oss_c._core. Checks inputs, forwards, turns Status into exceptions; no math.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "backend.h"
#include "bindings_common.h"
#include "engine.h"

namespace py = pybind11;

namespace gptoss {
namespace {

template <typename T>
T required(const py::dict& d, const char* key) {
  if (!d.contains(key)) {
    PyErr_SetString(PyExc_ValueError, (std::string("model config is missing '") + key + "'").c_str());
    throw py::error_already_set();
  }
  return d[key].cast<T>();
}

ModelConfig config_from_dict(const py::dict& d) {
  ModelConfig c;
  c.n_layers = required<int>(d, "n_layers");
  c.n_experts = required<int>(d, "n_experts");
  c.top_k = required<int>(d, "top_k");
  c.vocab = required<int>(d, "vocab");
  c.hidden = required<int>(d, "hidden");
  c.intermediate = required<int>(d, "intermediate");
  c.head_dim = required<int>(d, "head_dim");
  c.n_q = required<int>(d, "n_q");
  c.n_kv = required<int>(d, "n_kv");
  c.sliding_window = required<int>(d, "sliding_window");
  c.initial_context = required<int>(d, "initial_context");
  c.rope_theta = required<double>(d, "rope_theta");
  c.rope_factor = required<double>(d, "rope_factor");
  c.ntk_alpha = required<double>(d, "ntk_alpha");
  c.ntk_beta = required<double>(d, "ntk_beta");
  c.swiglu_limit = required<float>(d, "swiglu_limit");
  c.rms_eps = required<float>(d, "rms_eps");
  c.sliding = required<std::vector<int>>(d, "sliding");
  c.max_position = required<int>(d, "max_position");
  return c;
}

DType dtype_from_str(const std::string& s, const std::string& name) {
  if (s == "BF16") return DType::BF16;
  if (s == "F16") return DType::F16;
  if (s == "F32") return DType::F32;
  if (s == "U8") return DType::U8;
  throw_if_error(make_error(StatusCode::InvalidArgument, "tensor '" + name + "' has unsupported dtype " + s));
  return DType::U8;
}

// Moves a vector into a numpy array without copying.
template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* owned = new std::vector<T>(std::move(v));
  py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, owned->data(), free_when_done);
}

class PyEngine {
 public:
  PyEngine(const py::dict& config, const py::list& tensors, const std::string& device, int max_context,
           int max_seqs, int max_step_tokens, int threads, bool use_graphs) {
    ModelConfig cfg = config_from_dict(config);
    std::vector<TensorRef> refs;
    refs.reserve(tensors.size());
    for (const py::handle& h : tensors) {
      auto t = h.cast<py::tuple>();
      if (t.size() != 6) throw_if_error(make_error(StatusCode::InvalidArgument, "tensor refs are (name, file, offset, nbytes, dtype, shape)"));
      TensorRef r;
      r.name = t[0].cast<std::string>();
      r.file = t[1].cast<std::string>();
      r.offset = t[2].cast<uint64_t>();
      r.nbytes = t[3].cast<uint64_t>();
      r.dtype = dtype_from_str(t[4].cast<std::string>(), r.name);
      r.shape = t[5].cast<std::vector<int64_t>>();
      refs.push_back(std::move(r));
    }
    EngineOptions opts;
    opts.device = device;
    opts.max_context = max_context;
    opts.max_seqs = max_seqs;
    opts.max_step_tokens = max_step_tokens;
    opts.threads = threads;
    opts.use_graphs = use_graphs;
    Status s;
    {
      py::gil_scoped_release release;
      s = Engine::create(cfg, refs, opts, &engine_);
    }
    throw_if_error(s);
  }

  py::tuple step(const py::list& seqs, int mode, bool sample) {
    if (mode < 0 || mode > 2) throw_if_error(make_error(StatusCode::InvalidArgument, "mode must be 0 (none), 1 (last) or 2 (all)"));
    std::vector<SeqInput> in;
    in.reserve(seqs.size());
    for (const py::handle& h : seqs) {
      auto t = h.cast<py::tuple>();
      if (t.size() != 4) throw_if_error(make_error(StatusCode::InvalidArgument, "a sequence is (slot, start, tokens, sampling)"));
      SeqInput s;
      s.slot = t[0].cast<int>();
      s.start = t[1].cast<int>();
      auto tok = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(t[2]);
      if (!tok || tok.ndim() != 1) throw_if_error(make_error(StatusCode::InvalidArgument, "tokens must be a 1-D sequence of ints"));
      s.tokens.resize(size_t(tok.size()));
      for (py::ssize_t i = 0; i < tok.size(); ++i) {
        int64_t v = tok.at(i);
        s.tokens[size_t(i)] = (v < INT32_MIN || v > INT32_MAX) ? -1 : int32_t(v);
      }
      if (!t[3].is_none()) {
        auto c = t[3].cast<py::tuple>();
        s.sampling.temperature = c[0].cast<float>();
        s.sampling.top_k = c[1].cast<int32_t>();
        s.sampling.top_p = c[2].cast<float>();
        s.sampling.min_p = c[3].cast<float>();
        s.sampling.seed = c[4].cast<uint64_t>();
      }
      in.push_back(std::move(s));
    }
    StepOutput out;
    Status st;
    {
      py::gil_scoped_release release;
      st = engine_->step(in, LogitsMode(mode), sample, &out);
    }
    throw_if_error(st);
    const py::ssize_t S = py::ssize_t(in.size()), V = engine_->config().vocab;
    py::object logits = py::none();
    if (!out.logits.empty()) {
      const py::ssize_t rows = py::ssize_t(out.logits.size()) / V;
      logits = to_numpy(std::move(out.logits), {rows, V});
    }
    return py::make_tuple(sample ? py::object(to_numpy(std::move(out.tokens), {S})) : py::none(),
                          sample ? py::object(to_numpy(std::move(out.logprobs), {S})) : py::none(), logits);
  }

  py::dict info() const {
    py::dict d;
    Backend& be = engine_->backend();
    size_t used = 0, total = 0;
    be.memory_info(&used, &total);
    d["device"] = be.name();
    d["device_name"] = be.device_name();
    d["weight_bytes"] = engine_->weight_bytes();
    d["kv_cache_bytes"] = engine_->kv_bytes();
    d["device_memory_used"] = used;
    d["device_memory_total"] = total;
    d["max_context"] = engine_->options().max_context;
    d["max_seqs"] = engine_->options().max_seqs;
    d["max_step_tokens"] = engine_->options().max_step_tokens;
    return d;
  }

  void reset_slot(int slot) { check_slot(slot); engine_->reset_slot(slot); }
  int slot_length(int slot) const { check_slot(slot); return engine_->slot_length(slot); }

 private:
  void check_slot(int slot) const {
    if (slot < 0 || slot >= engine_->options().max_seqs)
      throw_if_error(make_error(StatusCode::InvalidArgument, "slot " + std::to_string(slot) + " is out of range"));
  }
  std::unique_ptr<Engine> engine_;
};

}  // namespace

void register_model_bindings(py::module_& m) {
  py::class_<PyEngine>(m, "Engine")
      .def(py::init<const py::dict&, const py::list&, const std::string&, int, int, int, int, bool>(),
           py::arg("config"), py::arg("tensors"), py::arg("device"), py::arg("max_context"), py::arg("max_seqs"),
           py::arg("max_step_tokens"), py::arg("threads") = 0, py::arg("use_graphs") = true,
           "Loads the weights (tensors: [(name, file, offset, nbytes, dtype, shape)]) onto `device`.")
      .def("step", &PyEngine::step, py::arg("seqs"), py::arg("mode"), py::arg("sample"),
           "seqs: [(slot, start, tokens, sampling | None)] with sampling = (temperature, top_k, top_p, "
           "min_p, seed). mode: 0 no logits, 1 last token of each sequence, 2 every token. Returns "
           "(tokens int32[S] | None, logprobs float32[S] | None, logits float32[rows, V] | None).")
      .def("info", &PyEngine::info)
      .def("reset_slot", &PyEngine::reset_slot)
      .def("slot_length", &PyEngine::slot_length);
}

}  // namespace gptoss

PYBIND11_MODULE(_core, m) {
  m.doc() = "gpt_oss_c compiled core: engine, CPU and CUDA backends";
  m.def("build_info", [] {
    gptoss::BuildInfo b = gptoss::build_info();
    py::dict d;
    d["version"] = b.version;
    d["compiler"] = b.compiler;
    d["cuda"] = b.cuda;
    d["cuda_archs"] = b.cuda_archs;
    d["cpu_simd"] = b.simd;
    d["threads"] = b.threads;
    return d;
  });
  m.def("cuda_available", &gptoss::cuda_available);
  gptoss::register_model_bindings(m);
  gptoss::register_op_bindings(m);
}
