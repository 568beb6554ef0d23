// Causal GQA attention with learned sinks and an optional sliding window, head_dim 64, bf16 in/out,
// f32 softmax state. For a query at position p (head h, KV head h / G, G = n_q / n_kv):
//   keys j in [lo, p], lo = window ? max(0, p - window + 1) : 0
//   s_j = (q . k_j) * scale;  out = sum_j exp(s_j - m) v_j / (sum_j exp(s_j - m) + exp(sink_h - m))
// Key j of sequence s comes from the KV cache (row (slot*n_kv + kvh)*len + j % len) when j is before
// seq_start[s], and from this step's k/v (row seq_tok0[s] + j - seq_start[s]) otherwise.
// The softmax runs in the log2 domain: scores are multiplied by scale*log2(e) and the sink by
// log2(e) (it is not scaled), so exp becomes exp2.
//
// Both kernels are flash-attention style with tensor cores (mma.sync m16n8k16 bf16 -> f32, which
// is sm_80 code and runs unchanged on sm_90): a warp owns 16 "rows" and keeps their running max m,
// running sum l and output o[16][64] in registers; K/V tiles go global -> shared with cp.async
// (16-byte chunks, XOR-swizzled so ldmatrix is conflict-free) and shared -> registers with ldmatrix
// (K as the col-major B operand of S = Q K^T, V through ldmatrix.trans as the B operand of O = P V,
// P reused from the S accumulators as the A operand: one bf16 rounding in prefill, hi + lo bf16 parts
// in decode, see attend_tile). Invalid key rows are zero-filled by cp.async
// (src-size 0) and masked to -inf, so garbage never meets a zero weight.
//
// Rows are (token, query head) pairs of one KV head: the G query heads of a KV head share every
// K/V tile that is loaded.
// The launcher takes the decode kernel when T <= 2 S (at most two tokens per sequence on average)
// and the prefill kernel otherwise; each is correct for any mix of sequence lengths.
//  * decode: one block per (split, KV head, token), rows
//    = the G heads of that token (rows G..15 idle). The launch has `splits` blocks per (token, KV
//    head), enough for the longest context the step can see (the decode graph is replayed at every
//    position); a token uses splits_for_keys() of them, so a single long sequence still fills the
//    GPU, and the rest leave at once. The 4 warps of a block take interleaved 16-key tiles
//    of its chunk, then merge their states in shared memory. A token with one split writes its output
//    directly; with more, every split writes an (m, l, o) partial to the workspace and the last block
//    to arrive (per-token, per-head arrival counter) merges them with the sink; no second launch.
//  * prefill: one block per (64-row tile, KV head). Row r of a sequence is token r / G, head r % G,
//    so a tile covers 64/G tokens x G heads. Each 64-key tile of K/V is shared by the 4 warps; a warp
//    skips tiles its rows cannot see and masks only the tiles that straddle its rows' ranges.
//
// Workspace layout (decode, splits > 1): [counters: u32, one per (token, KV head), capacity fixed by
// the SM count][partial o: f32 [T][n_q][splits][64]][partial (m, l): float2 [T][n_q][splits]].
#include <algorithm>
#include <cmath>

#include "attention.cuh"
#include "cuda_check.cuh"
#include "device_common.cuh"
#include "pdl.cuh"

namespace gptoss {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kChunks = 8;            // 16-byte chunks in one 64-dim bf16 row
constexpr int kMaxGroup = 16;         // query heads per KV head: one m16 row block
constexpr int kDecodeWarps = 4;
constexpr int kDecodeKeys = 16;       // keys per warp tile in decode
constexpr int kMaxSplits = 32;
// Decode splits per token (measured on an H200, bench/NOTES.md session 5): a merge pass (partials,
// fence, arrival counter, re-read) costs ~4 us, a 16-key tile per warp ~1 us. So a token with up to
// kOneSplitKeys visible keys (every sliding-window layer; full layers early in a generation) is
// attended by one block per KV head that writes its output directly; longer ranges take one split
// per kKeysPerSplit keys, at most kMaxSplits (32 x 256 keys beat 49 x 168 at 8K keys: 21.5 vs 25.9 us).
constexpr int kOneSplitKeys = 384;
constexpr int kKeysPerSplit = 128;
static_assert(kOneSplitKeys >= kKeysPerSplit && kKeysPerSplit % (kDecodeWarps * kDecodeKeys) == 0, "split sizes");
constexpr int kPrefillWarps = 4;
constexpr int kBM = 16 * kPrefillWarps;  // rows per prefill block
constexpr int kBN = 64;                  // keys per prefill tile

struct AttnArgs {
  AttentionParams p;
  int G;              // query heads per KV head
  int splits;         // decode: blocks per (token, KV head), for the longest context of the step
  float scale_log2;   // scale * log2(e)
  unsigned* counters; // decode, splits > 1
  float* part_o;
  float2* part_ml;
  DeviceErrorRecord* errors;
};

// Host-side sizing of the decode grid and its workspace.
int decode_target_blocks(int num_sms) { return 3 * (num_sms > 0 ? num_sms : 1); }

__host__ __device__ constexpr int splits_for_keys(long long keys) {
  return keys <= kOneSplitKeys                         ? 1
         : keys > (long long)kMaxSplits * kKeysPerSplit ? kMaxSplits
                                                        : int((keys + kKeysPerSplit - 1) / kKeysPerSplit);
}

// Splits of each token's key range: enough blocks for ~3 per SM, at most splits_for_keys(max_keys).
int decode_splits(int T, int n_kv, long long max_keys, int num_sms) {
  const int base = T * n_kv, target = decode_target_blocks(num_sms);
  if (base >= target) return 1;
  return std::max(1, std::min(ceil_div(target, base), splits_for_keys(max_keys)));
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

size_t counters_bytes(int num_sms) { return align256(sizeof(unsigned) * size_t(decode_target_blocks(num_sms))); }

size_t decode_scratch_bytes(int T, int n_q, int splits, int num_sms) {
  if (splits <= 1) return 0;
  const size_t entries = size_t(T) * n_q * splits;
  return counters_bytes(num_sms) + align256(entries * kHeadDim * sizeof(float)) + align256(entries * sizeof(float2));
}

// The decode kernel takes steps of at most two tokens per sequence on average; its grid's z is the
// token (at most 65535).
bool use_decode_kernel(const BatchDesc& b) { return b.T <= 2 * b.S && b.T <= 65535; }

int step_splits(const AttentionParams& p, int num_sms) {
  const long long max_keys = p.window > 0 ? p.window : (long long)p.cache.len + p.batch.T;
  return decode_splits(p.batch.T, p.n_kv, max_keys, num_sms);
}

// ------------------------------------------------------------------------------------------------
// kernels
// ------------------------------------------------------------------------------------------------

// Chunk c of row r of a [rows][8 x 16 B] shared tile, XOR-swizzled: the 8 rows an ldmatrix reads at
// one logical chunk land in 8 different bank groups.
__device__ __forceinline__ int swz(int row, int chunk) { return row * kChunks + (chunk ^ (row & 7)); }

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;  // 0: nothing is read, the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* smem) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* smem) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// c[16x8] += a[16x16] * b[16x8]; fragment layouts of PTX mma.m16n8k16 (g = lane/4, q = lane%4):
// a: {(g, 2q..), (g+8, 2q..), (g, 2q+8..), (g+8, 2q+8..)}, b: {(k 2q.., n g), (k 2q+8.., n g)},
// c: {(g, 2q), (g, 2q+1), (g+8, 2q), (g+8, 2q+1)}.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Where the keys and values of one (sequence, KV head) live.
struct KVRows {
  const bf16_t* ck;  // cache rows of (slot, kvh): index i at ck + i*64
  const bf16_t* cv;
  const bf16_t* sk;  // this step's rows of the sequence: position start + r at sk + r*ldkv
  const bf16_t* sv;
  int start, len, ldkv;
  __device__ __forceinline__ size_t off(int j, bool cached) const {
    return cached ? size_t(j % len) * kHeadDim : size_t(j - start) * ldkv;
  }
  __device__ __forceinline__ const bf16_t* k(int j) const { return (j < start ? ck : sk) + off(j, j < start); }
  __device__ __forceinline__ const bf16_t* v(int j) const { return (j < start ? cv : sv) + off(j, j < start); }
};

__device__ __forceinline__ KVRows kv_rows(const AttentionParams& p, int s, int kvh) {
  KVRows r;
  const size_t cache_row = (size_t(p.batch.seq_slot[s]) * p.n_kv + kvh) * p.cache.len * kHeadDim;
  const size_t step_row = size_t(p.batch.seq_tok0[s]) * p.ldkv + size_t(kvh) * kHeadDim;
  r.ck = static_cast<const bf16_t*>(p.cache.k) + cache_row;
  r.cv = static_cast<const bf16_t*>(p.cache.v) + cache_row;
  r.sk = static_cast<const bf16_t*>(p.k) + step_row;
  r.sv = static_cast<const bf16_t*>(p.v) + step_row;
  r.start = p.batch.seq_start[s];
  r.len = p.cache.len;
  r.ldkv = p.ldkv;
  return r;
}

// Checks what only the device can see: the sequence's slot, and that the cache still holds every key
// its first token needs (the ring keeps the last `len` positions before seq_start). A bad slot skips
// the sequence (false: the caller returns without touching memory); a too-short cache is reported
// and computed anyway (j % len stays in bounds). `report` picks one thread to record.
__device__ __forceinline__ bool sequence_ok(const AttnArgs& a, int s, bool report) {
  const AttentionParams& p = a.p;
  const int slot = p.batch.seq_slot[s];
  if (slot < 0 || slot >= p.cache.slots) {
    if (report) record_device_error(a.errors, kDevErrAttentionSlot, s, slot, p.cache.slots);
    return false;
  }
  const int start = p.batch.seq_start[s];
  const int lo = p.window > 0 ? max(0, start - p.window + 1) : 0;
  if (report && start - lo > p.cache.len)
    record_device_error(a.errors, kDevErrCacheTooShort, s, lo, start, p.cache.len);
  return true;
}

// Copies key rows [j0, j0 + rows) (K and V) into swizzled shared tiles; rows at or beyond `je`
// become zeros. `tid`/`nthreads` split the rows*8 chunks among the cooperating threads.
// kPart (decode's programmatic dependent launch): 0 = every row; 1 = only the rows that no kernel
// of this step writes (cached positions j < kv.start, and the zero rows), issued before pdl_wait;
// 2 = the rest (this step's rows, which the preceding q/k/v kernel writes), issued after it.
template <int kRows, int kPart = 0>
__device__ __forceinline__ void load_kv_tile(uint4* ks, uint4* vs, const KVRows& kv, int j0, int je, int tid,
                                             int nthreads) {
  for (int i = tid; i < kRows * kChunks; i += nthreads) {
    const int r = i / kChunks, c = i % kChunks, j = j0 + r;
    const bool ok = j < je;
    if (kPart != 0 && (kPart == 1) != (!ok || j < kv.start)) continue;
    cp_async16(ks + swz(r, c), ok ? kv.k(j) + c * 8 : kv.sk, ok);
    cp_async16(vs + swz(r, c), ok ? kv.v(j) + c * 8 : kv.sv, ok);
  }
}

// A-operand fragments of 16 query rows (64 dims = 4 k-steps); row r lives at row_ptr(r) or is zero.
__device__ __forceinline__ void load_q_frags(uint32_t (&qa)[4][4], const bf16_t* row0, const bf16_t* row1, int lane) {
  const int col = (lane & 3) * 2;
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    const int c = ks * 16 + col;
    qa[ks][0] = row0 ? *reinterpret_cast<const uint32_t*>(row0 + c) : 0u;
    qa[ks][1] = row1 ? *reinterpret_cast<const uint32_t*>(row1 + c) : 0u;
    qa[ks][2] = row0 ? *reinterpret_cast<const uint32_t*>(row0 + c + 8) : 0u;
    qa[ks][3] = row1 ? *reinterpret_cast<const uint32_t*>(row1 + c + 8) : 0u;
  }
}

// Running softmax state of the 16 rows a warp owns; this thread holds rows lane/4 (index 0) and
// lane/4 + 8 (index 1), and columns (lane%4)*2 + {0, 1} of each 8-wide output n-tile.
struct RowState {
  float o[8][4];
  float m[2];
  float l[2];  // partial over this thread's columns; reduced across the quad at the end
  __device__ __forceinline__ void init() {
#pragma unroll
    for (int i = 0; i < 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
  }
};

// The A operand of P.V for keys kk*16 + 0..15: P rounded to bf16 (`hi`) and, with kSplitP, the
// rounding residual P - hi rounded again (`lo`), so that hi + lo carries P to 2^-16 relative.
template <bool kSplitP>
__device__ __forceinline__ void p_operand(uint32_t (&hi)[4], uint32_t (&lo)[4], float a0, float a1, float a2, float a3,
                                          float b0, float b1, float b2, float b3) {
  const float x[8] = {a0, a1, a2, a3, b0, b1, b2, b3};  // fragment order: (g, 2q..), (g+8, 2q..), +8 keys
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    hi[i] = pack_bf16x2(x[2 * i], x[2 * i + 1]);
    if (kSplitP) {
      const float2 h = unpack_bf16x2(hi[i]);
      lo[i] = pack_bf16x2(x[2 * i] - h.x, x[2 * i + 1] - h.y);  // exact difference, rounded once
    }
  }
}

// One warp: attends its 16 rows to a tile of 16*KK keys held in shared memory (rows of ks/vs).
// Key j0 + c is visible to row half h iff klo[h] <= j0 + c <= khi[h]; masking is skipped when the
// caller knows the whole tile is visible.
// kSplitP: the softmax weights enter P.V as hi + lo bf16 parts (two mma per V fragment) instead of
// one bf16 rounding. One rounding moves each weight by up to 2^-8 relative (half a bf16 ulp); when a
// few keys carry most of the weight (short contexts) that shifts the output by up to ~2^-8 sum_j
// p_j |v_j|, as much as the bf16 output rounding itself: up to twice the error of the same math with
// f32 weights (test_ops' flash-attention criterion failed on an 11-key token this way).
// The decode kernel is memory bound and takes the split for free; prefill is compute bound (the
// split would make it 1.5x the mma work) and keeps the single rounding.
template <int KK, bool kSplitP>
__device__ __forceinline__ void attend_tile(RowState& st, const uint4* ks, const uint4* vs, const uint32_t (&qa)[4][4],
                                            float scale_log2, bool need_mask, int j0, const int (&klo)[2],
                                            const int (&khi)[2], int lane) {
  constexpr int NT = 2 * KK;  // 8-key n-tiles of S
  float s[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      uint32_t b[4];  // chunks half*4 + 0..3 of keys nt*8 + 0..7: k-steps 2*half and 2*half + 1
      ldsm_x4(b, ks + swz(nt * 8 + (lane & 7), half * 4 + (lane >> 3)));
      mma_bf16(s[nt], qa[2 * half], b[0], b[1]);
      mma_bf16(s[nt], qa[2 * half + 1], b[2], b[3]);
    }
  }
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      float v = s[nt][c] * scale_log2;
      if (need_mask) {
        const int j = j0 + nt * 8 + (lane & 3) * 2 + (c & 1);
        if (j < klo[c >> 1] || j > khi[c >> 1]) v = -INFINITY;
      }
      s[nt][c] = v;
      mx[c >> 1] = fmaxf(mx[c >> 1], v);
    }
  }
  float mu[2], alpha[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(kFullMask, mx[h], 1));
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(kFullMask, mx[h], 2));
    const float mnew = fmaxf(st.m[h], mx[h]);
    mu[h] = mnew == -INFINITY ? 0.0f : mnew;  // a row that has seen no key yet: keep everything 0
    alpha[h] = exp2f(st.m[h] - mu[h]);
    st.m[h] = mnew;
    st.l[h] *= alpha[h];
  }
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      s[nt][c] = exp2f(s[nt][c] - mu[c >> 1]);
      st.l[c >> 1] += s[nt][c];
    }
  }
#pragma unroll
  for (int dn = 0; dn < 8; ++dn) {
    st.o[dn][0] *= alpha[0];
    st.o[dn][1] *= alpha[0];
    st.o[dn][2] *= alpha[1];
    st.o[dn][3] *= alpha[1];
  }
#pragma unroll
  for (int kk = 0; kk < KK; ++kk) {
    uint32_t pa[4], pl[4];
    p_operand<kSplitP>(pa, pl, s[2 * kk][0], s[2 * kk][1], s[2 * kk][2], s[2 * kk][3], s[2 * kk + 1][0],
                       s[2 * kk + 1][1], s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
    for (int dp = 0; dp < 4; ++dp) {
      uint32_t b[4];  // keys kk*16 + {0-7, 8-15} x dim chunks 2dp, 2dp+1, transposed
      ldsm_x4_trans(b, vs + swz(kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7), 2 * dp + (lane >> 4)));
      mma_bf16(st.o[2 * dp], pa, b[0], b[1]);
      mma_bf16(st.o[2 * dp + 1], pa, b[2], b[3]);
      if (kSplitP) {
        mma_bf16(st.o[2 * dp], pl, b[0], b[1]);
        mma_bf16(st.o[2 * dp + 1], pl, b[2], b[3]);
      }
    }
  }
}

__device__ __forceinline__ void quad_reduce_l(RowState& st) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    st.l[h] += __shfl_xor_sync(kFullMask, st.l[h], 1);
    st.l[h] += __shfl_xor_sync(kFullMask, st.l[h], 2);
  }
}

__global__ void __launch_bounds__(kDecodeWarps * kWarpSize) bf16_sdpa_sink_d64_decode(AttnArgs a) {
  static_assert(kHeadDim == 64 && kChunks == 8, "tiles assume head_dim 64: eight 16-byte chunks per row");
  static_assert(kDecodeKeys == 16 && kMaxGroup == 16, "one m16n8k16 row block of heads, one k-step of keys");
  // [warp][stage][K, V][16 keys x 8 chunks]; reused for the cross-warp merge after the key loop.
  __shared__ __align__(128) uint4 smem[kDecodeWarps][2][2][kDecodeKeys * kChunks];
  __shared__ float wts[kMaxGroup][kMaxSplits];
  __shared__ float inv_l[kMaxGroup];
  __shared__ int is_last;
  const AttentionParams& p = a.p;
  const int sp = blockIdx.x, kvh = blockIdx.y, t = blockIdx.z;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int G = a.G;
  const int s = p.batch.tok_seq[t];
  // Uniform over the blocks of this (token, KV head), so a skipped group leaves its counter at 0.
  if (!sequence_ok(a, s, threadIdx.x == 0 && sp == 0 && kvh == 0)) return;
  const int pos = p.batch.tok_pos[t];
  const KVRows kv = kv_rows(p, s, kvh);
  const int lo = p.window > 0 ? max(0, pos - p.window + 1) : 0;
  // This token's splits: splits_for_keys of its visible keys, at most the launch's (sized for the
  // longest context the step may see); the other blocks of the token leave at once. Whole 16-key
  // tiles per split (the last split may come out empty and then publishes only m = -inf).
  const int keys = pos - lo + 1;
  const int nsplit = min(a.splits, splits_for_keys(keys));
  if (sp >= nsplit) return;
  const int chunk = ceil_div(ceil_div(keys, nsplit), kDecodeKeys) * kDecodeKeys;
  const int kb = lo + sp * chunk;
  const int ke = min(kb + chunk, pos + 1);  // this split: keys [kb, ke), possibly empty
  const int ntiles = ke > kb ? ceil_div(ke - kb, kDecodeKeys) : 0;

  // The first tile's cached rows do not depend on the preceding kernel (it appends only this step's
  // positions, j >= kv.start, whose ring slots no visible cached key shares: sequence_ok): copy them
  // while that kernel finishes, then wait for it and copy this step's rows and q. The batch
  // descriptors read above come from before the preceding kernel.
  if (warp < ntiles)
    load_kv_tile<kDecodeKeys, 1>(smem[warp][0][0], smem[warp][0][1], kv, kb + warp * kDecodeKeys, ke, lane, kWarpSize);
  pdl_wait();
  // Let the next kernel (the attention output projection) launch and stream its weights into L2
  // now: its own pdl_wait still waits for all of this grid.
  pdl_launch_dependents();
  if (warp < ntiles)
    load_kv_tile<kDecodeKeys, 2>(smem[warp][0][0], smem[warp][0][1], kv, kb + warp * kDecodeKeys, ke, lane, kWarpSize);
  cp_async_commit();

  const bf16_t* q = static_cast<const bf16_t*>(p.q) + size_t(t) * p.ldq + size_t(kvh) * G * kHeadDim;
  const int r0 = lane >> 2, r1 = r0 + 8;
  uint32_t qa[4][4];
  load_q_frags(qa, r0 < G ? q + r0 * kHeadDim : nullptr, r1 < G ? q + r1 * kHeadDim : nullptr, lane);

  RowState st;
  st.init();
  const int klo[2] = {kb, kb}, khi[2] = {ke - 1, ke - 1};
  int stage = 0;
  for (int tile = warp; tile < ntiles; tile += kDecodeWarps) {
    const int next = tile + kDecodeWarps;
    if (next < ntiles)
      load_kv_tile<kDecodeKeys>(smem[warp][stage ^ 1][0], smem[warp][stage ^ 1][1], kv, kb + next * kDecodeKeys, ke,
                                lane, kWarpSize);
    cp_async_commit();
    cp_async_wait<1>();
    __syncwarp();
    const int j0 = kb + tile * kDecodeKeys;
    attend_tile<1, true>(st, smem[warp][stage][0], smem[warp][stage][1], qa, a.scale_log2, j0 + kDecodeKeys > ke, j0,
                         klo, khi, lane);
    __syncwarp();
    stage ^= 1;
  }
  cp_async_wait<0>();
  quad_reduce_l(st);

  // Merge the warps: state of (warp, row) to shared memory, then one thread per (head, dim).
  __syncthreads();
  float* cm = reinterpret_cast<float*>(smem);  // [warp][16]
  float* cl = cm + kDecodeWarps * 16;          // [warp][16]
  float* co = cl + kDecodeWarps * 16;          // [warp][16][64]
  static_assert(sizeof(smem) >= sizeof(float) * kDecodeWarps * 16 * (2 + kHeadDim), "merge area fits");
  if ((lane & 3) == 0) {
    cm[warp * 16 + r0] = st.m[0];
    cm[warp * 16 + r1] = st.m[1];
    cl[warp * 16 + r0] = st.l[0];
    cl[warp * 16 + r1] = st.l[1];
  }
#pragma unroll
  for (int dn = 0; dn < 8; ++dn) {
    const int col = dn * 8 + (lane & 3) * 2;
    *reinterpret_cast<float2*>(co + (warp * 16 + r0) * kHeadDim + col) = make_float2(st.o[dn][0], st.o[dn][1]);
    *reinterpret_cast<float2*>(co + (warp * 16 + r1) * kHeadDim + col) = make_float2(st.o[dn][2], st.o[dn][3]);
  }
  __syncthreads();

  __nv_bfloat16* out = static_cast<__nv_bfloat16*>(p.out) + size_t(t) * p.ldo;
  if (nsplit == 1) {
    for (int i = threadIdx.x; i < G * kHeadDim; i += blockDim.x) {
      const int g = i / kHeadDim, d = i % kHeadDim, h = kvh * G + g;
      const float sink = p.sinks[h] * kLog2e;
      float M = sink;
      for (int w = 0; w < kDecodeWarps; ++w) M = fmaxf(M, cm[w * 16 + g]);
      float L = exp2f(sink - M), O = 0.0f;
      for (int w = 0; w < kDecodeWarps; ++w) {
        const float f = exp2f(cm[w * 16 + g] - M);
        L += cl[w * 16 + g] * f;
        O += co[(w * 16 + g) * kHeadDim + d] * f;
      }
      out[h * kHeadDim + d] = __float2bfloat16_rn(O / L);
    }
    return;
  }

  // splits > 1: publish this split's partial, relative to its own max.
  const size_t e0 = (size_t(t) * p.n_q + size_t(kvh) * G) * a.splits;  // entry of (head g, split x): e0 + g*splits + x
  for (int i = threadIdx.x; i < G * kHeadDim; i += blockDim.x) {
    const int g = i / kHeadDim, d = i % kHeadDim;
    float M = -INFINITY;
    for (int w = 0; w < kDecodeWarps; ++w) M = fmaxf(M, cm[w * 16 + g]);
    const float mu = M == -INFINITY ? 0.0f : M;
    float L = 0.0f, O = 0.0f;
    for (int w = 0; w < kDecodeWarps; ++w) {
      const float f = exp2f(cm[w * 16 + g] - mu);
      L += cl[w * 16 + g] * f;
      O += co[(w * 16 + g) * kHeadDim + d] * f;
    }
    const size_t e = e0 + size_t(g) * a.splits + sp;
    if (ntiles > 0) a.part_o[e * kHeadDim + d] = O;  // an empty split has weight 0 in the merge
    if (d == 0) a.part_ml[e] = make_float2(M, L);
  }
  __threadfence();  // partials visible device-wide before this block is counted
  __syncthreads();
  unsigned* counter = a.counters + size_t(t) * p.n_kv + kvh;
  if (threadIdx.x == 0) is_last = atomicAdd(counter, 1u) == unsigned(nsplit - 1);
  __syncthreads();
  if (!is_last) return;
  __threadfence();

  // Last block of this (token, KV head): merge all splits and the sink. A warp per head computes
  // the merged max, the split weights exp2(m_x - M) / L and 1/L; then a thread per (head, dim).
  for (int g = warp; g < G; g += kDecodeWarps) {
    const float sink = p.sinks[kvh * G + g] * kLog2e;
    const float2* ml = a.part_ml + e0 + size_t(g) * a.splits;
    float M = sink;
    for (int x = lane; x < nsplit; x += kWarpSize) M = fmaxf(M, __ldcg(ml + x).x);
    M = warp_max(M);
    float L = 0.0f;
    for (int x = lane; x < nsplit; x += kWarpSize) {
      const float2 v = __ldcg(ml + x);
      const float f = exp2f(v.x - M);
      wts[g][x] = f;
      L += v.y * f;
    }
    L = warp_sum(L) + exp2f(sink - M);
    if (lane == 0) inv_l[g] = 1.0f / L;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * kHeadDim; i += blockDim.x) {
    const int g = i / kHeadDim, d = i % kHeadDim;
    const float* po = a.part_o + (e0 + size_t(g) * a.splits) * kHeadDim + d;
    float O = 0.0f;
    for (int x = 0; x < nsplit; ++x)
      if (wts[g][x] != 0.0f) O += __ldcg(po + size_t(x) * kHeadDim) * wts[g][x];
    out[(kvh * G + g) * kHeadDim + d] = __float2bfloat16_rn(O * inv_l[g]);
  }
  if (threadIdx.x == 0) *counter = 0u;  // ready for the next launch (and graph replay)
}

// Which (sequence, row tile) block `b` works on: tiles are numbered sequence by sequence, and within
// a sequence from the last tile (most keys) to the first, so the longest blocks start first.
// Run by one warp; returns seq -1 for a block beyond the last tile.
__device__ __forceinline__ int2 find_prefill_tile(const BatchDesc& batch, int G, int b, int lane) {
  int base = 0;
  for (int s0 = 0; s0 < batch.S; s0 += kWarpSize) {
    const int s = s0 + lane;
    const int nt = s < batch.S ? ceil_div((batch.seq_tok0[s + 1] - batch.seq_tok0[s]) * G, kBM) : 0;
    int incl = nt;
#pragma unroll
    for (int o = 1; o < kWarpSize; o <<= 1) {
      const int v = __shfl_up_sync(kFullMask, incl, o);
      if (lane >= o) incl += v;
    }
    const int local = b - base;
    const unsigned hit = __ballot_sync(kFullMask, s < batch.S && local >= incl - nt && local < incl);
    if (hit) {
      const int src = __ffs(hit) - 1;
      return make_int2(s0 + src, __shfl_sync(kFullMask, incl, src) - 1 - local);
    }
    base += __shfl_sync(kFullMask, incl, kWarpSize - 1);
  }
  return make_int2(-1, 0);
}

__global__ void __launch_bounds__(kPrefillWarps * kWarpSize) bf16_sdpa_sink_d64_prefill(AttnArgs a) {
  static_assert(kHeadDim == 64 && kChunks == 8, "tiles assume head_dim 64: eight 16-byte chunks per row");
  static_assert(kBM == 16 * kPrefillWarps && kBN % 16 == 0, "a warp owns one m16 row block; keys in k16 steps");
  __shared__ __align__(128) uint4 smem[2][2][kBN * kChunks];  // [stage][K, V][64 keys x 8 chunks] = 32 KB
  __shared__ int2 tile_of_block;
  const AttentionParams& p = a.p;
  const int kvh = blockIdx.y, G = a.G;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  if (warp == 0) {
    const int2 f = find_prefill_tile(p.batch, G, blockIdx.x, lane);
    if (lane == 0) tile_of_block = f;
  }
  __syncthreads();
  const int s = tile_of_block.x;
  if (s < 0 || !sequence_ok(a, s, threadIdx.x == 0 && kvh == 0)) return;
  const int tok0 = p.batch.seq_tok0[s];
  const int R = (p.batch.seq_tok0[s + 1] - tok0) * G;  // rows of this sequence
  const int row0 = tile_of_block.y * kBM;
  const int start = p.batch.seq_start[s];
  const KVRows kv = kv_rows(p, s, kvh);
  auto lo_of = [&](int pos) { return p.window > 0 ? max(0, pos - p.window + 1) : 0; };
  // Keys any row of the block can see: [kb, ke).
  const int kb = lo_of(start + row0 / G);
  const int ke = start + (min(row0 + kBM, R) - 1) / G + 1;
  const int ntiles = ceil_div(ke - kb, kBN);

  // This thread's rows (lane/4 and lane/4 + 8 of the warp's 16) and their visible key ranges.
  const int wrow = row0 + warp * 16;
  const bool warp_active = wrow < R;
  int klo[2], khi[2];
  const bf16_t* qrow[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = wrow + (lane >> 2) + 8 * h;
    const int i = r / G, pos = start + i;
    klo[h] = lo_of(pos);
    khi[h] = r < R ? pos : -1;  // rows past the sequence see nothing
    qrow[h] = r < R ? static_cast<const bf16_t*>(p.q) + size_t(tok0 + i) * p.ldq + size_t(kvh * G + r % G) * kHeadDim
                    : nullptr;
  }
  // The warp's union of ranges [w_lo_min, w_pos_max] and intersection [w_lo_max, w_pos_min].
  const int wlast = min(wrow + 15, R - 1);
  const int w_pos_min = start + wrow / G, w_pos_max = start + wlast / G;
  const int w_lo_min = lo_of(w_pos_min), w_lo_max = lo_of(w_pos_max);

  uint32_t qa[4][4];
  load_q_frags(qa, qrow[0], qrow[1], lane);
  RowState st;
  st.init();

  load_kv_tile<kBN>(smem[0][0], smem[0][1], kv, kb, ke, threadIdx.x, blockDim.x);
  cp_async_commit();
  for (int it = 0; it < ntiles; ++it) {
    const int stage = it & 1;
    if (it + 1 < ntiles)
      load_kv_tile<kBN>(smem[stage ^ 1][0], smem[stage ^ 1][1], kv, kb + (it + 1) * kBN, ke, threadIdx.x, blockDim.x);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int j0 = kb + it * kBN;
    if (warp_active && j0 <= w_pos_max && j0 + kBN - 1 >= w_lo_min) {
      const bool need_mask = j0 + kBN - 1 > w_pos_min || j0 < w_lo_max;
      attend_tile<kBN / 16, false>(st, smem[stage][0], smem[stage][1], qa, a.scale_log2, need_mask, j0, klo, khi, lane);
    }
    __syncthreads();  // the next iteration's copy overwrites the stage just read
  }
  cp_async_wait<0>();
  quad_reduce_l(st);

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = wrow + (lane >> 2) + 8 * h;
    if (r >= R) continue;
    const int head = kvh * G + r % G;
    const float sink = p.sinks[head] * kLog2e;
    const float M = fmaxf(st.m[h], sink);
    const float f = exp2f(st.m[h] - M);
    const float scale = f / (st.l[h] * f + exp2f(sink - M));
    uint32_t* out = reinterpret_cast<uint32_t*>(static_cast<__nv_bfloat16*>(p.out) + size_t(tok0 + r / G) * p.ldo +
                                                size_t(head) * kHeadDim + (lane & 3) * 2);
#pragma unroll
    for (int dn = 0; dn < 8; ++dn) out[dn * 4] = pack_bf16x2(st.o[dn][2 * h] * scale, st.o[dn][2 * h + 1] * scale);
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// launchers
// ------------------------------------------------------------------------------------------------

size_t attention_workspace_bytes(int max_tokens, int n_q, int n_kv, int num_sms) {
  if (max_tokens <= 0 || n_q <= 0 || n_kv <= 0) return 0;
  size_t need = 0;
  const int last = max_tokens < decode_target_blocks(num_sms) ? max_tokens : decode_target_blocks(num_sms);
  for (int T = 1; T <= last; ++T) {
    const size_t b = decode_scratch_bytes(T, n_q, decode_splits(T, n_kv, 1ll << 40, num_sms), num_sms);
    need = b > need ? b : need;
  }
  return need;
}

size_t attention_step_workspace_bytes(const AttentionParams& p, int num_sms) {
  if (p.batch.T <= 0 || p.n_q <= 0 || p.n_kv <= 0 || !use_decode_kernel(p.batch)) return 0;
  return decode_scratch_bytes(p.batch.T, p.n_q, step_splits(p, num_sms), num_sms);
}

// Floors (H100: ~3 TB/s, ~330 dense bf16 TFLOP/s for mma.sync):
//  * decode reads each visible K/V row once per (token, KV head): 256 B per key per KV head. Batch-1
//    at 8K context over 8 KV heads is 16 MB per full layer, ~5.6 us; sliding layers (128 keys)
//    ~0.1 MB and launch latency. The grid is ~3 blocks per SM (split-K) whatever the batch. Tensor
//    work per 16-key warp tile (4 KB of K/V): 8 mma for S, 16 for the hi + lo P.V, ~24 flop/B against
//    the ~110 flop/B at which mma.sync would become the limit.
//  * prefill is compute bound: 4 * 64 flop per (query head, visible key); 2048 causal tokens x 64
//    heads is 2048^2/2 * 64 * 256 = 34 GFLOP per full layer, ~0.1 ms at 330 TFLOP/s (sliding
//    layers: 128 keys per query, 4.3 GFLOP).
Status launch_attention(const AttentionParams& p, const AttentionWorkspace& ws, cudaStream_t stream) {
  const BatchDesc& b = p.batch;
  if (p.act_type != DType::BF16)
    return make_error(StatusCode::Unsupported,
                      std::string("attention: CUDA takes BF16 q/k/v/out, not ") + dtype_name(p.act_type));
  if (b.T < 0 || b.S < 0) return make_error(StatusCode::InvalidArgument, "attention: negative T or S");
  if (b.T == 0) return Status::Ok();
  if (b.S == 0) return make_error(StatusCode::InvalidArgument, "attention: T > 0 tokens but S = 0 sequences");
  if (p.n_q <= 0 || p.n_kv <= 0 || p.n_q % p.n_kv != 0 || p.n_q / p.n_kv > kMaxGroup)
    return make_error(StatusCode::InvalidArgument,
                      "attention: CUDA needs n_q a multiple of n_kv with n_q/n_kv <= 16 (got n_q=" +
                          std::to_string(p.n_q) + ", n_kv=" + std::to_string(p.n_kv) + ")");
  if (p.cache.n_kv != p.n_kv || p.cache.len <= 0 || p.cache.slots <= 0 || !p.cache.k || !p.cache.v)
    return make_error(StatusCode::InvalidArgument,
                      "attention: the KV cache view must be set, with n_kv = " + std::to_string(p.n_kv) +
                          " and len > 0 (got n_kv=" + std::to_string(p.cache.n_kv) +
                          ", len=" + std::to_string(p.cache.len) + ")");
  if (!b.tok_pos || !b.tok_seq || !b.seq_slot || !b.seq_start || !b.seq_tok0 || !p.q || !p.k || !p.v || !p.out ||
      !p.sinks)
    return make_error(StatusCode::InvalidArgument, "attention: null pointer");
  if (p.ldq < p.n_q * kHeadDim || p.ldo < p.n_q * kHeadDim || p.ldkv < p.n_kv * kHeadDim || p.ldq % 2 || p.ldo % 2 ||
      p.ldkv % 8)
    return make_error(StatusCode::InvalidArgument,
                      "attention: need even ldq, ldo >= n_q*64 and ldkv >= n_kv*64 a multiple of 8 (got ldq=" +
                          std::to_string(p.ldq) + ", ldo=" + std::to_string(p.ldo) +
                          ", ldkv=" + std::to_string(p.ldkv) + ")");
  if (!aligned_to(p.q, 4) || !aligned_to(p.out, 4) || !aligned_to(p.k, 16) || !aligned_to(p.v, 16) ||
      !aligned_to(p.cache.k, 16) || !aligned_to(p.cache.v, 16))
    return make_error(StatusCode::InvalidArgument,
                      "attention: q/out must be 4-byte and k/v/cache 16-byte aligned");
  if (p.window < 0) return make_error(StatusCode::InvalidArgument, "attention: negative window");
  if (p.cache.type != DType::BF16)
    return make_error(StatusCode::Unsupported, std::string("attention: the CUDA KV cache is BF16, got ") + dtype_name(p.cache.type));

  AttnArgs a{};
  a.p = p;
  a.G = p.n_q / p.n_kv;
  a.splits = 1;
  a.scale_log2 = p.scale * kLog2e;
  a.errors = ws.errors;
  if (use_decode_kernel(b)) {
    a.splits = step_splits(p, ws.num_sms);
    const size_t need = decode_scratch_bytes(b.T, p.n_q, a.splits, ws.num_sms);
    if (need > ws.bytes || (need > 0 && !ws.ptr))
      return make_error(StatusCode::InvalidArgument,
                        "attention: decode with " + std::to_string(b.T) + " tokens needs " + std::to_string(need) +
                            " bytes of split-K scratch but the workspace has " + std::to_string(ws.bytes) +
                            "; size it with attention_workspace_bytes (Backend::reserve)");
    if (a.splits > 1) {
      char* base = static_cast<char*>(ws.ptr);
      const size_t entries = size_t(b.T) * p.n_q * a.splits;
      a.counters = reinterpret_cast<unsigned*>(base);
      const size_t o_bytes = align256(entries * kHeadDim * sizeof(float));
      a.part_o = reinterpret_cast<float*>(base + counters_bytes(ws.num_sms));
      a.part_ml = reinterpret_cast<float2*>(base + counters_bytes(ws.num_sms) + o_bytes);
    }
    return launch_pdl(bf16_sdpa_sink_d64_decode, dim3(a.splits, p.n_kv, b.T), dim3(kDecodeWarps * kWarpSize), 0,
                      ws.pdl, stream, "bf16_sdpa_sink_d64_decode", a);
  }
  const int tiles = ceil_div(b.T * a.G, kBM) + b.S;  // >= the sum over sequences of their row tiles
  bf16_sdpa_sink_d64_prefill<<<dim3(tiles, p.n_kv), kPrefillWarps * kWarpSize, 0, stream>>>(a);
  GPTOSS_CUDA_LAUNCH_CHECK("bf16_sdpa_sink_d64_prefill");
  return Status::Ok();
}

}  // namespace gptoss
