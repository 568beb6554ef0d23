// The engine: owns the weights (mmapped, or placed on the GPU), the KV cache and the step
// workspace, and runs one forward step over a batch of sequences as a flat list of op calls
// (csrc/ops.h) on the chosen backend (csrc/backend.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "common.h"
#include "mapped_file.h"
#include "ops.h"

namespace gptoss {

// The model family's hyper-parameters (python/gpt_oss_c/config.py builds this from either
// config.json layout). head_dim must be 64; hidden and intermediate must be multiples of 32.
struct ModelConfig {
  int n_layers = 0, n_experts = 0, top_k = 0, vocab = 0, hidden = 0, intermediate = 0;
  int head_dim = 64, n_q = 0, n_kv = 0, sliding_window = 0, initial_context = 4096;
  double rope_theta = 150000.0, rope_factor = 32.0, ntk_alpha = 1.0, ntk_beta = 32.0;
  float swiglu_limit = 7.0f, swiglu_alpha = 1.702f, rms_eps = 1e-5f;
  std::vector<int> sliding;  // per layer: 1 = sliding-window attention, 0 = full
  int max_position = 131072; // initial_context * rope_factor: the longest supported context
};

// A tensor as the loader found it: `nbytes` at byte `offset` of `file`, stored as `dtype`.
// Canonical names (both checkpoint layouts map to these; see python/gpt_oss_c/loader.py):
//   embed, norm, unembed,
//   layers.{i}.{attn_norm, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, sinks,
//               mlp_norm, gate_w, gate_b, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2}
struct TensorRef {
  std::string name, file;
  uint64_t offset = 0, nbytes = 0;
  DType dtype = DType::BF16;
  std::vector<int64_t> shape;
};

struct EngineOptions {
  std::string device = "cpu";  // "cpu" or "cuda" (or "cuda:N")
  int max_context = 4096;      // positions per sequence
  int max_seqs = 1;            // KV-cache slots (sequences decoded together)
  int max_step_tokens = 512;   // tokens per forward chunk; longer steps are split
  int threads = 0;             // CPU threads; 0 = all cores
  bool use_graphs = true;      // capture decode steps as CUDA graphs ($GPT_OSS_C_NO_GRAPHS=1: off)
};

struct SeqInput {
  int slot = 0;                  // KV-cache slot in [0, max_seqs)
  int start = 0;                 // absolute position of tokens[0]; the cache holds [0, start)
  std::vector<int32_t> tokens;   // new tokens (>= 1)
  SamplingConfig sampling;
};

enum class LogitsMode : int32_t { None = 0, Last = 1, All = 2 };

struct StepOutput {
  std::vector<int32_t> tokens;   // [S] sampled next token per sequence (when sampling)
  std::vector<float> logprobs;   // [S]
  std::vector<float> logits;     // [S][V] (Last) or [T][V] (All), f32
};

struct LayerWeights {
  const float* attn_norm = nullptr;
  const bf16_t* qkv_w = nullptr;  // set when q, k and v rows are contiguous (one dense call)
  const bf16_t* q_w = nullptr; const bf16_t* k_w = nullptr; const bf16_t* v_w = nullptr;
  const float* qkv_b = nullptr;   // [n_q*64 + 2*n_kv*64] f32
  const bf16_t* o_w = nullptr; const float* o_b = nullptr;
  const float* sinks = nullptr;
  const float* mlp_norm = nullptr;
  const bf16_t* gate_w = nullptr; const float* gate_b = nullptr;
  const uint8_t* w1_blocks = nullptr; const uint8_t* w1_scales = nullptr; const float* b1 = nullptr;
  const uint8_t* w2_blocks = nullptr; const uint8_t* w2_scales = nullptr; const float* b2 = nullptr;
  bool scales_below_128 = false;  // MoEParams::scales_below_128 for this layer's w1/w2 scales
};

class Engine {
 public:
  ~Engine();
  static Status create(const ModelConfig& cfg, const std::vector<TensorRef>& tensors,
                       const EngineOptions& opts, std::unique_ptr<Engine>* out);

  // Runs the sequences' new tokens through the model, appends them to each slot's KV cache and,
  // when `sample`, draws the next token of each sequence. Validates everything first (slots,
  // positions, token ids, context length, sampling values); nothing is touched on error.
  Status step(const std::vector<SeqInput>& seqs, LogitsMode mode, bool sample, StepOutput* out);

  // Forgets what slot `slot` holds; its next step must start at position 0.
  void reset_slot(int slot);
  int slot_length(int slot) const { return slot_len_.at(size_t(slot)); }

  const ModelConfig& config() const { return cfg_; }
  const EngineOptions& options() const { return opts_; }
  Backend& backend() { return *backend_; }
  size_t weight_bytes() const { return weight_bytes_; }
  size_t kv_bytes() const { return kv_bytes_; }

 private:
  Engine() = default;
  Status load_weights(const std::vector<TensorRef>& tensors);
  Status allocate_state();
  Status validate(const std::vector<SeqInput>& seqs, LogitsMode mode, bool sample) const;

  // A piece of a step: chunk sequence i is seqs[seq[i]], tokens [begin[i], begin[i] + count[i]).
  struct Chunk {
    std::vector<int> seq, begin, count;
  };
  Status run_chunk(const std::vector<SeqInput>& seqs, const Chunk& chunk, LogitsMode mode, bool sample,
                   const std::vector<size_t>& logits_row0, StepOutput* out);
  // The layers, final norm, unembedding and sampling of one chunk, with every input already on the
  // device: only kernel launches, so a decode chunk can be captured as a graph and replayed.
  // Device addresses of one chunk's inputs and outputs in ws_.io (step_io: offsets depend only on
  // the chunk's T, S and R, so a replayed decode graph, keyed by S = T = R, always finds them).
  struct StepIO {
    size_t upload_bytes = 0;           // the inputs: bytes [0, upload_bytes) of ws_.io
    size_t counters_at = 0, sampling_at = 0;  // byte offsets of counters and sampling (host staging too)
    int32_t* ints = nullptr;           // ids[T] | tok_pos[T] | tok_seq[T] | seq_slot[S] | seq_start[S] | seq_tok0[S+1] | rows[R]
    int64_t* counters = nullptr;       // [R]
    SamplingConfig* sampling = nullptr;  // [R]
  };
  StepIO step_io(int T, int S, int R) const;
  Status forward(const BatchDesc& b, const StepIO& io, int rows, bool sample, bool greedy);
  Status unembed(const int32_t* d_rows, int rows);
  size_t ints_count() const;
  size_t io_bytes() const;

  ModelConfig cfg_;
  EngineOptions opts_;
  std::unique_ptr<Backend> backend_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::vector<std::vector<uint8_t>> host_owned_;  // converted tensors (f32 vectors, f16->bf16)
  const bf16_t* embed_ = nullptr;
  const bf16_t* unembed_ = nullptr;
  const float* final_norm_ = nullptr;
  std::vector<LayerWeights> layers_;
  std::vector<KVCacheView> kv_;
  std::vector<void*> allocations_;
  size_t weight_bytes_ = 0, kv_bytes_ = 0;

  // Step workspace (backend memory), sized for max_step_tokens and max_seqs.
  struct Workspace {
    float* x = nullptr;           // [T][H] residual
    void* xn = nullptr;           // [T][H] normed activations
    void* qkv = nullptr;          // [T][n_q*64 + 2*n_kv*64]
    void* attn = nullptr;         // [T][n_q*64]
    float* router = nullptr;      // [T][E]
    int32_t* expert_idx = nullptr;  // [T][k]
    float* expert_w = nullptr;      // [T][k]
    void* xfinal = nullptr;       // [T][H] normed rows for the unembedding
    float* logits = nullptr;      // [max(T_logits)][V]
    void* io = nullptr;           // a chunk's inputs, uploaded in one copy (Engine::step_io)
    int32_t* sampled = nullptr;   // [2 S]: tokens[R] then logprobs[R] (f32 bits), read back in one copy
    float* rope_cos = nullptr;    // [max_context][32]
    float* rope_sin = nullptr;
  } ws_;
  int logits_rows_ = 0;              // rows the logits buffer holds
  bool graphs_enabled_ = true;       // EngineOptions::use_graphs and not $GPT_OSS_C_NO_GRAPHS
  bool ring_layers_ = false;         // some sliding layer keeps fewer than max_context positions
  std::vector<int> slot_len_;        // positions held by each KV-cache slot
  std::vector<uint8_t> host_io_;     // host staging of a chunk's inputs (ws_.io's layout)
};

// Build facts for gpt_oss_c.build_info().
struct BuildInfo {
  std::string version, compiler, cuda_archs, simd;
  bool cuda = false;
  int threads = 0;
};
BuildInfo build_info();

}  // namespace gptoss
