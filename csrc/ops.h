// One Params struct per op family. The CPU backend (csrc/cpu/) and the CUDA backend (cuda/)
// implement the same families behind csrc/backend.h, and the engine (csrc/engine.cpp) runs a
// forward pass as a flat list of these calls:
//
//   embed -> [ attn_input = (rmsnorm -> dense(qkv) -> rope [-> kv_append when T == S])
//              -> attention [-> kv_append when T != S] -> dense(out, += residual)
//              -> moe_input = (rmsnorm -> dense(router) -> router_topk) -> moe(+= residual) ] x L
//         -> rmsnorm(rows = last token of each sequence) -> dense(unembedding) -> sample
//
// Conventions (every op):
//  * Pointers are in the backend's memory: host memory for the CPU, device memory for CUDA.
//  * Matrices are row-major; `ld*` is the row stride in elements. Weights are (out, in) rows, the
//    nn.Linear convention of the checkpoint.
//  * The residual stream is always F32. "Activations" (normed inputs, q/k/v, attention output) use
//    the backend's act_type(): F32 on the CPU, BF16 on CUDA. Each op says which dtypes it takes in
//    `*_type` fields; a backend returns Unsupported for a combination it does not implement.
//  * bf16 weights are raw bits (bf16_t). Small vectors (norm scales, biases, sinks) are F32,
//    converted once at load.
//  * head_dim is 64 everywhere (checked at load); MXFP4 blocks are 32 elements in 16 bytes.
#pragma once

#include <cstdint>

#include "common.h"

namespace gptoss {

constexpr int kHeadDim = 64;
constexpr int kMxfp4Block = 32;        // elements per MXFP4 block
constexpr int kMxfp4BlockBytes = 16;   // bytes per MXFP4 block (two E2M1 codes per byte)

// True when every E8M0 scale byte of scales[0..n) is < 128 (MoEParams::scales_below_128). Load
// time only: one pass over the bytes, eight at a time.
inline bool mxfp4_scales_below_128(const uint8_t* scales, size_t n) {
  uint64_t any = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    __builtin_memcpy(&v, scales + i, 8);
    any |= v;
  }
  for (; i < n; ++i) any |= scales[i];
  return (any & 0x8080808080808080ull) == 0;
}

// Which token belongs to which sequence, and where it sits. One step may mix prefill chunks and
// decode tokens of different sequences. Sequence s owns tokens [seq_tok0[s], seq_tok0[s+1]) of
// the step, at absolute positions seq_start[s] + 0, 1, ...; everything before seq_start[s] is
// already in the KV cache of slot seq_slot[s].
struct BatchDesc {
  int T = 0;                           // tokens in this step
  int S = 0;                           // sequences in this step
  const int32_t* tok_pos = nullptr;    // [T]   absolute position of each token
  const int32_t* tok_seq = nullptr;    // [T]   sequence index in [0, S) of each token
  const int32_t* seq_slot = nullptr;   // [S]   KV-cache slot of each sequence
  const int32_t* seq_start = nullptr;  // [S]   absolute position of the sequence's first new token
  const int32_t* seq_tok0 = nullptr;   // [S+1] prefix offsets into the step's tokens
};

// One layer's KV cache: K and V, each [slots][n_kv][len][64] of `type` (post-RoPE K).
// Position p of a sequence lives at index p % len. Full-attention layers have len = max_context,
// so that is just p; sliding layers have len = min(window, max_context) and are a ring buffer.
// `type` is the backend's kv_type(): BF16 on CUDA (half the bytes to read per decoded token), F32 on
// the CPU (so the CPU path stays as exact as its f32 activations: the oracle tests compare greedy
// argmax against the f32 reference, and bf16 rounding of K/V would flip near-ties).
struct KVCacheView {
  void* k = nullptr;
  void* v = nullptr;
  DType type = DType::BF16;
  int slots = 0, n_kv = 0, len = 0;
};

// out[t, :] = float(table[ids[t], :]).  table: [V][H] bf16, out: [T][H] f32 (the residual).
// ids must be in [0, V): the engine validates them before the call.
struct EmbedParams {
  const int32_t* ids = nullptr;
  const bf16_t* table = nullptr;
  float* out = nullptr;
  int T = 0, H = 0, V = 0;
};

// out[r, :] = x[row(r), :] * rsqrt(mean(x[row(r)]^2) + eps) * w, in f32, then cast to out_type.
// row(r) = rows ? rows[r] : r (rows lets the final norm gather the last token of each sequence).
struct RMSNormParams {
  const float* x = nullptr;  int ldx = 0;  // [*][H] residual
  const int32_t* rows = nullptr;           // [T] or nullptr
  const float* w = nullptr;                // [H]
  void* out = nullptr;  int ldo = 0;  DType out_type = DType::F32;  // [T][H]
  int T = 0, H = 0;
  float eps = 1e-5f;
};

// A hint, never read by the math: bytes a later op of the step reads (the next layer's q/k/v
// weight), which a backend may pull towards the chip once the op's own weights are in.
struct ReadHint {
  const void* p = nullptr;
  size_t bytes = 0;
};

// y[t, n] (+)= sum_k x[t, k] * w[n, k] + bias[n], accumulated in f32.
// accumulate=true adds into y (must then be F32): this is how the attention output projection
// lands on the residual. bias may be nullptr.
struct DenseParams {
  const void* x = nullptr;  int ldx = 0;  DType x_type = DType::F32;  // [T][K]
  const bf16_t* w = nullptr;                                          // [N][K]
  const float* bias = nullptr;                                        // [N] or nullptr
  void* y = nullptr;  int ldy = 0;  DType y_type = DType::F32;        // [T][N]
  int T = 0, K = 0, N = 0;
  bool accumulate = false;
};

// YaRN RoPE, half-split (NeoX) pairing, in place on q [T][n_q*64] and k [T][n_kv*64]:
//   out[i]    = x[i]*cos[p][i] - x[i+32]*sin[p][i]
//   out[i+32] = x[i+32]*cos[p][i] + x[i]*sin[p][i]          (i < 32, p = tok_pos[t])
// cos/sin: [max_context][32] f32 with the YaRN concentration already folded in.
struct RopeParams {
  BatchDesc batch;                          // uses T and tok_pos
  void* q = nullptr;  int ldq = 0;
  void* k = nullptr;  int ldk = 0;
  DType type = DType::F32;
  const float* cos = nullptr;
  const float* sin = nullptr;
  int n_q = 0, n_kv = 0;
};

// Causal GQA attention with learned sinks and an optional sliding window, for every token of the
// step. Query head h uses KV head h / (n_q / n_kv). A query at position p sees the keys at
// positions [lo, p], lo = window ? max(0, p - window + 1) : 0 (window = 128 keys, self included).
// Keys before seq_start come from the cache; keys at or after it come from this step's k/v.
//   s_j = (q . k_j) * scale;   out = sum_j exp(s_j - m) v_j / (sum_j exp(s_j - m) + exp(sink_h - m))
// The sink adds to the denominator only: it has no value row, and it is neither scaled nor masked.
// Keys and values are used at the precision of the cache's type, this step's included: F32 on the
// CPU (nothing is rounded), BF16 on CUDA (this step's keys and values are rounded to bf16 as the
// cache will store them). A token then sees the same keys in this step as it will from the cache
// later, and a prefill gives the same result in one chunk or several.
struct AttentionParams {
  BatchDesc batch;
  const void* q = nullptr;  int ldq = 0;     // [T][n_q*64], after RoPE
  const void* k = nullptr;                   // [T][n_kv*64], after RoPE: this step's keys
  const void* v = nullptr;  int ldkv = 0;    // [T][n_kv*64]: this step's values
  DType act_type = DType::F32;               // dtype of q, k, v and out
  KVCacheView cache;                         // positions < seq_start of each sequence
  const float* sinks = nullptr;              // [n_q]
  void* out = nullptr;  int ldo = 0;         // [T][n_q*64]
  int n_q = 0, n_kv = 0;
  int window = 0;                            // 0: full causal
  float scale = 0.125f;
};

// Writes this step's k/v into the cache at index pos % len, converting to the cache's type. When a sequence
// brings more than `len` tokens in one step, only its last `len` are written (the earlier ones
// would be overwritten in the ring anyway); this keeps the result independent of write order.
struct KVAppendParams {
  BatchDesc batch;
  const void* k = nullptr;
  const void* v = nullptr;  int ldkv = 0;
  DType act_type = DType::F32;
  KVCacheView cache;
};

// Router selection: for each token take the k largest of logits[t, 0..E) (ties: lower expert
// index first), sorted descending, and w = softmax over those k logits only.
struct RouterParams {
  const float* logits = nullptr;  int ldl = 0;  // [T][E], the gate dense output incl. bias
  int32_t* expert_idx = nullptr;                // [T][k]
  float* expert_w = nullptr;                    // [T][k]
  int T = 0, E = 0, k = 0;
};

// Mixture of experts with MXFP4 weights, accumulated onto the residual:
//   for each token t and each chosen expert e = expert_idx[t, j], with weight w = expert_w[t, j]:
//     u = W1[e] x[t] + b1[e]                      (2I values; even rows glu, odd rows linear)
//     a = min(u[0::2], limit);  l = clamp(u[1::2], -limit, limit)
//     z = a * sigmoid(alpha * a) * (l + 1)        (I values)
//     y[t] += w * (W2[e] z + b2[e])
// MXFP4 layout as in the checkpoint: blocks [E][rows][K/32][16] (byte j: element 2j in the low
// nibble, 2j+1 in the high nibble), scales [E][rows][K/32] (E8M0, value * 2^(s-127)).
// A backend may have changed this layout when it placed the weights (Backend::place_weight); the
// pointers are then in its own layout, documented there. Weights are never expanded in memory.
struct MoEParams {
  const void* x = nullptr;  int ldx = 0;  DType x_type = DType::F32;  // [T][H], normed
  const int32_t* expert_idx = nullptr;                                // [T][k]
  const float* expert_w = nullptr;                                    // [T][k]
  const uint8_t* w1_blocks = nullptr;                                 // mlp1 (gate_up): rows = 2I, K = H
  const uint8_t* w1_scales = nullptr;
  const float* b1 = nullptr;                                          // [E][2I]
  const uint8_t* w2_blocks = nullptr;                                 // mlp2 (down): rows = H, K = I
  const uint8_t* w2_scales = nullptr;
  const float* b2 = nullptr;                                          // [E][H]
  float* y = nullptr;  int ldy = 0;                                   // [T][H] residual, +=
  int T = 0, E = 0, k = 0, H = 0, I = 0;
  float swiglu_alpha = 1.702f, swiglu_limit = 7.0f;
  // Every E8M0 byte of w1_scales and w2_scales is < 128 (scales below 2): true of real checkpoints
  // (~2^-7). A hint found at load time (mxfp4_scales_below_128); backends may take a cheaper exact
  // dequantisation with it, and must be right either way.
  bool scales_below_128 = false;
  ReadHint next_read;
};

// ---- fused op families ------------------------------------------------------------------------
// Each is exactly the composition of the ops it names, in order; Backend (csrc/backend.cpp) runs
// that composition by default, and a backend may override it with fused kernels for the shapes it
// serves. The results may then differ from the composition only by f32 summation order.

// The attention input block of a layer:
//   norm (x -> xn), the qkv projection(s) of xn, rope on q and k, and, when append_kv, kv_append of
//   this step's k and v. Appending before attention is only valid when every sequence of the step
//   brings exactly one token (batch.T == batch.S): in a longer chunk a later position can overwrite
//   ring entries that earlier queries of the same chunk still need. The caller then skips its own
//   kv_append after attention (attention reads this step's keys from k/v either way).
// dense[0..n_dense) read norm.out; n_dense is 1 (fused q|k|v weight) or 3 (q, k, v separately).
struct AttnInputParams {
  RMSNormParams norm;
  DenseParams dense[3];
  int n_dense = 1;
  RopeParams rope;
  bool append_kv = false;
  KVAppendParams append;
};

// The MoE input block of a layer: norm (x -> xn, which the MoE reads afterwards, so norm.out is
// always written), the router projection of xn (gate.y = router logits) and router_topk.
struct MoEInputParams {
  RMSNormParams norm;
  DenseParams gate;
  RouterParams router;
};

// Per-sequence sampling settings. temperature == 0 means greedy (argmax; ties: lowest id).
// Otherwise, on p = softmax(logits / temperature):
//   top_k > 0  keeps the tokens whose logit is >= the k-th largest;
//   top_p < 1  then keeps the smallest set of most probable tokens whose mass (renormalised over
//              what top_k kept) reaches top_p, i.e. all tokens with p >= the threshold where the
//              descending cumulative mass first reaches top_p;
//   min_p > 0  then keeps tokens with p >= min_p * max(p).
// The token is drawn from the kept set by inverse CDF in token-id order with
// u = philox_uniform(seed, counter): the first id whose running kept mass exceeds u * total.
struct SamplingConfig {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  uint64_t seed = 0;
};

// logprob output: log_softmax(logits)[token] of the raw logits (temperature 1, no filtering),
// the model's own probability of the chosen token.
struct SampleParams {
  const float* logits = nullptr;  int ldl = 0;   // [S][V]
  const SamplingConfig* cfg = nullptr;           // [S]
  const int64_t* counter = nullptr;              // [S] Philox counter: position of the new token
  int32_t* out_token = nullptr;                  // [S]
  float* out_logprob = nullptr;                  // [S]
  int S = 0, V = 0;
  // Every cfg[s].temperature is 0 (the caller knows the settings): a backend may skip the work
  // that only sampling needs (CUDA launches only the max / log-sum-exp pass). Results are the same.
  bool greedy = false;
};

}  // namespace gptoss
