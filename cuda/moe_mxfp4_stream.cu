// Streaming MoE GEMV for decode (T * k <= kStreamMaxSlots = 32 slots): KS warps per (active expert
// rank, 16-row weight tile), each over a contiguous 1/KS of K (the group sums its parts through
// shared memory at the end), with weights, scales and activations streamed through a per-warp
// cp.async ring in shared memory; no routing pass. GPT_OSS_C_MOE_STREAM_KS=K or K1,K2 forces a K
// split. H200, 20b shapes (bench/NOTES.md, session 6): T = 1 27.4 us, T = 8 101 us (the grouped
// GEMV it replaced: 47 and 208).
//
// Why a cp.async ring (bench/NOTES.md, H200, session 3): the first version kept an 8-chunk ring of
// 16-byte loads in registers; ncu showed ~1,270 cycles per chunk and per warp, most of it in
// long-scoreboard stalls: a warp has six scoreboards, so the ring's loads shared them and waiting
// for the oldest chunk also waited for the newest (effective depth ~1). cp.async groups complete in
// order (cp.async.wait_group N), so D - 1 chunks really stay in flight, and no registers hold them.
// Every lane copies exactly the bytes it later reads (its 16 code bytes, its row pair's scale word,
// its B column's 2 x 16 activation bytes), so a lane's own wait_group is the only synchronisation.
//
// Math (ops.h MoEParams; weight layout in mxfp4_layout.cuh), slot i = t * k + j of token t and expert e:
//   mlp1: z[i, u] = swiglu(W1[e] x[t] + b1[e])[u];  mlp2: partial[i, :] = w[i] (W2[e] z[i] + b2[e]);
//   y[t, :] += sum_j partial[t*k + j, :] (j in slot order) by the last warp to finish each output tile.
// Per warp: lane i reads slot i's expert (S <= 32), the warp finds the rank-th smallest distinct
// expert e and the mask of its slots (slot order = lane order); B columns are the slots (8 per pass;
// a second pass re-streams the tile, which only happens when one expert has > 8 slots). Lanes whose
// column is past the expert's slot count copy no activations (zeros in the main loop): their mma
// columns read zeros or stale shared memory and are never stored (mma output columns are
// independent).
// Both launches use programmatic dependent launch (when the backend does): mlp1 waits for the
// router (pdl_wait) before anything else, so only its launch overlaps the router's tail; mlp2 puts
// its first weight chunks in flight, then waits for mlp1 before reading z and the counters mlp1
// zeroed, and then lets the next kernel (the next layer's q/k/v GEMV) launch and prefetch its
// weights while mlp2 streams.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <string>

#include "cuda_check.cuh"
#include "device_common.cuh"
#include "expert_route.cuh"
#include "moe_mxfp4_impl.cuh"

namespace gptoss {
namespace moe {
namespace {

constexpr int kStreamWarps = 8;  // warps per block: kStreamWarps / KS tiles, KS warps each

// One ring stage (one 64-wide k chunk of the warp's tile): lane l's 16 code bytes at 16 l, its scale
// word at kStageScale + 4 l, its activations for k half h at kStageB + 512 h + 16 l (16-byte lane
// stride: conflict-free 128-bit shared loads).
constexpr int kStageScale = kMxfp4ChunkBytes;  // 512
constexpr int kStageB = kStageScale + 128;     // 640
constexpr int kStageBytes = kStageB + 1024;    // 1664

// K split: KS warps share a tile, each streaming a contiguous 1/KS of its chunks through a
// kStreamDepth-stage ring (kStreamDepth - 1 chunks in flight). More, shorter warps hide the
// dequantisation's dependency chains better. Measured (H200, 20b): KS = 4 is best at T = 1 (33 vs 36
// us for KS = 2, 46 for KS = 1 with an 8-deep ring), KS = 2 from T = 2 on (T = 8: 122 vs 140 us for
// KS = 4), where more experts fill the SMs anyway. KS is a template parameter: with a run-time KS
// the warp's group, K part and chunk range were three integer divisions (~75 instructions) on the
// path to its first weight load (ncu source counters, session 6).
constexpr int kStreamDepth = 4;

// Resident mlp2 (kRes, one token, programmatic dependent launch): instead of the ring, each warp keeps
// all of its chunks in compact stages -- codes at 0, the scale words at kStageScale, and only B column
// 0's z pieces at kResB (two k32 halves of 64 bytes) -- and copies the weights of every chunk before
// pdl_wait. Why (bench/NOTES.md, session 10): mlp2's weights are known as soon as the router ran, and
// mlp1's last (partial) wave leaves block slots and DRAM bandwidth free; with the ring only the
// first D - 1 chunks per warp were in flight before mlp1 finished. 20b: 12 chunks x 768 bytes per
// warp, 72 KB per block, 3 blocks per SM: mlp2's 360 blocks are still one wave.
constexpr int kResB = kStageScale + 128;        // 640
constexpr int kResStageBytes = kResB + 128;     // 768
__host__ __device__ __forceinline__ int resident_warp_bytes(int chunks, int ks) {
  return (chunks + ks - 1) / ks * kResStageBytes;
}
constexpr size_t kResMaxSmem = 100 * 1024;     // per block: at least two blocks per SM
// A/B knob GPT_OSS_C_MOE_STREAM_KS: "K" for both launches or "K1,K2" for mlp1 and mlp2, each 2, 4
// or 8 (mlp2 has half of mlp1's tiles, so it may want the larger split).
int stream_ks(int slots, bool mlp1) {
  static const std::pair<int, int> forced = [] {
    const char* v = std::getenv("GPT_OSS_C_MOE_STREAM_KS");
    auto ok = [](int ks) { return ks == 2 || ks == 4 || ks == 8 ? ks : 0; };
    if (!v) return std::pair<int, int>{0, 0};
    const char* comma = std::strchr(v, ',');
    const int k1 = ok(std::atoi(v)), k2 = comma ? ok(std::atoi(comma + 1)) : k1;
    return std::pair<int, int>{k1, k2};
  }();
  const int f = mlp1 ? forced.first : forced.second;
  return f ? f : slots <= 4 ? 4 : 2;
}

struct WarpExpert {
  int e = -1;          // the expert, or -1 when fewer than rank + 1 experts are active
  unsigned slots = 0;  // its slots (bit i = slot i)
  int n = 0;           // popcount(slots)
  int n_active = 0;    // distinct active experts of the step
};

// Index of the col-th set bit of m (col < popcount(m)).
__device__ __forceinline__ int nth_set_bit(unsigned m, int col) {
  for (int q = 0; q < col; ++q) m &= m - 1u;
  return __ffs(int(m)) - 1;
}

// Lane i holds slot i (i < S <= 32). The expert of rank `rank` among the step's distinct experts in
// ascending id order. Warp-uniform. The distinct ids are a bit set over E <= 256 ids, built one
// 32-id word at a time by a warp OR-reduction (redux.sync): ~10 instructions per word. (ncu, H200,
// session 5: the previous 32-round shuffle search was ~200 instructions of every warp's prologue,
// ahead of its first weight load, and 15-20% of the stall samples of both launches.)
__device__ WarpExpert warp_expert(const int32_t* expert_idx, int S, int E, int rank, int lane) {
  const int ei = lane < S ? __ldcg(expert_idx + lane) : -1;
  const bool valid = lane < S && unsigned(ei) < unsigned(E);
  WarpExpert w;
  int seen = 0;  // distinct ids in the words before this one
  for (int word = 0; word < (E + 31) / 32; ++word) {
    const unsigned bits = __reduce_or_sync(0xffffffffu, valid && (ei >> 5) == word ? 1u << (ei & 31) : 0u);
    const int c = __popc(bits);
    if (rank >= seen && rank < seen + c) w.e = word * 32 + nth_set_bit(bits, rank - seen);
    seen += c;
  }
  w.n_active = seen;
  if (w.e < 0) return w;
  w.slots = __ballot_sync(0xffffffffu, valid && ei == w.e);
  w.n = __popc(w.slots);
  return w;
}

// One 64-wide k chunk of a 16-row tile from shared memory: the lane's 16 code bytes at w, its scale
// word at s, its B pieces of k32 half 0 at b0 and of half 1 at b1 (read only when has_hi). Two
// accumulators: the halves' mma chains are independent.
template <bool kFast>
__device__ __forceinline__ void consume_chunk(float (&acc0)[4], float (&acc1)[4], uint32_t w, uint32_t s, uint32_t b0,
                                              uint32_t b1, bool has_hi) {
  const uint4 wv = tc::lds_128(w);
  const uint32_t sw = tc::lds_32(s);
  const uint4 lo = tc::lds_128(b0);
  uint32_t A[4][4];
  dequant_steps<kFast, 4>(wv, sw, 0, A);
  tc::mma_bf16_16816(acc0, A[0][0], A[0][1], A[0][2], A[0][3], tc::word(lo, 0), tc::word(lo, 1));
  tc::mma_bf16_16816(acc0, A[1][0], A[1][1], A[1][2], A[1][3], tc::word(lo, 2), tc::word(lo, 3));
  if (has_hi) {
    const uint4 hi = tc::lds_128(b1);
    tc::mma_bf16_16816(acc1, A[2][0], A[2][1], A[2][2], A[2][3], tc::word(hi, 0), tc::word(hi, 1));
    tc::mma_bf16_16816(acc1, A[3][0], A[3][1], A[3][2], A[3][3], tc::word(hi, 2), tc::word(hi, 3));
  }
}

// mlp2's share of the next op's first bytes (StreamArgs::l2_next: the next layer's q/k/v weight) pulled
// into L2, one bulk prefetch per warp, issued once the warp's own loads have landed. Why: with its
// weights in, mlp2 still dequantises for ~3-4 us and meets in the output tiles, and the next GEMV's
// blocks find no room on the SMs until mlp2's leave, so DRAM would idle for ~5 us right before a
// 29.5 MB read. Unlike the refuted L2 prefetches (bench/NOTES.md, sessions 5, 7, 9) these run beside
// no stream and are consumed by the very next kernel: decode +2-3% (session 11). Issued right after
// pdl_wait instead, it gained nothing more.
__device__ __forceinline__ void prefetch_next_l2(const StreamArgs& a, int warp, int lane) {
  if (a.l2_next.p == nullptr || lane != 0) return;
  l2_prefetch_share(a.l2_next.p, a.l2_next.bytes, (size_t(blockIdx.y) * gridDim.x + blockIdx.x) * kStreamWarps + warp,
                    size_t(gridDim.x) * gridDim.y * kStreamWarps);
}

__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Grid: (tile groups, expert ranks); block (x, y) serves tiles kStreamWarps / KS * x + group of
// the y-th smallest active expert.
template <bool kMlp1, bool kFast, int KS, bool kRes>
__global__ void __launch_bounds__(kStreamWarps * 32, 4) bf16_mxfp4w_moe_stream(StreamArgs a) {
  static_assert(!(kRes && kMlp1), "only mlp2 knows its weights before its grid dependency resolves");
  constexpr int D = kStreamDepth;
  static_assert((D & (D - 1)) == 0, "ring depth: a power of two");
  static_assert(kStreamWarps % KS == 0, "K split: a divisor of the block's warps");
  extern __shared__ __align__(16) uint8_t smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, r = lane >> 2, c = lane & 3;
  const int tiles = a.R / kMxfp4TileRows;
  const int group = warp / KS, ks = warp % KS;  // the block's tile group and this warp's K part
  const int tile = int(blockIdx.x) * (kStreamWarps / KS) + group;
  const int S = a.T * a.k;

  if (kMlp1) {
    pdl_wait();  // expert_idx, x (the router and the norm) and the counters (the last layer's mlp2)
    // Zero mlp2's arrival counters (mlp2 touches them only after pdl_wait, i.e. after this grid
    // completed), then let mlp2 launch: it can only start once every block of this grid runs.
    if (blockIdx.x == 0 && blockIdx.y == 0)
      for (int i = int(threadIdx.x); i < a.n_counters; i += kStreamWarps * 32) a.counters[i] = 0;
    pdl_launch_dependents();
  }
  // expert_idx was written before mlp1 started (the router), so mlp2 may read it before pdl_wait.
  // All KS warps of a group see the same expert, so they leave (or not) together.
  const WarpExpert we = warp_expert(a.expert_idx, S, a.E, int(blockIdx.y), lane);
  if (we.e < 0 || tile >= tiles) return;  // group-uniform; only the group's named barrier follows
  const int chunks = mxfp4_chunks(a.K / 32);
  const int c0 = ks * chunks / KS, nc = (ks + 1) * chunks / KS - c0;  // this warp's chunks
  const size_t gtile = size_t(we.e) * tiles + tile;
  const uint8_t* wsrc = a.wb + mxfp4_block_offset(gtile, chunks, c0) + lane * 16;
  const uint8_t* ssrc = a.ws + mxfp4_scale_offset(gtile, chunks, c0) + r * 4;
  // kRes: every chunk of the warp has its own compact stage (resident_warp_bytes).
  const uint32_t warp_bytes = kRes ? uint32_t(resident_warp_bytes(chunks, KS)) : uint32_t(D * kStageBytes);
  const uint32_t ring = tc::smem_addr(smem) + uint32_t(warp) * warp_bytes;
  const uint32_t my_w = ring + 16 * lane, my_s = ring + kStageScale + 4 * lane, my_b = ring + kStageB + 16 * lane;

  for (int p0 = 0; p0 < we.n; p0 += 8) {
    // B column r of this pass is slot nth(p0 + r); lanes past the slot count read no activations.
    const bool has_col = p0 + r < we.n;
    const int slot = nth_set_bit(we.slots, has_col ? p0 + r : p0);
    // mlp1's token slot / k as a multiply-shift (a.k_magic = ceil(2^16 / k): exact for slot < 32).
    const int row = kMlp1 ? (slot * a.k_magic) >> 16 : slot;
    const bf16_t* brow = a.act + size_t(row) * a.ld_act + 8 * c + 64 * c0;
    float acc0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, acc1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if constexpr (kRes) {
      // One token (one slot per expert: a single pass, column 0 only). Every chunk's codes and scales
      // before pdl_wait, so they stream in during mlp1's last wave; then the quad of column 0 copies
      // its z pieces (both k32 halves of a stage: kResB + 16 c and + 64), every lane reads column 0's
      // (the other columns duplicate it and are never stored).
      for (int j = 0; j < nc; ++j) {
        const uint32_t st = uint32_t(j * kResStageBytes);
        tc::cp_async_16(my_w + st, wsrc + j * kMxfp4ChunkBytes, true);
        tc::cp_async_4(my_s + st, ssrc + j * kMxfp4ScaleChunkBytes);
      }
      tc::cp_async_commit();
      pdl_wait();               // z and the counters come from mlp1
      pdl_launch_dependents();  // whatever follows waits for all of this grid before reading y
      const uint32_t my_z = ring + kResB + 16 * c;
      if (has_col)
        for (int j = 0; j < nc; ++j) {
          const uint32_t st = uint32_t(j * kResStageBytes);
          tc::cp_async_16(my_z + st, brow + 64 * j, true);
          if (64 * (c0 + j) + 32 < a.K) tc::cp_async_16(my_z + st + 64, brow + 64 * j + 32, true);
        }
      tc::cp_async_commit();
      tc::cp_async_wait<0>();
      __syncwarp();
      prefetch_next_l2(a, warp, lane);
#pragma unroll 4
      for (int j = 0; j < nc; ++j) {
        const uint32_t st = uint32_t(j * kResStageBytes);
        consume_chunk<kFast>(acc0, acc1, my_w + st, my_s + st, my_z + st, my_z + st + 64, 64 * (c0 + j) + 32 < a.K);
      }
    } else {
      // Prologue: weights and scales of local chunks 0 .. D-2 (one commit group), then (after mlp1,
      // for mlp2) the activations of each of those chunks (one group each), so that in the loop below
      // the group of local chunk j is complete once at most D - 1 newer groups are pending.
      for (int j = 0; j < D - 1; ++j) {
        if (j >= nc) break;
        const uint32_t st = uint32_t(j * kStageBytes);
        tc::cp_async_16(my_w + st, wsrc + j * kMxfp4ChunkBytes, true);
        tc::cp_async_4(my_s + st, ssrc + j * kMxfp4ScaleChunkBytes);
      }
      tc::cp_async_commit();
      if (!kMlp1 && p0 == 0) {
        pdl_wait();               // z and the counters come from mlp1
        pdl_launch_dependents();  // whatever follows waits for all of this grid before reading y
      }
      for (int j = 0; j < D - 1; ++j) {
        if (j < nc && has_col) {
          const uint32_t st = uint32_t(j * kStageBytes);
          tc::cp_async_16(my_b + st, brow + 64 * j, true);
          if (64 * (c0 + j) + 32 < a.K) tc::cp_async_16(my_b + st + 512, brow + 64 * j + 32, true);
        }
        tc::cp_async_commit();
      }

      // One step consumes local chunk j from stage j % D after refilling the stage chunk j - 1 freed
      // with chunk j + D - 1 (when `refill`; one commit group per step either way). (ncu, session 5:
      // the rolled loop spent ~50 of its ~120 instructions per chunk on ring indices, pointer updates
      // and bounds tests.)
      // Chunks whose second k32 block exists: all but possibly the warp's last (K % 64 == 32).
      const int nc_hi = 64 * (c0 + nc - 1) + 32 < a.K ? nc : nc - 1;
      // w / s / b: the sources of chunk jn = j + D - 1 (read only when `refill`).
      // The refill's four copies form one branch-free block: lanes without a column, and the k32 block
      // past K, copy 0 bytes (zero-fill from a mapped address) instead of branching around the copy
      // (nvcc pads the start of every block that issues cp.async with three never-executed LDS).
      auto step = [&](int j, int stage, bool refill, bool has_hi, const uint8_t* w_src, const uint8_t* s_src,
                      const bf16_t* b_src) {
        if (refill) {
          const uint32_t st = uint32_t(((stage + D - 1) & (D - 1)) * kStageBytes);
          const bool hi = has_col && j + D - 1 < nc_hi;
          tc::cp_async_16(my_w + st, w_src, true);
          tc::cp_async_4(my_s + st, s_src);
          tc::cp_async_16(my_b + st, b_src, has_col);
          tc::cp_async_16(my_b + st + 512, hi ? b_src + 32 : b_src, hi);
        }
        tc::cp_async_commit();
        tc::cp_async_wait<D - 1>();
        const uint32_t st = uint32_t(stage * kStageBytes);
        consume_chunk<kFast>(acc0, acc1, my_w + st, my_s + st, my_b + st, my_b + st + 512, has_hi);
      };
      // Main loop: D steps at a time with every refill in range (j0 + 2D - 2 < nc; then every consumed
      // chunk j <= nc - 2 has both k32 blocks), so the stages and the source offsets from the block's
      // base pointers are compile-time constants.
      int j0 = 0;
      const uint8_t* wblk = wsrc + (D - 1) * kMxfp4ChunkBytes;
      const uint8_t* sblk = ssrc + (D - 1) * kMxfp4ScaleChunkBytes;
      const bf16_t* bblk = brow + 64 * (D - 1);
      for (; j0 + 2 * D - 2 < nc; j0 += D) {
  #pragma unroll
        for (int u = 0; u < D; ++u)
          step(j0 + u, u, true, true, wblk + u * kMxfp4ChunkBytes, sblk + u * kMxfp4ScaleChunkBytes, bblk + 64 * u);
        wblk += D * kMxfp4ChunkBytes;
        sblk += D * kMxfp4ScaleChunkBytes;
        bblk += 64 * D;
      }
      for (int j = j0; j < nc; ++j, wblk += kMxfp4ChunkBytes, sblk += kMxfp4ScaleChunkBytes, bblk += 64)
        step(j, j & (D - 1), j + D - 1 < nc, j < nc_hi, wblk, sblk, bblk);
      tc::cp_async_wait<0>();  // the rings are reused: by the reduction and by the next pass
      if (!kMlp1 && p0 == 0) prefetch_next_l2(a, warp, lane);
    }
    // acc = rows r, r + 8 of the tile x columns 2c, 2c + 1 of the pass, summed over the K parts in
    // ks order (warps 1 .. KS-1 leave theirs at the start of their own rings).
    float acc[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) acc[q] = acc0[q] + acc1[q];
    if (KS > 1) {
      if (ks > 0) asm volatile("st.shared.v4.f32 [%0], {%1,%2,%3,%4};\n" ::"r"(ring + 16 * lane), "f"(acc[0]),
                               "f"(acc[1]), "f"(acc[2]), "f"(acc[3]) : "memory");
      named_barrier(1 + group, KS * 32);
      if (ks == 0)
        for (int q = 1; q < KS; ++q) {
          const uint4 v = tc::lds_128(ring + uint32_t(q) * warp_bytes + 16 * lane);
          acc[0] += __uint_as_float(v.x);
          acc[1] += __uint_as_float(v.y);
          acc[2] += __uint_as_float(v.z);
          acc[3] += __uint_as_float(v.w);
        }
      named_barrier(1 + group, KS * 32);  // the partner rings are free for the next pass
      if (ks > 0) continue;
    }
#pragma unroll
    for (int cc = 0; cc < 2; ++cc) {
      const int pc = p0 + 2 * c + cc;
      if (pc >= we.n) continue;
      const int s = nth_set_bit(we.slots, pc);
      if (kMlp1) {
        // Rows r / r + 8 = checkpoint rows 2u (glu) / 2u + 1 (linear) of unit u.
        const int unit = tile * 8 + r;
        const float* b = a.bias + size_t(we.e) * a.R + 2 * unit;
        const float zv = swiglu(acc[cc] + b[0], acc[2 + cc] + b[1], a.alpha, a.limit);
        reinterpret_cast<__nv_bfloat16*>(a.z)[size_t(s) * a.I + unit] = __float2bfloat16_rn(zv);
      } else {
        // Rows r / r + 8 = output rows o / o + 1.
        const int o = tile * 16 + 2 * r;
        const float* b = a.bias + size_t(we.e) * a.R + o;
        const float w = __ldcg(a.expert_w + s);
        *reinterpret_cast<float2*>(a.partial + size_t(s) * a.R + o) =
            make_float2(w * (acc[cc] + b[0]), w * (acc[2 + cc] + b[1]));
      }
    }
  }

  if (!kMlp1 && ks == 0) {
    // The last of the tile's n_active groups adds every token's k partials (slot order) onto y.
    __threadfence();
    __syncwarp();
    int last = 0;
    if (lane == 0) last = atomicAdd(a.counters + tile, 1) == we.n_active - 1;
    if (!__shfl_sync(0xffffffffu, last, 0)) return;
    __threadfence();
    for (int q = lane; q < a.T * kMxfp4TileRows; q += 32) {
      const int t = q / kMxfp4TileRows, row = tile * kMxfp4TileRows + q % kMxfp4TileRows;
      float sum = 0.0f;
      for (int j = 0; j < a.k; ++j) {
        const int s = t * a.k + j;
        if (unsigned(__ldcg(a.expert_idx + s)) < unsigned(a.E)) sum += __ldcg(a.partial + size_t(s) * a.R + row);
      }
      a.y[size_t(t) * a.ldy + row] += sum;
    }
  }
}

// Dynamic shared memory of a block: the warps' rings, or (res) their resident stages.
size_t stream_smem(bool res, int K, int ks) {
  return size_t(kStreamWarps) * (res ? resident_warp_bytes(mxfp4_chunks(K / 32), ks) : kStreamDepth * kStageBytes);
}

template <bool kMlp1, bool kFast, int KS, bool kRes>
Status launch_stream_t(const StreamArgs& a, bool pdl, cudaStream_t stream) {
  auto kernel = bf16_mxfp4w_moe_stream<kMlp1, kFast, KS, kRes>;
  const size_t smem = stream_smem(kRes, a.K, KS);
  GPTOSS_RETURN_IF_ERROR(ensure_smem(reinterpret_cast<const void*>(kernel), smem, "bf16_mxfp4w_moe_stream"));
  constexpr int per_block = kStreamWarps / KS;
  const int tiles = a.R / kMxfp4TileRows, ranks = std::min(a.E, a.T * a.k);
  return launch_pdl(kernel, dim3(unsigned((tiles + per_block - 1) / per_block), unsigned(ranks)),
                    dim3(kStreamWarps * 32), smem, pdl, stream,
                    kMlp1 ? "bf16_mxfp4w_moe_stream<mlp1>" : "bf16_mxfp4w_moe_stream<mlp2>", a);
}

// A/B knob GPT_OSS_C_MOE_RESIDENT=0: mlp2 at one token streams through the ring as every other call.
bool resident_mlp2_enabled() {
  static const bool on = !env_knob_off("GPT_OSS_C_MOE_RESIDENT");
  return on;
}

template <bool kMlp1, bool kFast, bool kRes>
Status launch_stream_ks(const StreamArgs& a, bool pdl, cudaStream_t stream) {
  const int ks = stream_ks(a.T * a.k, kMlp1);
  return ks == 8   ? launch_stream_t<kMlp1, kFast, 8, kRes>(a, pdl, stream)
         : ks == 2 ? launch_stream_t<kMlp1, kFast, 2, kRes>(a, pdl, stream)
                   : launch_stream_t<kMlp1, kFast, 4, kRes>(a, pdl, stream);
}

// mlp2 of one token (each expert has one slot: the router picks k distinct experts) with
// programmatic dependent launch, when a block's stages fit.
bool resident_mlp2(const StreamArgs& a, bool pdl) {
  const size_t smem = stream_smem(true, a.K, stream_ks(a.T * a.k, false));
  return pdl && a.T == 1 && resident_mlp2_enabled() && smem <= kResMaxSmem && smem <= smem_optin_bytes();
}

}  // namespace

// Floors (gpt-oss-20b, T = 1, H200 ~4.2 TB/s): 52.9 MB of weights per layer -> 12.6 us for both
// launches. Issue (ncu source counters, session 6): mlp1 runs 8.4M warp instructions -- ~90 per
// chunk (1,024 weights; ~60 of them dequantise) and ~380 once per warp (5,760 warps of ~11 chunks
// each) -- i.e. ~8.9 us at 4 instructions per SM and cycle (1.79 GHz), above its 8.4 us of bytes.
// It runs in 18.5 us: SMs idle 18% of the cycles (ramp, a 1.36-wave tail), 0.61 instructions
// issued per scheduler and cycle, the K parts waiting for each other at the named barrier.
Status launch_stream(const StreamArgs& a, bool mlp1, bool pdl, cudaStream_t stream) {
  const int S = a.T * a.k;
  if (S < 1 || S > kStreamMaxSlots || a.E < 1 || a.E > kRouteMaxExperts)
    return make_error(StatusCode::InvalidArgument,
                      "moe stream: need 1 <= T * k <= " + std::to_string(kStreamMaxSlots) + " and 1 <= E <= 256");
  if (a.R % kMxfp4TileRows != 0 || a.K % 32 != 0 || a.K <= 0 || a.R <= 0 || a.ld_act % 8 != 0)
    return make_error(StatusCode::InvalidArgument, "moe stream: rows must be a multiple of 16, K of 32, ld_act of 8");
  if (!mlp1 && a.n_counters < a.R / kMxfp4TileRows)
    return make_error(StatusCode::InvalidArgument, "moe stream: one arrival counter per output tile needed");
  StreamArgs b = a;
  b.k_magic = (65536 + a.k - 1) / a.k;
  if (mlp1)
    return b.fast_scales ? launch_stream_ks<true, true, false>(b, pdl, stream)
                         : launch_stream_ks<true, false, false>(b, pdl, stream);
  if (resident_mlp2(b, pdl))
    return b.fast_scales ? launch_stream_ks<false, true, true>(b, pdl, stream)
                         : launch_stream_ks<false, false, true>(b, pdl, stream);
  return b.fast_scales ? launch_stream_ks<false, true, false>(b, pdl, stream)
                       : launch_stream_ks<false, false, false>(b, pdl, stream);
}

}  // namespace moe
}  // namespace gptoss
