// Mixture of experts with MXFP4 weights, added onto the f32 residual (semantics in ops.h):
//   u = W1[e] x + b1[e] (2I rows: even glu, odd linear); z = min(a,L)*sigmoid(alpha*min(a,L))*(clamp(l,-L,L)+1)
//   y[t] += sum_j w[t,j] * (W2[e] z + b2[e])             for e = expert_idx[t, j]
// x [T][H] f32 (stride ldx), y [T][H] f32 (stride ldy); weights in the checkpoint layout:
// blocks [E][rows][K/32][16], scales [E][rows][K/32]; b1 [E][2I], b2 [E][H] f32.
//
// Plan (every phase a parallel_for; weights are never dequantised in memory):
//  1. counting sort of the T*k (token, expert) assignments by expert, tokens ascending within an
//     expert; xs[a] = the assignment's activation row, permuted per 32-block for the MXFP4 kernel;
//  2. mlp1 + swiglu over items (expert, block of 32 rows): the kernel reads each weight block once
//     per 4-token tile of that expert's tokens, so an expert's weights are read once per step at
//     decode and stay in L1/L2 across tiles at prefill; z is written already permuted for mlp2;
//  3. mlp2 over items (expert, block of 32 rows): ye[a] = W2 z[a] + b2;
//  4. per token, y[t] += w_j * ye[(t, j)] for j = 0..k-1 in that fixed order.
// Each output depends only on its own row/token arithmetic (see simd.h), so the result is the
// same for any thread count.
#include <algorithm>
#include <cmath>

#include "cpu/cpu_ops.h"

namespace gptoss {

namespace {
constexpr int kRowBlock = 32;  // even, so glu/linear row pairs never straddle two items
static_assert(kRowBlock % 2 == 0, "mlp1 row blocks must keep glu/linear pairs together");
}  // namespace

Status cpu_moe(CpuContext& c, const MoEParams& p) {
  GPTOSS_RETURN_IF_ERROR(need_f32(p.x_type, "moe", "x_type"));
  if (p.T < 1 || p.E < 1 || p.k < 1 || p.k > p.E)
    return invalid("moe: need T >= 1, E >= 1 and 1 <= k <= E (T=" + std::to_string(p.T) + ", E=" +
                   std::to_string(p.E) + ", k=" + std::to_string(p.k) + ")");
  if (p.H < kMxfp4Block || p.H % kMxfp4Block || p.I < kMxfp4Block || p.I % kMxfp4Block)
    return invalid("moe: H and I must be positive multiples of 32 (H=" + std::to_string(p.H) +
                   ", I=" + std::to_string(p.I) + ")");
  if (!p.x || !p.expert_idx || !p.expert_w || !p.w1_blocks || !p.w1_scales || !p.b1 || !p.w2_blocks ||
      !p.w2_scales || !p.b2 || !p.y)
    return invalid("moe: every pointer must be set");
  if (p.ldx < p.H || p.ldy < p.H) return invalid("moe: ldx and ldy must be >= H");
  const int T = p.T, E = p.E, K = p.k, H = p.H, I = p.I, A = T * K;
  for (int a = 0; a < A; ++a)
    if (p.expert_idx[a] < 0 || p.expert_idx[a] >= E)
      return invalid("moe: expert index " + std::to_string(p.expert_idx[a]) + " of token " +
                     std::to_string(a / K) + " is outside [0, " + std::to_string(E) + ")");

  // --- 1. counting sort by expert ---------------------------------------------------------
  int32_t* ints = nullptr;
  GPTOSS_RETURN_IF_ERROR(grow_scratch(c.scratch.moe_index, size_t(2) * (E + 1) + 2 * size_t(A), "moe index", &ints));
  int32_t* off = ints;              // [E+1] first assignment of each expert
  int32_t* cursor = off + E + 1;    // [E+1]
  int32_t* asg_tok = cursor + E + 1;  // [A] token of assignment a
  int32_t* pos_of = asg_tok + A;    // [A] assignment index of (t, j)
  std::fill(off, off + E + 1, 0);
  for (int a = 0; a < A; ++a) ++off[p.expert_idx[a] + 1];
  for (int e = 0; e < E; ++e) off[e + 1] += off[e];
  std::copy(off, off + E + 1, cursor);
  for (int a = 0; a < A; ++a) {
    const int slot = cursor[p.expert_idx[a]]++;
    asg_tok[slot] = a / K;
    pos_of[a] = slot;
  }
  std::vector<int> active;
  for (int e = 0; e < E; ++e)
    if (off[e + 1] > off[e]) active.push_back(e);

  float *xs = nullptr, *zs = nullptr, *ye = nullptr;
  GPTOSS_RETURN_IF_ERROR(grow_scratch(c.scratch.moe_x, size_t(A) * H, "moe activations", &xs));
  GPTOSS_RETURN_IF_ERROR(grow_scratch(c.scratch.moe_z, size_t(A) * I, "moe swiglu outputs", &zs));
  GPTOSS_RETURN_IF_ERROR(grow_scratch(c.scratch.moe_y, size_t(A) * H, "moe expert outputs", &ye));
  const float* x = static_cast<const float*>(p.x);
  c.pool.parallel_for(A, [&](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) mxfp4_permute(x + size_t(asg_tok[a]) * p.ldx, H, xs + size_t(a) * H);
  }, 8);

  // One MXFP4 matmul over every active expert: rows [0, rows_total) of each expert's matrix, split
  // into row blocks across threads, times all of that expert's tokens (kSimdMaxTokens at a time) from
  // `in` (stride ld_in). `epilogue(e, r0, rows, a0, nt, tmp)` consumes tmp[t * kRowBlock + r].
  auto expert_matmul = [&](const uint8_t* blocks, const uint8_t* scales, int rows_total, int nb, const float* in,
                           size_t ld_in, auto&& epilogue) {
    const int nrb = (rows_total + kRowBlock - 1) / kRowBlock;
    c.pool.parallel_for(int64_t(active.size()) * nrb, [&](int64_t i0, int64_t i1) {
      float tmp[kSimdMaxTokens * kRowBlock];
      for (int64_t i = i0; i < i1; ++i) {
        const int e = active[size_t(i / nrb)];
        const int r0 = int(i % nrb) * kRowBlock, rows = std::min(kRowBlock, rows_total - r0);
        const size_t wrow = size_t(e) * rows_total + r0;
        for (int a0 = off[e]; a0 < off[e + 1]; a0 += kSimdMaxTokens) {
          const int nt = std::min(kSimdMaxTokens, off[e + 1] - a0);
          c.simd.gemv_mxfp4(blocks + wrow * nb * kMxfp4BlockBytes, scales + wrow * nb, rows, nb,
                            in + size_t(a0) * ld_in, ld_in, nt, tmp, kRowBlock);
          epilogue(wrow, r0, rows, a0, nt, tmp);
        }
      }
    });
  };

  // --- 2. mlp1 + swiglu -------------------------------------------------------------------
  const float alpha = p.swiglu_alpha, limit = p.swiglu_limit;
  expert_matmul(p.w1_blocks, p.w1_scales, 2 * I, H / kMxfp4Block, xs, size_t(H),
                [&](size_t wrow, int r0, int rows, int a0, int nt, const float* tmp) {
                  const float* b1 = p.b1 + wrow;
                  for (int t = 0; t < nt; ++t) {
                    float* z = zs + size_t(a0 + t) * I;
                    for (int r = 0; r < rows; r += 2) {
                      const float glu = std::min(tmp[t * kRowBlock + r] + b1[r], limit);
                      const float lin = std::min(std::max(tmp[t * kRowBlock + r + 1] + b1[r + 1], -limit), limit);
                      const float sig = 1.0f / (1.0f + std::exp(-alpha * glu));
                      z[mxfp4_permuted_index((r0 + r) / 2)] = glu * sig * (lin + 1.0f);
                    }
                  }
                });

  // --- 3. mlp2 ----------------------------------------------------------------------------
  expert_matmul(p.w2_blocks, p.w2_scales, H, I / kMxfp4Block, zs, size_t(I),
                [&](size_t wrow, int r0, int rows, int a0, int nt, const float* tmp) {
                  const float* b2 = p.b2 + wrow;
                  for (int t = 0; t < nt; ++t) {
                    float* o = ye + size_t(a0 + t) * H + r0;
                    for (int r = 0; r < rows; ++r) o[r] = tmp[t * kRowBlock + r] + b2[r];
                  }
                });

  // --- 4. out = sum_j w_j ye_j in slot order j = 0..k-1, then y += out (the reference's order) ----
  c.pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* y = p.y + size_t(t) * p.ldy;
      const float* w = p.expert_w + size_t(t) * K;
      const int32_t* pos = pos_of + size_t(t) * K;
      for (int n = 0; n < H; ++n) {
        float out = 0.0f;
        for (int j = 0; j < K; ++j) out += w[j] * ye[size_t(pos[j]) * H + n];
        y[n] += out;
      }
    }
  }, 4);
  return Status::Ok();
}

}  // namespace gptoss
