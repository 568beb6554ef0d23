// Machinery of the per-op bindings (bindings_ops.cpp): one cached backend per device string,
// argument checking that turns wrong shapes and dtypes into ValueError, and Call, which owns the
// backend memory of one op call and runs without the GIL. See bindings_ops.cpp for the dtype rules.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "backend.h"
#include "bindings_common.h"

namespace gptoss {
namespace op_bindings {

namespace py = pybind11;

// ---------------------------------------------------------------------------------------------
// Backends, one per device string.
// ---------------------------------------------------------------------------------------------
struct BackendEntry {
  std::unique_ptr<Backend> backend;
  std::mutex mutex;  // one op at a time per backend (its scratch and pool are not re-entrant)
};

inline BackendEntry& backend_for(const std::string& device) {
  static std::mutex cache_mutex;
  static std::map<std::string, std::unique_ptr<BackendEntry>> cache;
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = cache.find(device);
  if (it != cache.end()) return *it->second;
  auto parse_index = [&](const std::string& s, int min) {
    size_t used = 0;
    int v = -1;
    try {
      v = std::stoi(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != s.size() || v < min)
      throw py::value_error("device '" + device + "': expected 'cpu', 'cpu:THREADS', 'cuda' or 'cuda:INDEX'");
    return v;
  };
  auto entry = std::make_unique<BackendEntry>();
  if (device == "cpu" || device.rfind("cpu:", 0) == 0) {
    entry->backend = make_cpu_backend(device == "cpu" ? 0 : parse_index(device.substr(4), 1));
  } else if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
    throw_if_error(make_cuda_backend(device == "cuda" ? 0 : parse_index(device.substr(5), 0), &entry->backend));
  } else {
    throw py::value_error("unknown device '" + device + "': expected 'cpu', 'cpu:THREADS', 'cuda' or 'cuda:INDEX'");
  }
  BackendEntry& ref = *entry;
  cache.emplace(device, std::move(entry));
  return ref;
}

// ---------------------------------------------------------------------------------------------
// Argument checking (with the GIL held).
// ---------------------------------------------------------------------------------------------
using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

inline py::array as_array(const py::object& o, const char* name) {
  if (!py::isinstance<py::array>(o))
    throw py::value_error(std::string(name) + " must be a numpy array, got " + std::string(py::str(o.attr("__class__").attr("__name__"))));
  return o.cast<py::array>();
}

// Float arrays of any precision are accepted and converted to float32.
inline F32Array f32_arg(const py::object& o, const char* name) {
  py::array a = as_array(o, name);
  if (a.dtype().kind() != 'f')
    throw py::value_error(std::string(name) + " must be a floating-point array, got dtype " + std::string(py::str(a.dtype())));
  return F32Array::ensure(a);
}

// Integer arrays whose values fit in int32.
inline I32Array i32_arg(const py::object& o, const char* name) {
  py::array a = as_array(o, name);
  const char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u')
    throw py::value_error(std::string(name) + " must be an integer array, got dtype " + std::string(py::str(a.dtype())));
  auto wide = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
  for (py::ssize_t i = 0; i < wide.size(); ++i) {
    const int64_t v = wide.data()[i];
    if (v < INT32_MIN || v > INT32_MAX)
      throw py::value_error(std::string(name) + " value " + std::to_string(v) + " does not fit in int32");
  }
  return I32Array::ensure(wide);
}

// Exact dtype, no conversion: bf16 bit patterns (uint16) and MXFP4 bytes (uint8).
template <class T>
py::array_t<T, py::array::c_style> exact_arg(const py::object& o, const char* name, const char* what) {
  py::array a = as_array(o, name);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::value_error(std::string(name) + " must have dtype " + what + ", got " + std::string(py::str(a.dtype())));
  return py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a);
}

// dims: -1 matches anything. Returns the shape.
inline std::vector<int64_t> need_shape(const py::array& a, const char* name, std::vector<int64_t> dims) {
  bool ok = a.ndim() == py::ssize_t(dims.size());
  for (size_t i = 0; ok && i < dims.size(); ++i) ok = dims[i] < 0 || a.shape(i) == dims[i];
  if (!ok) {
    std::string want = "(";
    for (size_t i = 0; i < dims.size(); ++i) want += (i ? ", " : "") + (dims[i] < 0 ? std::string("*") : std::to_string(dims[i]));
    throw py::value_error(std::string(name) + " has shape " + shape_str(a) + ", expected " + want +
                          (dims.size() == 1 ? ",)" : ")"));
  }
  std::vector<int64_t> s(size_t(a.ndim()));
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    s[size_t(i)] = a.shape(i);
    if (s[size_t(i)] < 1) throw py::value_error(std::string(name) + " has an empty dimension: shape " + shape_str(a));
    if (s[size_t(i)] > INT32_MAX) throw py::value_error(std::string(name) + " is too large");
  }
  return s;
}

// A per-sequence value given either as a scalar or as a 1-D array of length S.
template <class Arr>
Arr per_seq(const Arr& a, int S, const char* name) {
  if (a.ndim() == 0) {
    Arr out({py::ssize_t(S)});
    for (int s = 0; s < S; ++s) out.mutable_data()[s] = a.data()[0];
    return out;
  }
  need_shape(a, name, {S});
  return a;
}

// The step's BatchDesc arrays from per-sequence (slot, start, count), built on the host.
struct HostBatch {
  std::vector<int32_t> tok_pos, tok_seq, seq_slot, seq_start, seq_tok0;
  int T = 0, S = 0;
};

inline HostBatch make_batch(const I32Array& slot, const I32Array& start, const I32Array& lens, int T, int slots,
                     const char* op) {
  const std::string where = std::string(op) + ": ";
  need_shape(slot, "seq_slot", {-1});
  const int S = int(slot.shape(0));
  need_shape(start, "seq_start", {S});
  need_shape(lens, "seq_lens", {S});
  HostBatch b;
  b.T = T;
  b.S = S;
  b.seq_tok0.push_back(0);
  std::vector<char> used(size_t(slots), 0);
  for (int s = 0; s < S; ++s) {
    const int sl = slot.data()[s], st = start.data()[s], n = lens.data()[s];
    if (sl < 0 || sl >= slots)
      throw py::value_error(where + "seq_slot[" + std::to_string(s) + "] = " + std::to_string(sl) +
                            " is outside the cache's [0, " + std::to_string(slots) + ")");
    if (used[size_t(sl)]) throw py::value_error(where + "two sequences use slot " + std::to_string(sl));
    used[size_t(sl)] = 1;
    if (st < 0) throw py::value_error(where + "seq_start[" + std::to_string(s) + "] is negative");
    if (n < 1) throw py::value_error(where + "seq_lens[" + std::to_string(s) + "] must be >= 1");
    for (int i = 0; i < n; ++i) {
      b.tok_pos.push_back(st + i);
      b.tok_seq.push_back(s);
    }
    b.seq_slot.push_back(sl);
    b.seq_start.push_back(st);
    b.seq_tok0.push_back(b.seq_tok0.back() + n);
  }
  if (b.seq_tok0.back() != T)
    throw py::value_error(where + "seq_lens sum to " + std::to_string(b.seq_tok0.back()) + " but there are " +
                          std::to_string(T) + " tokens");
  return b;
}

// ---------------------------------------------------------------------------------------------
// One op call on a backend, without the GIL: owns the allocations and the placed weights.
// ---------------------------------------------------------------------------------------------
class Call {
 public:
  explicit Call(BackendEntry& e) : lock_(e.mutex), b_(*e.backend) {}
  ~Call() {
    for (void* p : allocs_) b_.free(p);
    if (placed_) b_.release_weights();
  }
  Backend& backend() { return b_; }
  DType act() const { return b_.act_type(); }

  template <class T>
  Status alloc(size_t count, const char* what, T** out) {
    void* p = nullptr;
    GPTOSS_RETURN_IF_ERROR(b_.alloc(&p, count * sizeof(T), what));
    allocs_.push_back(p);
    *out = static_cast<T*>(p);
    return Status::Ok();
  }
  // U is T or const T: the Params fields that point at inputs are const.
  template <class T, class U>
  Status upload(const T* src, size_t count, const char* what, U** out) {
    static_assert(std::is_same<typename std::remove_const<U>::type, T>::value, "upload: pointer type mismatch");
    T* p = nullptr;
    GPTOSS_RETURN_IF_ERROR(alloc(count, what, &p));
    *out = p;
    return b_.copy_to_device(p, src, count * sizeof(T));
  }
  // Activation input: f32 -> act_type. U is void or const void.
  template <class U>
  Status upload_act(const float* src, size_t n, const char* what, U** out) {
    if (act() == DType::F32) {
      float* p = nullptr;
      GPTOSS_RETURN_IF_ERROR(upload(src, n, what, &p));
      *out = p;
      return Status::Ok();
    }
    std::vector<bf16_t> h(n);
    for (size_t i = 0; i < n; ++i) h[i] = f32_to_bf16(src[i]);
    bf16_t* p = nullptr;
    GPTOSS_RETURN_IF_ERROR(upload(h.data(), n, what, &p));
    *out = p;
    return Status::Ok();
  }
  Status alloc_act(size_t n, const char* what, void** out) {
    uint8_t* p = nullptr;
    GPTOSS_RETURN_IF_ERROR(alloc(n * dtype_size(act()), what, &p));
    *out = p;
    return Status::Ok();
  }
  // Activation output: act_type -> f32.
  Status download_act(float* dst, const void* src, size_t n) {
    if (act() == DType::F32) return b_.copy_to_host(dst, src, n * sizeof(float));
    std::vector<bf16_t> h(n);
    GPTOSS_RETURN_IF_ERROR(b_.copy_to_host(h.data(), src, n * sizeof(bf16_t)));
    for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(h[i]);
    return Status::Ok();
  }
  template <class T>
  Status download(T* dst, const T* src, size_t count) {
    return b_.copy_to_host(dst, src, count * sizeof(T));
  }
  template <class T>
  Status place(WeightKind kind, const T* host, size_t count, const std::vector<int64_t>& shape, const char* name,
               const T** out) {
    placed_ = true;
    const void* p = nullptr;
    GPTOSS_RETURN_IF_ERROR(b_.place_weight(kind, host, count * sizeof(T), shape.data(), int(shape.size()), name, &p));
    *out = static_cast<const T*>(p);
    return Status::Ok();
  }
  // BatchDesc arrays on the device.
  Status upload_batch(const HostBatch& h, BatchDesc* d) {
    d->T = h.T;
    d->S = h.S;
    GPTOSS_RETURN_IF_ERROR(upload(h.tok_pos.data(), h.tok_pos.size(), "tok_pos", &d->tok_pos));
    GPTOSS_RETURN_IF_ERROR(upload(h.tok_seq.data(), h.tok_seq.size(), "tok_seq", &d->tok_seq));
    GPTOSS_RETURN_IF_ERROR(upload(h.seq_slot.data(), h.seq_slot.size(), "seq_slot", &d->seq_slot));
    GPTOSS_RETURN_IF_ERROR(upload(h.seq_start.data(), h.seq_start.size(), "seq_start", &d->seq_start));
    return upload(h.seq_tok0.data(), h.seq_tok0.size(), "seq_tok0", &d->seq_tok0);
  }

 private:
  std::unique_lock<std::mutex> lock_;
  Backend& b_;
  std::vector<void*> allocs_;
  bool placed_ = false;
};

// Runs fn(Call&) -> Status without the GIL, then raises for a bad status.
template <class Fn>
void run_on(const std::string& device, Fn&& fn) {
  BackendEntry& entry = backend_for(device);
  Status st;
  {
    py::gil_scoped_release nogil;
    Call call(entry);
    st = fn(call);
    if (st.ok()) st = call.backend().synchronize();
  }
  throw_if_error(st);
}

inline std::vector<py::ssize_t> dims(std::initializer_list<int64_t> d) { return std::vector<py::ssize_t>(d.begin(), d.end()); }

}  // namespace op_bindings
}  // namespace gptoss
