// Sampling one token per sequence from f32 logits [S][V], exactly as SamplingConfig in csrc/ops.h:
//   greedy (temperature == 0): argmax, ties to the lowest id;
//   otherwise, with e_i = exp((x_i - max) / temperature) (p_i = e_i / sum e):
//     top_k > 0 keeps logits >= the k-th largest logit (ties kept);
//     top_p < 1 then keeps logits >= x*, the largest kept logit whose kept mass at or above it
//               reaches top_p * (mass kept by top_k) (the descending-cumulative-mass threshold);
//     min_p > 0 then keeps e_i >= min_p (p_i >= min_p * max p, since the max has e = 1);
//   the token is the first id, in id order, whose running kept mass exceeds u * (total kept mass),
//   u = philox_uniform(seed, counter). logprob = x_token - logsumexp(x) of the raw logits.
// Only token ids and logprobs leave the GPU; nothing is sorted.
//
// Exactness without a sort: thresholds are found by radix search over an order-preserving u32 key
// of the logit (3 digits of 11/11/10 bits; each digit is one pass that histograms the keys that
// match the prefix found so far). Masses are fixed point, e * 2^40 rounded to u64: integer sums are
// independent of summation order, so the histograms (built with atomics) and the draw are
// deterministic and the two scans of the draw agree exactly. The quantum 2^-40 of the max token's
// mass is far below f32 resolution of any p that matters (a token needs p ~ 1e-12 to be affected).
//
// Grid: (blocks per sequence, S); a block owns whole 1024-logit tiles. Each pass ends with the
// last block of a sequence to arrive (an arrival counter in the workspace) finishing that pass's
// per-sequence step, so there are no extra launches; launches: stats, 3 top-k digits, 3 top-p
// digits, draw. A pass a sequence does not need returns at once (all its blocks read the same
// state), so greedy decoding costs one real pass.
//
// Workspace: one SeqScratch per sequence (index = sequence in the step, capacity = max_seqs).
#include <climits>
#include <cmath>

#include "cuda_check.cuh"
#include "device_common.cuh"
#include "philox.h"
#include "sampling.cuh"

namespace gptoss {
namespace {

constexpr int kSampleThreads = 256;
constexpr int kTile = 1024;                          // logits per tile: 4 per thread
constexpr int kMaxTiles = kSampleMaxVocab / kTile;   // 256: one per thread in the final scans
constexpr int kBins = 2048;                          // 11-bit digits
constexpr int kBinsPerThread = kBins / kSampleThreads;
constexpr float kMassOne = 1099511627776.0f;         // 2^40: fixed-point mass of e = 1

enum : uint32_t { kDone = 1u, kTopK = 2u, kTopP = 4u };

struct SampleState {
  float max_logit;
  float lse;
  int32_t argmax;
  uint32_t phase;      // kDone | kTopK | kTopP
  uint32_t prefix;     // key bits fixed so far by the running radix search
  uint32_t k_left;     // top-k: rank still to find below the prefix
  uint32_t thr_key;    // keep keys >= thr_key
  uint32_t counter;    // blocks of this sequence done with the current pass
  unsigned long long mass_above;  // mass of the searched keys above the prefix's bin
  unsigned long long kept_mass;   // mass kept by top-k (the top-p reference)
};

struct StatsPartial {
  float m, sum;
  int32_t arg, pad;
};

struct SeqScratch {
  SampleState st;
  StatsPartial stats[kMaxTiles];
  uint32_t hist_cnt[kBins];
  unsigned long long hist_mass[kBins];
  unsigned long long tile_mass[kMaxTiles];
};

struct SampleArgs {
  SampleParams p;
  SeqScratch* ws;
  DeviceErrorRecord* errors;
  int tiles;            // ceil(V / kTile)
  int tiles_per_block;
};

// ------------------------------------------------------------------------------------------------
// kernels
// ------------------------------------------------------------------------------------------------

// Monotone map float -> u32 (larger float, larger key); -0 is folded onto +0 so equal logits have
// equal keys, and NaN ranks as -inf (as in the stats pass, which skips it).
__device__ __forceinline__ uint32_t order_key(float x) {
  if (x == 0.0f) x = 0.0f;
  if (x != x) x = -INFINITY;
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// e = exp((x - max) / T) in [0, 1] as fixed point; NaN counts as 0. Written with explicit rounding
// so every call site computes bit-identical values.
__device__ __forceinline__ float rel_prob(float x, float m, float inv_t) {
  return expf(__fmul_rn(__fsub_rn(x, m), inv_t));
}
__device__ __forceinline__ unsigned long long fixed_mass(float e) {
  return e > 0.0f ? __float2ull_rn(e * kMassOne) : 0ull;
}

struct Range {
  int begin, end;
};
__device__ __forceinline__ Range block_range(const SampleArgs& a) {
  const int b = blockIdx.x * a.tiles_per_block * kTile;
  return Range{b, min(a.p.V, b + a.tiles_per_block * kTile)};
}

// Marks this block done with the pass; true for the last block of the sequence. Callers have
// written their contribution; the fence makes it visible before the count.
__device__ __forceinline__ bool last_block_of_seq(SampleState* st, int* flag) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) *flag = atomicAdd(&st->counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (*flag) __threadfence();
  return *flag;
}

template <typename T>
__device__ __forceinline__ T warp_inclusive_scan(T v, int lane) {
#pragma unroll
  for (int o = 1; o < kWarpSize; o <<= 1) {
    const T n = __shfl_up_sync(kFullMask, v, o);
    if (lane >= o) v += n;
  }
  return v;
}

// Inclusive prefix of v over threads 0..blockDim-1; *total gets the block sum. `red` holds 32 T of
// shared memory. Integer types only (the result is exact, whatever the order).
template <typename T>
__device__ __forceinline__ T block_inclusive_scan(T v, T* red, T* total) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  v = warp_inclusive_scan(v, lane);
  __syncthreads();  // `red` may still be read by a previous call
  if (lane == kWarpSize - 1) red[warp] = v;
  __syncthreads();
  T before = 0, all = 0;
  for (int w = 0; w < int(blockDim.x / kWarpSize); ++w) {
    if (w < warp) before += red[w];
    all += red[w];
  }
  *total = all;
  return v + before;
}

__device__ __forceinline__ unsigned long long block_sum_u64(unsigned long long v, unsigned long long* red) {
  unsigned long long total;
  block_inclusive_scan(v, red, &total);
  return total;
}

// (max, sum of exp(x - max), argmax) merge; ties of the max go to the lower id.
struct MaxSum {
  float m, s;
  int arg;
};
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  if (b.m > a.m || (b.m == a.m && b.arg < a.arg)) {
    const MaxSum t = a;
    a = b;
    b = t;
  }
  a.s += b.m == a.m ? b.s : b.s * expf(b.m - a.m);
  return a;
}
__device__ __forceinline__ MaxSum block_merge(MaxSum v, MaxSum* red) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) {
    MaxSum n;
    n.m = __shfl_xor_sync(kFullMask, v.m, o);
    n.s = __shfl_xor_sync(kFullMask, v.s, o);
    n.arg = __shfl_xor_sync(kFullMask, v.arg, o);
    v = merge(v, n);
  }
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  MaxSum r = red[0];
  for (int w = 1; w < int(blockDim.x / kWarpSize); ++w) r = merge(r, red[w]);
  return r;
}

// Pass 1: max, argmax and the log-sum-exp of the raw logits. Greedy sequences finish here.
__global__ void __launch_bounds__(kSampleThreads) f32_sample_stats(SampleArgs a) {
  __shared__ MaxSum red[kSampleThreads / kWarpSize];
  __shared__ int last;
  const int s = blockIdx.y;
  const float* x = a.p.logits + size_t(s) * a.p.ldl;
  SeqScratch& w = a.ws[s];
  const Range r = block_range(a);
  MaxSum v{-INFINITY, 0.0f, r.begin};
  for (int i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) {
    const float xi = x[i];
    if (xi > v.m) {
      v.s = v.s * expf(v.m - xi) + 1.0f;
      v.m = xi;
      v.arg = i;
    } else if (xi > -INFINITY) {
      v.s += xi == v.m ? 1.0f : expf(xi - v.m);
    }
  }
  v = block_merge(v, red);
  if (threadIdx.x == 0) w.stats[blockIdx.x] = StatsPartial{v.m, v.s, v.arg, 0};
  if (!last_block_of_seq(&w.st, &last)) return;

  MaxSum t{-INFINITY, 0.0f, INT_MAX};
  if (threadIdx.x < gridDim.x) {
    const StatsPartial* sp = &w.stats[threadIdx.x];
    t = MaxSum{__ldcg(&sp->m), __ldcg(&sp->sum), __ldcg(&sp->arg)};
  }
  t = block_merge(t, red);
  if (threadIdx.x != 0) return;
  const SamplingConfig cfg = a.p.cfg[s];
  SampleState& st = w.st;
  st.max_logit = t.m;
  st.lse = t.m + logf(t.s);
  st.argmax = t.arg;
  st.prefix = 0;
  st.thr_key = 0;
  st.mass_above = 0;
  st.kept_mass = 0;
  st.k_left = 0;
  // Settings the engine validated already; a bad one from elsewhere is reported and sampled greedily.
  const int bad = !(cfg.temperature >= 0.0f) ? 0 : cfg.top_k < 0 ? 1 : !(cfg.top_p > 0.0f && cfg.top_p <= 1.0f) ? 2
                  : !(cfg.min_p >= 0.0f && cfg.min_p <= 1.0f) ? 3 : -1;
  if (bad >= 0) {
    const float v = bad == 0 ? cfg.temperature : bad == 2 ? cfg.top_p : cfg.min_p;
    record_device_error(a.errors, kDevErrSamplingSetting, s, bad, bad == 1 ? cfg.top_k : __float_as_int(v));
  }
  if (bad >= 0 || !(cfg.temperature > 0.0f)) {
    st.phase = kDone;
    a.p.out_token[s] = t.arg;
    a.p.out_logprob[s] = t.m - st.lse;
  } else {
    const bool topk = cfg.top_k > 0 && cfg.top_k < a.p.V;
    st.phase = (topk ? kTopK : 0u) | (cfg.top_p < 1.0f ? kTopP : 0u);
    st.k_left = topk ? uint32_t(cfg.top_k) : 0u;
  }
  st.counter = 0;
}

// Passes 2-7: one radix digit of the top-k (pass 0..2) or top-p (pass 3..5) threshold search.
__global__ void __launch_bounds__(kSampleThreads) f32_sample_radix(SampleArgs a, int pass) {
  static_assert(kBins % kSampleThreads == 0 && kBins == 2048, "11-bit digits, bins split evenly among threads");
  __shared__ uint32_t cnt[kBins];
  __shared__ unsigned long long mass[kBins];
  __shared__ unsigned long long red64[kWarpSize];
  __shared__ uint32_t red32[kWarpSize];
  __shared__ int last, chosen;
  const int s = blockIdx.y;
  SeqScratch& w = a.ws[s];
  const SampleState st = w.st;
  const bool topk_pass = pass < 3;
  const int digit = pass % 3;
  if (st.phase & kDone) return;
  if (topk_pass && digit > 0 && !(st.phase & kTopK)) return;
  if (topk_pass && digit == 0 && !(st.phase & (kTopK | kTopP))) return;  // with top-k off, pass 0
  if (!topk_pass && !(st.phase & kTopP)) return;                         // still gives top-p its total

  const int shift = digit == 0 ? 21 : digit == 1 ? 10 : 0;
  const int nbins = digit == 2 ? 1024 : 2048;
  const uint32_t fixed_mask = digit == 0 ? 0u : ~0u << (shift + (digit == 2 ? 10 : 11));
  const uint32_t floor_key = topk_pass ? 0u : st.thr_key;  // top-p searches what top-k kept
  const SamplingConfig cfg = a.p.cfg[s];
  const float inv_t = 1.0f / cfg.temperature;
  const float* x = a.p.logits + size_t(s) * a.p.ldl;

  for (int i = threadIdx.x; i < kBins; i += blockDim.x) {
    cnt[i] = 0;
    mass[i] = 0;
  }
  __syncthreads();
  const Range r = block_range(a);
  for (int i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) {
    const float xi = x[i];
    const uint32_t key = order_key(xi);
    if ((key & fixed_mask) != st.prefix || key < floor_key) continue;
    const int bin = (key >> shift) & (nbins - 1);
    atomicAdd(&cnt[bin], 1u);
    const unsigned long long m = fixed_mass(rel_prob(xi, st.max_logit, inv_t));
    if (m) atomicAdd(&mass[bin], m);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nbins; i += blockDim.x) {
    if (cnt[i]) {
      atomicAdd(&w.hist_cnt[i], cnt[i]);
      atomicAdd(&w.hist_mass[i], mass[i]);
    }
  }
  if (!last_block_of_seq(&w.st, &last)) return;

  // Last block of the sequence. Thread t owns bins [8t, 8t + 8); "above" is the count and mass of
  // the matching keys in higher bins.
  uint32_t c[kBinsPerThread];
  unsigned long long m[kBinsPerThread];
  uint32_t tc = 0;
  unsigned long long tm = 0;
#pragma unroll
  for (int j = 0; j < kBinsPerThread; ++j) {
    const int bin = threadIdx.x * kBinsPerThread + j;
    c[j] = __ldcg(&w.hist_cnt[bin]);
    m[j] = __ldcg(&w.hist_mass[bin]);
    w.hist_cnt[bin] = 0;  // zero again for the next pass
    w.hist_mass[bin] = 0;
    tc += c[j];
    tm += m[j];
  }
  // Bins grow with the thread index, so "above this thread" is the total minus the inclusive scan.
  uint32_t total_c;
  unsigned long long total_m;
  uint32_t above_c = block_inclusive_scan(tc, red32, &total_c);
  unsigned long long above_m = block_inclusive_scan(tm, red64, &total_m);
  above_c = total_c - above_c;
  above_m = total_m - above_m;
  if (threadIdx.x == 0) w.st.counter = 0;

  if (topk_pass && !(st.phase & kTopK)) {  // top-k off: pass 0 only measured the total mass
    if (threadIdx.x == 0) {
      w.st.kept_mass = total_m;
      w.st.thr_key = 0;
    }
    return;
  }

  // The bin. top-k: above < k_left <= above + count (exactly one bin). top-p: the highest
  // non-empty bin whose cumulative mass from the top reaches the target; if rounding of the target
  // leaves none, the lowest non-empty bin (whose cumulative mass is everything searched).
  // score >= kBins: a bin meeting the condition (max = highest); below: a fallback (max = lowest).
  const double target = double(cfg.top_p) * double(st.kept_mass);
  int score = -1;
  uint32_t my_above_c = 0;
  unsigned long long my_above_m = 0, my_m = 0;
#pragma unroll
  for (int j = kBinsPerThread - 1; j >= 0; --j) {
    const int bin = threadIdx.x * kBinsPerThread + j;
    int sc = -1;
    if (topk_pass) {
      if (above_c < st.k_left && above_c + c[j] >= st.k_left) sc = kBins + bin;
    } else if (c[j] > 0) {
      sc = double(st.mass_above + above_m + m[j]) >= target ? kBins + bin : kBins - 1 - bin;
    }
    if (sc > score) {
      score = sc;
      my_above_c = above_c;
      my_above_m = above_m;
      my_m = m[j];
    }
    above_c += c[j];
    above_m += m[j];
  }
  if (threadIdx.x == 0) chosen = -1;
  __syncthreads();
  atomicMax(&chosen, score);
  __syncthreads();
  if (chosen < 0 || score != chosen) return;  // only the owner of the chosen bin goes on
  const int bin = chosen >= kBins ? chosen - kBins : kBins - 1 - chosen;
  SampleState& out = w.st;
  out.prefix = st.prefix | (uint32_t(bin) << shift);
  out.mass_above = st.mass_above + my_above_m;
  if (topk_pass) out.k_left = st.k_left - my_above_c;
  if (digit == 2) {
    out.thr_key = out.prefix;
    if (topk_pass) {  // the top-k set is every key >= the k-th largest: its mass is the top-p base
      out.kept_mass = out.mass_above + my_m;
      out.prefix = 0;
      out.mass_above = 0;
    }
  }
}

// Pass 8: kept mass per 1024-logit tile, then (last block) the inverse-CDF draw in id order.
__global__ void __launch_bounds__(kSampleThreads) f32_sample_draw(SampleArgs a) {
  static_assert(kTile == 4 * kSampleThreads && kMaxTiles == kSampleThreads, "4 logits per thread, 1 tile per thread");
  __shared__ unsigned long long red64[kWarpSize];
  __shared__ int last, first;
  const int s = blockIdx.y;
  SeqScratch& w = a.ws[s];
  const SampleState st = w.st;
  if (st.phase & kDone) return;
  const SamplingConfig cfg = a.p.cfg[s];
  const float inv_t = 1.0f / cfg.temperature;
  const float* x = a.p.logits + size_t(s) * a.p.ldl;
  auto kept_mass = [&](int i) -> unsigned long long {
    if (i >= a.p.V) return 0ull;
    const float xi = x[i];
    if (order_key(xi) < st.thr_key) return 0ull;
    const float e = rel_prob(xi, st.max_logit, inv_t);
    if (cfg.min_p > 0.0f && !(e >= cfg.min_p)) return 0ull;
    return fixed_mass(e);
  };

  const int t0 = blockIdx.x * a.tiles_per_block, t1 = min(a.tiles, t0 + a.tiles_per_block);
  for (int tile = t0; tile < t1; ++tile) {
    unsigned long long v = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) v += kept_mass(tile * kTile + k * kSampleThreads + threadIdx.x);
    v = block_sum_u64(v, red64);
    if (threadIdx.x == 0) w.tile_mass[tile] = v;
  }
  if (!last_block_of_seq(&w.st, &last)) return;

  // u * total, exactly: u = bits / 2^24, so target = floor(bits * total / 2^24) (total < 2^58).
  const unsigned long long tile_m = threadIdx.x < a.tiles ? __ldcg(&w.tile_mass[threadIdx.x]) : 0ull;
  unsigned long long total;
  const unsigned long long incl = block_inclusive_scan(tile_m, red64, &total);
  __shared__ unsigned long long base_s;
  if (threadIdx.x == 0) {
    first = INT_MAX;
    w.st.counter = 0;
  }
  __syncthreads();
  const unsigned long long bits = philox4x32_10(cfg.seed, uint64_t(a.p.counter[s])) >> 8;
  const unsigned long long target = (__umul64hi(bits, total) << 40) | ((bits * total) >> 24);
  // The tile where the running mass first exceeds the target, then the logit inside it.
  if (tile_m > 0 && incl > target) atomicMin(&first, int(threadIdx.x));
  __syncthreads();
  const int tile = first;
  if (tile == INT_MAX) {  // nothing kept (cannot happen: the max logit always is); fall back to argmax
    if (threadIdx.x == 0) {
      a.p.out_token[s] = st.argmax;
      a.p.out_logprob[s] = st.max_logit - st.lse;
    }
    return;
  }
  if (threadIdx.x == tile) base_s = incl - tile_m;
  __syncthreads();
  unsigned long long mm[4], mine = 0;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    mm[k] = kept_mass(tile * kTile + 4 * threadIdx.x + k);
    mine += mm[k];
  }
  unsigned long long tile_total;
  unsigned long long run = base_s + block_inclusive_scan(mine, red64, &tile_total) - mine;
  __syncthreads();
  if (threadIdx.x == 0) first = INT_MAX;
  __syncthreads();
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    run += mm[k];
    if (mm[k] > 0 && run > target) {
      atomicMin(&first, tile * kTile + 4 * threadIdx.x + k);
      break;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int tok = first == INT_MAX ? st.argmax : first;
    a.p.out_token[s] = tok;
    a.p.out_logprob[s] = x[tok] - st.lse;
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// launchers
// ------------------------------------------------------------------------------------------------

size_t sample_workspace_bytes(int max_seqs) { return max_seqs > 0 ? sizeof(SeqScratch) * size_t(max_seqs) : 0; }

// Floor: each pass reads S*V*4 bytes (804 KB per sequence at V = 201088), mostly from L2 right after
// the unembedding wrote it: greedy is one pass (~0.3 us of bandwidth per sequence, so launch
// latency, ~3 us for the 2 launches that do work); full top-k + top-p sampling is 8 passes.
// Blocks per sequence: ~2 per SM over the whole batch, in whole 1024-logit tiles.
Status launch_sample(const SampleParams& p, const SampleWorkspace& ws, cudaStream_t stream) {
  if (p.S < 0 || p.V < 1 || p.V > kSampleMaxVocab)
    return make_error(StatusCode::InvalidArgument, "sample: need S >= 0 and 1 <= V <= " +
                                                       std::to_string(kSampleMaxVocab) + " on CUDA (got S=" +
                                                       std::to_string(p.S) + ", V=" + std::to_string(p.V) + ")");
  if (p.S == 0) return Status::Ok();
  if (!p.logits || !p.cfg || !p.counter || !p.out_token || !p.out_logprob)
    return make_error(StatusCode::InvalidArgument, "sample: null pointer");
  if (p.ldl < p.V) return make_error(StatusCode::InvalidArgument, "sample: ldl < V");
  if (!ws.ptr || ws.bytes < sample_workspace_bytes(p.S))
    return make_error(StatusCode::InvalidArgument,
                      "sample: " + std::to_string(p.S) + " sequences need " +
                          std::to_string(sample_workspace_bytes(p.S)) +
                          " bytes of workspace but it has " + std::to_string(ws.bytes) +
                          "; size it with sample_workspace_bytes (Backend::reserve)");
  constexpr int kMaxGridY = 65535;
  if (p.S > kMaxGridY) return make_error(StatusCode::InvalidArgument, "sample: more than 65535 sequences");
  SampleArgs a;
  a.p = p;
  a.ws = static_cast<SeqScratch*>(ws.ptr);
  a.errors = ws.errors;
  a.tiles = ceil_div(p.V, kTile);
  const int want = ceil_div(2 * (ws.num_sms > 0 ? ws.num_sms : 1), p.S);
  const int nb = want < a.tiles ? want : a.tiles;
  a.tiles_per_block = ceil_div(a.tiles, nb);
  const dim3 grid(ceil_div(a.tiles, a.tiles_per_block), p.S);
  f32_sample_stats<<<grid, kSampleThreads, 0, stream>>>(a);
  GPTOSS_CUDA_LAUNCH_CHECK("f32_sample_stats");
  // All greedy (known on the host): the stats pass wrote every token; the other seven launches would
  // return at once, each still a launch in the step (~1-2 us apiece in a replayed decode graph).
  if (p.greedy) return Status::Ok();
  for (int pass = 0; pass < 6; ++pass) {
    f32_sample_radix<<<grid, kSampleThreads, 0, stream>>>(a, pass);
    GPTOSS_CUDA_LAUNCH_CHECK("f32_sample_radix");
  }
  f32_sample_draw<<<grid, kSampleThreads, 0, stream>>>(a);
  GPTOSS_CUDA_LAUNCH_CHECK("f32_sample_draw");
  return Status::Ok();
}

}  // namespace gptoss
