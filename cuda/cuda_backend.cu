// CudaBackend (cuda/cuda_backend.cuh): device selection, memory, uploads, scratch, ops, graphs.
// The ops themselves live in one file per family (cuda/<op>.cu); this file only routes the calls
// to their launchers on the backend's stream and owns everything the launchers may not do
// (allocate, synchronise, capture).
#include "cuda_backend.cuh"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "attention.cuh"
#include "cuda_check.cuh"
#include "dense_bf16.cuh"
#include "embed.cuh"
#include "kv_cache.cuh"
#include "moe_mxfp4.cuh"
#include "rmsnorm.cuh"
#include "rope_yarn.cuh"
#include "router_topk.cuh"
#include "sampling.cuh"

namespace gptoss {
namespace {

constexpr size_t kStagingBytes = size_t(32) << 20;    // per pinned staging buffer (two of them)
constexpr size_t kDirectCopyBytes = size_t(1) << 20;  // smaller uploads go straight from pageable
constexpr size_t kReadbackData = 256;                  // pinned readback: the error record, then data
constexpr size_t kReadbackBytes = size_t(64) << 10;
static_assert(sizeof(DeviceErrorRecord) <= kReadbackData, "the error record fits before the data");

// Launched never: cudaFuncGetAttributes on it tells whether this build has code for the device.
__global__ void probe_kernel() {}

std::string human_bytes(size_t b) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%zu bytes (%.2f GiB)", b, double(b) / double(size_t(1) << 30));
  return buf;
}

}  // namespace

bool cuda_force_portable() {
  static const bool forced = [] {
    const char* v = std::getenv("GPT_OSS_C_FORCE_PORTABLE");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return forced;
}

bool cuda_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear it: "no driver" must not poison later calls
    return false;
  }
  return n > 0;
}

Status make_cuda_backend(int device, std::unique_ptr<Backend>* out) { return CudaBackend::create(device, out); }

Status CudaBackend::create(int device, std::unique_ptr<Backend>* out) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return make_error(StatusCode::DeviceError,
                      std::string("no usable CUDA device: cudaGetDeviceCount failed with ") + cudaGetErrorName(err) +
                          " (" + cudaGetErrorString(err) +
                          "); check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or use device='cpu'");
  }
  if (n == 0)
    return make_error(StatusCode::DeviceError,
                      "no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES), or use device='cpu'");
  if (device < 0 || device >= n)
    return make_error(StatusCode::InvalidArgument, "cuda:" + std::to_string(device) + " was requested but " +
                                                       std::to_string(n) + " GPU(s) are visible");
  cudaDeviceProp prop;
  GPTOSS_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  if (prop.major < 8)
    return make_error(StatusCode::DeviceError,
                      "GPU " + std::to_string(device) + " (" + prop.name + ") has compute capability " +
                          std::to_string(prop.major) + "." + std::to_string(prop.minor) +
                          "; the gpt_oss_c CUDA backend needs 8.0 or newer (bf16 tensor cores)");
  std::unique_ptr<CudaBackend> b(new CudaBackend());
  b->device_ = device;
  b->num_sms_ = prop.multiProcessorCount;
  b->total_mem_ = prop.totalGlobalMem;
  b->device_name_ = std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
  GPTOSS_CUDA_CHECK(cudaSetDevice(device));
  cudaFuncAttributes attr;
  const cudaError_t probe = cudaFuncGetAttributes(&attr, probe_kernel);
  if (probe != cudaSuccess) {
    cudaGetLastError();
    return make_error(StatusCode::DeviceError,
                      "this build of gpt_oss_c has no kernels for " + b->device_name_ + " (" +
                          cudaGetErrorString(probe) + "); rebuild with CMAKE_CUDA_ARCHITECTURES covering it");
  }
  GPTOSS_CUDA_CHECK(cudaStreamCreateWithFlags(&b->stream_, cudaStreamNonBlocking));
  void* rec = nullptr;
  GPTOSS_RETURN_IF_ERROR(b->alloc(&rec, sizeof(DeviceErrorRecord), "device error record"));
  b->device_errors_ = static_cast<DeviceErrorRecord*>(rec);
  GPTOSS_CUDA_CHECK(cudaMemsetAsync(rec, 0, sizeof(DeviceErrorRecord), b->stream_));
  if (cudaHostAlloc(&b->readback_, kReadbackBytes, cudaHostAllocDefault) != cudaSuccess) {
    cudaGetLastError();  // no pinned memory to spare: pageable reads, one more wait each
    b->readback_ = nullptr;
  }
  GPTOSS_RETURN_IF_ERROR(b->ensure_scratch(&b->dense_scratch_, dense_workspace_bytes(b->num_sms_), "dense split-K workspace"));
  const char* no_pdl = std::getenv("GPT_OSS_C_NO_PDL");
  // Programmatic dependent launch needs sm_90; the portable (sm_80) mode does without it.
  b->pdl_ = prop.major >= 9 && !cuda_force_portable() && !(no_pdl && *no_pdl && std::strcmp(no_pdl, "0") != 0);
  if (const char* skip = std::getenv("GPT_OSS_C_SKIP_OPS")) {
    std::string list(skip);
    for (size_t i = 0; i <= list.size();) {
      size_t j = list.find(',', i);
      if (j == std::string::npos) j = list.size();
      const std::string e = list.substr(i, j - i);
      const size_t at = e.find('@');
      if (!e.empty()) b->skip_ops_.emplace_back(e.substr(0, at), at == std::string::npos ? "" : e.substr(at + 1));
      i = j + 1;
    }
  }
  *out = std::move(b);
  return Status::Ok();
}

bool CudaBackend::skipped(const char* op, const std::string& shape) const {
  for (const auto& [name, text] : skip_ops_)
    if (name == op && shape.find(text) != std::string::npos) return true;
  return false;
}

CudaBackend::~CudaBackend() {
  // Best effort: a destructor cannot report, and a failed call here must not stop the cleanup.
  cudaSetDevice(device_);
  if (capturing_) {
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(stream_, &g);
    if (g) cudaGraphDestroy(g);
  }
  if (stream_) cudaStreamSynchronize(stream_);
  drop_graphs();
  for (auto& a : allocations_) cudaFree(a.first);
  for (int i = 0; i < 2; ++i) {
    if (staging_[i]) cudaFreeHost(staging_[i]);
    if (staging_done_[i]) cudaEventDestroy(staging_done_[i]);
  }
  if (readback_) cudaFreeHost(readback_);
  if (stream_) cudaStreamDestroy(stream_);
  cudaGetLastError();
}

Status CudaBackend::use_device() const {
  int cur = -1;
  GPTOSS_CUDA_CHECK(cudaGetDevice(&cur));
  if (cur != device_) GPTOSS_CUDA_CHECK(cudaSetDevice(device_));
  return Status::Ok();
}

// ------------------------------------------------------------------------------------------------
// memory
// ------------------------------------------------------------------------------------------------

Status CudaBackend::alloc(void** ptr, size_t bytes, const char* what) {
  *ptr = nullptr;
  if (capturing_)
    return make_error(StatusCode::InvalidArgument,
                      std::string("cannot allocate ") + what + " while a CUDA graph is being captured");
  if (bytes == 0) return Status::Ok();
  GPTOSS_RETURN_IF_ERROR(use_device());
  const cudaError_t err = cudaMalloc(ptr, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    *ptr = nullptr;
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    return make_error(StatusCode::OutOfMemory,
                      std::string("out of GPU memory allocating ") + what + ": needed " + human_bytes(bytes) +
                          " but only " + human_bytes(free_b) + " are free of " + human_bytes(total_b) + " on " +
                          device_name_ + " (this engine holds " + human_bytes(allocated_bytes_) +
                          "); lower max_context, max_seqs or max_step_tokens, or use a larger GPU");
  }
  GPTOSS_RETURN_IF_ERROR(cuda_status(err, what, __FILE__, __LINE__));
  allocations_[*ptr] = bytes;
  allocated_bytes_ += bytes;
  return Status::Ok();
}

void CudaBackend::free(void* ptr) {
  auto it = allocations_.find(ptr);
  if (it == allocations_.end()) return;  // not ours (or nullptr): nothing to do
  use_device();
  cudaFree(ptr);
  allocated_bytes_ -= it->second;
  allocations_.erase(it);
}

// Ordered on the stream, so the engine refreshes a graph's inputs between replays with these.
// Pageable sources are safe to free on return: cudaMemcpyAsync from pageable memory returns once
// the bytes have been staged. Large copies go through the pinned double buffer instead.
Status CudaBackend::copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  if (capturing_)  // a copy from pageable memory cannot be part of a graph
    return make_error(StatusCode::InvalidArgument, "copy_to_device inside a CUDA graph capture");
  GPTOSS_RETURN_IF_ERROR(use_device());
  return upload(dst, src, bytes);
}

Status CudaBackend::copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  if (capturing_)
    return make_error(StatusCode::InvalidArgument, "copy_to_host would synchronise inside a CUDA graph capture");
  GPTOSS_RETURN_IF_ERROR(use_device());
  return sync_and_check(dst, src, bytes);
}

Status CudaBackend::memset(void* dst, int value, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  GPTOSS_RETURN_IF_ERROR(use_device());
  GPTOSS_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, stream_));
  return Status::Ok();
}

Status CudaBackend::synchronize() {
  if (capturing_) return make_error(StatusCode::InvalidArgument, "synchronize inside a CUDA graph capture");
  GPTOSS_RETURN_IF_ERROR(use_device());
  return sync_and_check(nullptr, nullptr, 0);
}

Status CudaBackend::sync_and_check(void* dst, const void* src, size_t bytes) {
  // The record is read on the backend's stream: after the kernels that write it, before the next
  // ones. Both copies land in the pinned area when there is one (the data only when it fits there),
  // so one stream wait covers them.
  char* rb = static_cast<char*>(readback_);
  const bool data_pinned = rb && bytes <= kReadbackBytes - kReadbackData;
  DeviceErrorRecord r;
  void* data_dst = data_pinned ? rb + kReadbackData : dst;
  void* rec_dst = rb ? static_cast<void*>(rb) : static_cast<void*>(&r);
  if (bytes) GPTOSS_CUDA_CHECK(cudaMemcpyAsync(data_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  GPTOSS_CUDA_CHECK(cudaMemcpyAsync(rec_dst, device_errors_, sizeof(r), cudaMemcpyDeviceToHost, stream_));
  GPTOSS_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (bytes && data_pinned) std::memcpy(dst, data_dst, bytes);
  if (rb) std::memcpy(&r, rb, sizeof(r));
  if (profiler_.enabled()) profiler_.collect();
  return report_device_error(r);
}

Status CudaBackend::report_device_error(const DeviceErrorRecord& r) {
  if (r.code == kDevErrNone) return Status::Ok();
  GPTOSS_CUDA_CHECK(cudaMemsetAsync(device_errors_, 0, sizeof(r), stream_));
  const std::string seq = "sequence " + std::to_string(r.seq);
  switch (r.code) {
    case kDevErrAttentionSlot:
    case kDevErrKVAppendSlot:
      return make_error(StatusCode::InvalidArgument,
                        std::string(r.code == kDevErrAttentionSlot ? "attention" : "kv_append") + ": " + seq +
                            " uses KV-cache slot " + std::to_string(r.v0) + ", outside the cache's [0, " +
                            std::to_string(r.v1) + "); it was skipped");
    case kDevErrCacheTooShort:
      return make_error(StatusCode::InvalidArgument,
                        "attention: " + seq + " needs cached positions [" + std::to_string(r.v0) + ", " +
                            std::to_string(r.v1) + ") but the cache holds only the last " + std::to_string(r.v2));
    case kDevErrSamplingSetting: {
      static const char* const kField[] = {"temperature", "top_k", "top_p", "min_p"};
      static const char* const kRule[] = {">= 0", ">= 0", "in (0, 1]", "in [0, 1]"};
      const int f = r.v0 >= 0 && r.v0 < 4 ? r.v0 : 0;
      float v;
      std::memcpy(&v, &r.v1, sizeof(v));
      const std::string value = f == 1 ? std::to_string(r.v1) : std::to_string(v);
      return make_error(StatusCode::InvalidArgument, "sample: " + seq + " has " + kField[f] + " = " + value +
                                                         " (must be " + kRule[f] +
                                                         "); it was sampled greedily");
    }
    default:
      return make_error(StatusCode::Internal, "unknown device error record " + std::to_string(r.code));
  }
}

// used: bytes this backend holds (weights, KV cache, workspaces, scratch); total: the device's.
void CudaBackend::memory_info(size_t* used, size_t* total) const {
  *used = allocated_bytes_;
  *total = total_mem_;
}

Status CudaBackend::upload(void* dst, const void* src, size_t bytes) {
  if (bytes >= kDirectCopyBytes && !staging_[0] && !staging_failed_) {
    bool ok = true;
    for (int i = 0; i < 2 && ok; ++i)
      ok = cudaHostAlloc(&staging_[i], kStagingBytes, cudaHostAllocDefault) == cudaSuccess &&
           cudaEventCreateWithFlags(&staging_done_[i], cudaEventDisableTiming) == cudaSuccess;
    if (!ok) {  // no pinned memory to spare: pageable copies are slower but correct
      cudaGetLastError();
      for (int i = 0; i < 2; ++i) {
        if (staging_[i]) cudaFreeHost(staging_[i]);
        if (staging_done_[i]) cudaEventDestroy(staging_done_[i]);
        staging_[i] = nullptr;
        staging_done_[i] = nullptr;
      }
      staging_failed_ = true;
    }
  }
  if (bytes < kDirectCopyBytes || !staging_[0]) {
    GPTOSS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    return Status::Ok();
  }
  // The CPU fills buffer i while the DMA engine drains buffer 1 - i.
  size_t off = 0;
  for (int i = 0; off < bytes; i ^= 1) {
    const size_t n = bytes - off < kStagingBytes ? bytes - off : kStagingBytes;
    GPTOSS_CUDA_CHECK(cudaEventSynchronize(staging_done_[i]));
    std::memcpy(staging_[i], static_cast<const char*>(src) + off, n);
    GPTOSS_CUDA_CHECK(
        cudaMemcpyAsync(static_cast<char*>(dst) + off, staging_[i], n, cudaMemcpyHostToDevice, stream_));
    GPTOSS_CUDA_CHECK(cudaEventRecord(staging_done_[i], stream_));
    off += n;
  }
  return Status::Ok();
}

// Dense tensors keep the checkpoint layout. MXFP4 blocks/scales take cuda-b's device layout
// (documented in cuda/moe_mxfp4.cuh): mxfp4_device_bytes sizes it, mxfp4_upload copies and
// re-lays-out.
Status CudaBackend::place_weight(WeightKind kind, const void* host, size_t bytes, const int64_t* shape, int ndim,
                                 const char* name, const void** out) {
  *out = nullptr;
  if (capturing_)
    return make_error(StatusCode::InvalidArgument, std::string("cannot place weight ") + name + " during capture");
  const bool mxfp4 = kind == WeightKind::Mxfp4Blocks || kind == WeightKind::Mxfp4Scales;
  size_t dev_bytes = bytes;
  if (mxfp4) {
    const Status s = mxfp4_device_bytes(kind, shape, ndim, &dev_bytes);
    if (!s.ok()) return make_error(s.code, std::string("tensor ") + name + ": " + s.message);
  }
  void* dev = nullptr;
  GPTOSS_RETURN_IF_ERROR(alloc(&dev, dev_bytes, name));
  const Status s = mxfp4 ? mxfp4_upload(kind, host, bytes, shape, ndim, dev, stream_) : upload(dev, host, bytes);
  if (!s.ok()) {
    free(dev);
    return make_error(s.code, std::string("uploading tensor ") + name + ": " + s.message);
  }
  weights_.push_back(dev);
  *out = dev;
  return Status::Ok();
}

void CudaBackend::release_weights() {
  use_device();
  cudaStreamSynchronize(stream_);
  if (!weights_.empty()) drop_graphs();
  for (void* w : weights_) free(w);
  weights_.clear();
}

void CudaBackend::drop_graphs() {
  for (auto& kv : graphs_) cudaGraphExecDestroy(kv.second);
  graphs_.clear();
}

Status CudaBackend::ensure_scratch(Scratch* s, size_t bytes, const char* what) {
  if (bytes <= s->bytes) return Status::Ok();
  if (capturing_)
    return make_error(StatusCode::InvalidArgument,
                      std::string(what) + " needs " + std::to_string(bytes) + " bytes but reserve() provided " +
                          std::to_string(s->bytes) + "; call reserve() with limits covering the captured step");
  GPTOSS_RETURN_IF_ERROR(use_device());
  GPTOSS_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the old region may still be in use
  drop_graphs();  // they would still point at the old region
  free_scratch(s);
  GPTOSS_RETURN_IF_ERROR(alloc(&s->ptr, bytes, what));
  s->bytes = bytes;
  GPTOSS_CUDA_CHECK(cudaMemsetAsync(s->ptr, 0, bytes, stream_));  // counters and histograms start at 0
  return Status::Ok();
}

void CudaBackend::free_scratch(Scratch* s) {
  free(s->ptr);
  s->ptr = nullptr;
  s->bytes = 0;
}

Status CudaBackend::reserve(const BackendLimits& limits) {
  if (capturing_) return make_error(StatusCode::InvalidArgument, "reserve() during graph capture");
  GPTOSS_RETURN_IF_ERROR(ensure_scratch(
      &attn_scratch_, attention_workspace_bytes(limits.max_tokens, limits.n_q, limits.n_kv, num_sms_),
      "attention split-K scratch"));
  GPTOSS_RETURN_IF_ERROR(ensure_scratch(&sample_scratch_, sample_workspace_bytes(limits.max_seqs), "sampling scratch"));
  GPTOSS_RETURN_IF_ERROR(ensure_scratch(&moe_scratch_, moe_workspace_bytes(limits), "MoE workspace"));
  return Status::Ok();
}

// ------------------------------------------------------------------------------------------------
// ops
// ------------------------------------------------------------------------------------------------

Status CudaBackend::op_done(Status s, const char* op) {
  if (!s.ok() && capturing_) {
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(stream_, &g);
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
    capturing_ = false;
    capture_error_ = std::string(op) + " failed: " + s.message;
  }
  return s;
}

namespace {
std::string dims(std::initializer_list<std::pair<const char*, long>> d) {
  std::string s;
  for (auto& [k, v] : d) s += std::string(s.empty() ? "" : " ") + k + "=" + std::to_string(v);
  return s;
}
// Token counts above 64 are prefill: one profile row for all of them.
long tok(int T) { return T <= 64 ? T : -1; }
}  // namespace

Status CudaBackend::embed(const EmbedParams& p) {
  return run_op("embed", dims({{"T", tok(p.T)}}), [&] { return launch_embed(p, stream_); });
}
Status CudaBackend::rmsnorm(const RMSNormParams& p) {
  return run_op("rmsnorm", dims({{"T", tok(p.T)}}), [&] { return launch_rmsnorm(p, stream_); });
}
Status CudaBackend::dense(const DenseParams& p) {
  return run_op("dense", dims({{"T", tok(p.T)}, {"N", p.N}, {"K", p.K}}),
                [&] { return launch_dense_bf16(p, dense_ws(), stream_); });
}

DenseWorkspace CudaBackend::dense_ws() const {
  return DenseWorkspace{dense_scratch_.ptr, dense_scratch_.bytes, num_sms_, pdl_, device_errors_};
}

Status CudaBackend::attn_input(const AttnInputParams& p) {
  if (!attn_input_fusable(p)) return Backend::attn_input(p);
  return run_op("attn_input", dims({{"T", tok(p.dense[0].T)}, {"N", p.dense[0].N}, {"K", p.dense[0].K}}),
                [&] { return launch_attn_input_fused(p, dense_ws(), stream_); });
}

Status CudaBackend::moe_input(const MoEInputParams& p) {
  if (!moe_input_fusable(p)) return Backend::moe_input(p);
  return run_op("moe_input", dims({{"T", tok(p.gate.T)}, {"N", p.gate.N}, {"K", p.gate.K}}),
                [&] { return launch_moe_input_fused(p, dense_ws(), stream_); });
}
Status CudaBackend::rope(const RopeParams& p) {
  return run_op("rope", dims({{"T", tok(p.batch.T)}}), [&] { return launch_rope(p, stream_); });
}
Status CudaBackend::kv_append(const KVAppendParams& p) {
  return run_op("kv_append", dims({{"T", tok(p.batch.T)}}), [&] { return launch_kv_append(p, device_errors_, stream_); });
}
Status CudaBackend::router_topk(const RouterParams& p) {
  return run_op("router_topk", dims({{"T", tok(p.T)}}), [&] { return launch_router_topk(p, stream_); });
}

Status CudaBackend::attention(const AttentionParams& p) {
  return run_op("attention", dims({{"T", tok(p.batch.T)}, {"window", p.window}}), [&] {
    Status s = ensure_scratch(&attn_scratch_, attention_step_workspace_bytes(p, num_sms_), "attention split-K scratch");
    if (!s.ok()) return s;
    return launch_attention(p, AttentionWorkspace{attn_scratch_.ptr, attn_scratch_.bytes, num_sms_, device_errors_, pdl_},
                            stream_);
  });
}

Status CudaBackend::moe(const MoEParams& p) {
  return run_op("moe", dims({{"T", tok(p.T)}}), [&] {
    BackendLimits l;  // what this call needs; reserve() normally made the workspace larger already
    l.max_tokens = p.T;
    l.hidden = p.H;
    l.intermediate = p.I;
    l.n_experts = p.E;
    l.top_k = p.k;
    Status s = ensure_scratch(&moe_scratch_, moe_workspace_bytes(l), "MoE workspace");
    if (!s.ok()) return s;
    return launch_moe_mxfp4(p, moe_scratch_.ptr, moe_scratch_.bytes, pdl_, stream_);
  });
}

Status CudaBackend::sample(const SampleParams& p) {
  return run_op("sample", dims({{"S", p.S}}), [&] {
    Status s = ensure_scratch(&sample_scratch_, sample_workspace_bytes(p.S), "sampling scratch");
    if (!s.ok()) return s;
    return launch_sample(p, SampleWorkspace{sample_scratch_.ptr, sample_scratch_.bytes, num_sms_, device_errors_},
                         stream_);
  });
}

// ------------------------------------------------------------------------------------------------
// graphs
// ------------------------------------------------------------------------------------------------

// Thread-local capture: only this thread's CUDA calls are checked against the capture, so another
// thread using the GPU (e.g. torch in the same process) cannot invalidate it.
Status CudaBackend::capture_begin() {
  if (capturing_) return make_error(StatusCode::InvalidArgument, "capture_begin: a capture is already in progress");
  GPTOSS_RETURN_IF_ERROR(use_device());
  GPTOSS_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
  capture_error_.clear();
  return Status::Ok();
}

Status CudaBackend::capture_end(int key) {
  if (!capturing_)
    return make_error(StatusCode::InvalidArgument,
                      capture_error_.empty() ? "capture_end without capture_begin"
                                             : "the graph capture was abandoned because " + capture_error_);
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t err = cudaStreamEndCapture(stream_, &graph);
  if (err != cudaSuccess) {
    if (graph) cudaGraphDestroy(graph);
    return cuda_status(err, "cudaStreamEndCapture", __FILE__, __LINE__);
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t ierr = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  GPTOSS_RETURN_IF_ERROR(cuda_status(ierr, "cudaGraphInstantiate", __FILE__, __LINE__));
  auto it = graphs_.find(key);
  if (it != graphs_.end()) {
    cudaGraphExecDestroy(it->second);
    it->second = exec;
  } else {
    graphs_[key] = exec;
  }
  return Status::Ok();
}

Status CudaBackend::replay(int key) {
  auto it = graphs_.find(key);
  if (it == graphs_.end())
    return make_error(StatusCode::InvalidArgument, "replay: no graph was captured under key " + std::to_string(key));
  if (capturing_) return make_error(StatusCode::InvalidArgument, "replay inside a CUDA graph capture");
  GPTOSS_RETURN_IF_ERROR(use_device());
  GPTOSS_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
  return Status::Ok();
}

}  // namespace gptoss
