// Internal to the CPU backend: the op entry points (one file per family under csrc/cpu/), the
// context they run in, and the scratch memory they share. Semantics are those of csrc/ops.h;
// the CPU backend's activation type is F32, so every `*_type` field must be F32 here.
#pragma once

#include <new>
#include <string>
#include <vector>

#include "ops.h"
#include "cpu/simd.h"
#include "cpu/thread_pool.h"

namespace gptoss {

// Buffers that ops reuse from call to call. They only grow (Backend::reserve sizes them up
// front for the engine's limits, so a step does not allocate).
struct CpuScratch {
  std::vector<float> moe_x;        // [A][H]  permuted activations, one row per (token, expert)
  std::vector<float> moe_z;        // [A][I]  swiglu outputs, permuted for mlp2
  std::vector<float> moe_y;        // [A][H]  expert outputs incl. b2, before weighting
  std::vector<int32_t> moe_index;  // counting-sort tables
  std::vector<float> attn_parts;   // attention partial softmax states, [chunks][n_kv][G*(64+2)]
  std::vector<int32_t> attn_chunk0;  // [T+1] first chunk of each token
  std::vector<uint16_t> attn_kv_bf16;  // [2][T][n_kv*64] this step's k/v rounded, for a BF16 cache
  std::vector<float> sample;       // [S][V]  per-sequence probabilities
};

struct CpuContext {
  ThreadPool& pool;
  const SimdKernels& simd;
  CpuScratch& scratch;
};

// Grows `v` to at least n elements; OutOfMemory (naming `what`) when that fails.
template <class T>
Status grow_scratch(std::vector<T>& v, size_t n, const char* what, T** out) {
  try {
    if (v.size() < n) v.resize(n);
  } catch (const std::bad_alloc&) {
    return make_error(StatusCode::OutOfMemory, std::string("cpu backend: cannot allocate ") +
                                                   std::to_string(n * sizeof(T)) +
                                                   " bytes of scratch for " + what);
  }
  *out = v.data();
  return Status::Ok();
}

inline Status need_f32(DType t, const char* op, const char* field) {
  if (t == DType::F32) return Status::Ok();
  return make_error(StatusCode::Unsupported, std::string(op) + ": the cpu backend computes in f32; " +
                                                 field + " must be F32, got " + dtype_name(t));
}

inline Status invalid(const std::string& msg) { return make_error(StatusCode::InvalidArgument, msg); }

// Checks a BatchDesc for `op`: T, S >= 1; seq_tok0 is 0..T and increasing; each token's tok_seq and
// tok_pos agree with its sequence (tok_pos = seq_start + offset); slots in [0, slots) and distinct.
Status check_batch(const BatchDesc& b, int slots, const char* op);

Status cpu_embed(CpuContext& c, const EmbedParams& p);
Status cpu_rmsnorm(CpuContext& c, const RMSNormParams& p);
Status cpu_dense(CpuContext& c, const DenseParams& p);
Status cpu_rope(CpuContext& c, const RopeParams& p);
Status cpu_attention(CpuContext& c, const AttentionParams& p);
// Floats of attn_parts that attention may need for steps within these limits (0: it never splits).
size_t cpu_attention_partial_floats(int max_tokens, int n_q, int n_kv, int max_context, int threads);
Status cpu_kv_append(CpuContext& c, const KVAppendParams& p);
Status cpu_router_topk(CpuContext& c, const RouterParams& p);
Status cpu_moe(CpuContext& c, const MoEParams& p);
Status cpu_sample(CpuContext& c, const SampleParams& p);

}  // namespace gptoss
