// The seam between the engine and the two backends. The engine (csrc/engine.cpp) owns the model,
// the KV cache and the step loop; a Backend owns memory and runs the op families of csrc/ops.h.
// The engine picks the backend once, at load. Nothing here is virtual per element: each call is a
// whole op over a whole step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common.h"
#include "ops.h"

namespace gptoss {

// How a weight tensor will be used, so a backend may choose a layout for its kernels.
enum class WeightKind : int32_t {
  DenseBF16 = 0,   // [N][K] bf16 (qkv, out, router, unembedding)
  EmbeddingBF16,   // [V][H] bf16, read by rows
  VectorF32,       // norm scales, biases, sinks (already converted to f32)
  Mxfp4Blocks,     // [E][rows][K/32][16] u8
  Mxfp4Scales,     // [E][rows][K/32] u8
};

// Upper bounds that let a backend size its scratch once, before the first step, so that no step
// ever allocates (required for CUDA-graph capture).
struct BackendLimits {
  int max_tokens = 0;   // tokens per step (prefill chunk)
  int max_seqs = 0;     // sequences per step
  int hidden = 0, intermediate = 0, n_experts = 0, top_k = 0, vocab = 0;
  int n_q = 0, n_kv = 0, max_context = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual const char* name() const = 0;  // "cpu" or "cuda"
  virtual DType act_type() const = 0;    // dtype of activations between ops (see ops.h)
  virtual DType kv_type() const { return DType::BF16; }  // dtype of the KV cache (see KVCacheView)
  virtual bool host_memory() const = 0;  // true: pointers are host pointers (CPU backend)
  virtual std::string device_name() const = 0;

  // --- memory -----------------------------------------------------------------------------
  // alloc fails with OutOfMemory naming `what`, the bytes asked for and the bytes free.
  virtual Status alloc(void** ptr, size_t bytes, const char* what) = 0;
  virtual void free(void* ptr) = 0;
  // Ordered with the ops on the backend's stream. copy_to_device: `src` may be reused as soon as the
  // call returns. copy_to_host: returns once the bytes are on the host.
  virtual Status copy_to_device(void* dst, const void* src, size_t bytes) = 0;
  virtual Status copy_to_host(void* dst, const void* src, size_t bytes) = 0;
  virtual Status memset(void* dst, int value, size_t bytes) = 0;
  virtual Status synchronize() = 0;
  // Bytes of device memory in use / total (0, 0 for the CPU backend).
  virtual void memory_info(size_t* used, size_t* total) const { *used = 0; *total = 0; }

  // Places one weight tensor where the kernels will read it. The CPU backend returns `host`
  // itself (mmapped bytes are used in place). The CUDA backend copies it to the GPU, and may change
  // the layout for `kind`; any such change is documented at its implementation. *out stays owned by
  // the backend until release_weights().
  virtual Status place_weight(WeightKind kind, const void* host, size_t bytes,
                              const int64_t* shape, int ndim, const char* name, const void** out) = 0;
  virtual void release_weights() = 0;

  virtual Status reserve(const BackendLimits& limits) = 0;

  // --- ops (csrc/ops.h) ---------------------------------------------------------------------
  virtual Status embed(const EmbedParams& p) = 0;
  virtual Status rmsnorm(const RMSNormParams& p) = 0;
  virtual Status dense(const DenseParams& p) = 0;
  virtual Status rope(const RopeParams& p) = 0;
  virtual Status attention(const AttentionParams& p) = 0;
  virtual Status kv_append(const KVAppendParams& p) = 0;
  virtual Status router_topk(const RouterParams& p) = 0;
  virtual Status moe(const MoEParams& p) = 0;
  virtual Status sample(const SampleParams& p) = 0;
  // Fused families (ops.h): the default runs the composition of the ops above.
  virtual Status attn_input(const AttnInputParams& p);
  virtual Status moe_input(const MoEInputParams& p);

  // --- graph capture (CUDA). A backend without graphs returns false and the engine runs ops
  // eagerly. Between capture_begin() and capture_end(key) the ops are recorded, not run;
  // replay(key) runs them again with whatever the input buffers hold then.
  virtual bool supports_graphs() const { return false; }
  virtual Status capture_begin() { return make_error(StatusCode::Unsupported, "graphs not supported"); }
  virtual Status capture_end(int key) { return make_error(StatusCode::Unsupported, "graphs not supported"); }
  virtual bool has_graph(int key) const { return false; }
  virtual Status replay(int key) { return make_error(StatusCode::Unsupported, "graphs not supported"); }
};

// The default compositions of the fused families. Inline, so that Backend keeps no key function:
// its vtable and typeinfo are emitted wherever they are used (the CUDA library links them too).
inline Status Backend::attn_input(const AttnInputParams& p) {
  if (p.n_dense < 1 || p.n_dense > 3)
    return make_error(StatusCode::InvalidArgument, "attn_input: n_dense must be 1..3, got " + std::to_string(p.n_dense));
  if (p.append_kv && p.append.batch.T != p.append.batch.S)
    return make_error(StatusCode::InvalidArgument,
                      "attn_input: append_kv needs exactly one token per sequence (T=" + std::to_string(p.append.batch.T) +
                          ", S=" + std::to_string(p.append.batch.S) + ")");
  GPTOSS_RETURN_IF_ERROR(rmsnorm(p.norm));
  for (int i = 0; i < p.n_dense; ++i) GPTOSS_RETURN_IF_ERROR(dense(p.dense[i]));
  GPTOSS_RETURN_IF_ERROR(rope(p.rope));
  if (p.append_kv) GPTOSS_RETURN_IF_ERROR(kv_append(p.append));
  return Status::Ok();
}

inline Status Backend::moe_input(const MoEInputParams& p) {
  GPTOSS_RETURN_IF_ERROR(rmsnorm(p.norm));
  GPTOSS_RETURN_IF_ERROR(dense(p.gate));
  return router_topk(p.router);
}

// threads <= 0: one per hardware thread (or $GPT_OSS_C_THREADS).
std::unique_ptr<Backend> make_cpu_backend(int threads);

// Fails with DeviceError when there is no usable GPU, and with Unsupported when this build has
// no CUDA backend.
Status make_cuda_backend(int device, std::unique_ptr<Backend>* out);

// True when this build has the CUDA backend and at least one GPU is visible.
bool cuda_available();

// Description of the CPU code path picked at run time ("avx512", "avx2" or "scalar").
const char* cpu_simd_level();
int cpu_default_threads();

}  // namespace gptoss
