// The CUDA backend: one device, one non-default stream, every op of csrc/ops.h as kernels on it.
//
// Memory: every allocation goes through alloc() (cudaMalloc, tracked for memory_info). Weights are
// uploaded once by place_weight (through a pinned double-buffered staging area, so a 13 GB
// checkpoint needs 2 x 32 MiB of pinned memory, not 13 GB). MXFP4 tensors are re-laid-out on the way
// by cuda-b's mxfp4_upload (layout in cuda/moe_mxfp4.cuh). reserve() allocates the scratch of every
// op that needs one (attention split-K partials, sampling state, MoE workspace) so that no op
// allocates and a decode step can be captured as a CUDA graph. The dense split-K workspace depends
// only on the SM count, so it is allocated at creation.
//
// Graphs: capture_begin/capture_end record the ops issued in between on the stream (thread-local
// capture mode) and instantiate them under an integer key; replay(key) launches the instance. The
// kernels read every per-step value (positions, lengths, sampling settings) from device buffers, so
// a replay after the engine has refreshed those buffers computes the new step.
//
// Inputs that live on the device (slots, positions, sampling settings) are validated by the
// kernels, which record the first bad one (cuda/device_errors.cuh); synchronize() and copy_to_host()
// report it as InvalidArgument, so a bad batch becomes a ValueError, never a crash or a silent
// out-of-bounds write.
#pragma once

#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend.h"
#include "dense_bf16.cuh"
#include "device_errors.cuh"
#include "op_profiler.cuh"

namespace gptoss {

// True when GPT_OSS_C_FORCE_PORTABLE=1 was set when the process first asked: launchers then take
// their sm_80 code path (mma.sync / ldmatrix / cp.async) even on sm_90a. Read once, cached.
bool cuda_force_portable();

class CudaBackend final : public Backend {
 public:
  static Status create(int device, std::unique_ptr<Backend>* out);
  ~CudaBackend() override;

  const char* name() const override { return "cuda"; }
  DType act_type() const override { return DType::BF16; }
  bool host_memory() const override { return false; }
  std::string device_name() const override { return device_name_; }

  Status alloc(void** ptr, size_t bytes, const char* what) override;
  void free(void* ptr) override;
  Status copy_to_device(void* dst, const void* src, size_t bytes) override;
  Status copy_to_host(void* dst, const void* src, size_t bytes) override;
  Status memset(void* dst, int value, size_t bytes) override;
  Status synchronize() override;
  void memory_info(size_t* used, size_t* total) const override;

  Status place_weight(WeightKind kind, const void* host, size_t bytes, const int64_t* shape, int ndim,
                      const char* name, const void** out) override;
  void release_weights() override;
  Status reserve(const BackendLimits& limits) override;

  Status embed(const EmbedParams& p) override;
  Status rmsnorm(const RMSNormParams& p) override;
  Status dense(const DenseParams& p) override;
  Status rope(const RopeParams& p) override;
  Status attention(const AttentionParams& p) override;
  Status kv_append(const KVAppendParams& p) override;
  Status router_topk(const RouterParams& p) override;
  Status moe(const MoEParams& p) override;
  Status sample(const SampleParams& p) override;
  // Decode-sized steps run one fused kernel each (cuda/dense_bf16.cu); others the composition.
  Status attn_input(const AttnInputParams& p) override;
  Status moe_input(const MoEInputParams& p) override;

  bool supports_graphs() const override { return true; }
  Status capture_begin() override;
  Status capture_end(int key) override;
  bool has_graph(int key) const override { return graphs_.count(key) != 0; }
  Status replay(int key) override;

 private:
  // A scratch region sized by reserve(); `bytes` is what was allocated.
  struct Scratch {
    void* ptr = nullptr;
    size_t bytes = 0;
  };

  CudaBackend() = default;
  Status use_device() const;
  // Host -> device copy of `bytes` through the pinned staging buffers (pageable fallback).
  Status upload(void* dst, const void* src, size_t bytes);
  // Makes `s` at least `bytes` (zero-filled). reserve() sizes every scratch up front; this only
  // grows one when an op is called with a larger shape than reserve() was told about, and refuses
  // to while a graph is being captured (allocation would break the capture). Growing drops every
  // captured graph, as does release_weights: graphs hold raw pointers to the old memory, and the
  // engine captures again when has_graph() says there is none.
  Status ensure_scratch(Scratch* s, size_t bytes, const char* what);
  void drop_graphs();
  void free_scratch(Scratch* s);
  // Every op goes through here: a failed op during capture ends (and discards) the capture, so the
  // stream is usable again and capture_end reports why.
  Status op_done(Status s, const char* op);
  // Runs one op's launcher, timed by the profiler when it is on and no graph is being captured.
  template <class Launch>
  Status run_op(const char* op, const std::string& shape, Launch&& launch) {
    if (!skip_ops_.empty() && skipped(op, shape)) return op_done(Status::Ok(), op);
    const bool timed = profiler_.enabled() && !capturing_;
    if (timed) profiler_.begin(std::string(op) + " " + shape, stream_);
    Status s = launch();
    if (timed) profiler_.end(stream_);
    return op_done(s, op);
  }
  // Waits for the stream once, with an optional small device-to-host copy and the device error
  // record read back in the same wait (into the pinned readback area when there is one); then
  // reports the record.
  Status sync_and_check(void* dst, const void* src, size_t bytes);
  // The first bad input a kernel recorded since the last check (cuda/device_errors.cuh), as
  // InvalidArgument, and the record cleared.
  Status report_device_error(const DeviceErrorRecord& r);

  int device_ = 0;
  int num_sms_ = 0;
  size_t total_mem_ = 0;
  std::string device_name_;
  cudaStream_t stream_ = nullptr;

  std::unordered_map<void*, size_t> allocations_;  // every live cudaMalloc of this backend
  size_t allocated_bytes_ = 0;
  std::vector<void*> weights_;

  // Pinned staging for uploads: two buffers so the CPU fills one while the DMA drains the other.
  void* staging_[2] = {nullptr, nullptr};
  cudaEvent_t staging_done_[2] = {nullptr, nullptr};
  bool staging_failed_ = false;
  // Pinned readback area: the device error record, then small copy_to_host data (the sampled tokens
  // of a decode step): with pageable destinations every read was its own wait on the stream.
  void* readback_ = nullptr;

  // The dense split-K workspace, as the launchers see it (sized at creation, num_sms known).
  DenseWorkspace dense_ws() const;

  Scratch attn_scratch_, sample_scratch_, moe_scratch_, dense_scratch_;
  // Programmatic dependent launch of the dense GEMV / GEMM, decode attention and MoE kernels:
  // sm_90+, unless $GPT_OSS_C_NO_PDL=1 or $GPT_OSS_C_FORCE_PORTABLE=1.
  bool pdl_ = false;
  // $GPT_OSS_C_SKIP_OPS (performance attribution only; results are wrong): comma-separated entries
  // "op" or "op@text", e.g. "attention@window=128,dense@N=2880"; an op call whose name matches and
  // whose shape string (run_op's) contains the text launches nothing. bench/op_cost.py times decode
  // with each skipped to get what every op costs inside the graph-replayed step.
  std::vector<std::pair<std::string, std::string>> skip_ops_;
  bool skipped(const char* op, const std::string& shape) const;
  DeviceErrorRecord* device_errors_ = nullptr;  // device memory, zero = no error

  bool capturing_ = false;
  std::string capture_error_;  // why the last capture was aborted, reported by capture_end
  std::map<int, cudaGraphExec_t> graphs_;
  OpProfiler profiler_;
};

}  // namespace gptoss
