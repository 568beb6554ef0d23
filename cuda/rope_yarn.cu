// YaRN RoPE, half-split (NeoX) pairing, in place on q and k (v is not rotated):
//   out[i]    = x[i]*cos[p][i] - x[i+32]*sin[p][i]
//   out[i+32] = x[i+32]*cos[p][i] + x[i]*sin[p][i]          (i < 32, p = tok_pos[t])
// cos/sin [max_context][32] f32 already carry the YaRN frequencies and the concentration, so this
// kernel does no trigonometry. The rotation runs in f32; bf16 inputs are rounded back to bf16
// (the reference rounds q and k to bf16 after RoPE too).
//
// Layout: q [T][ldq] with head h at columns [64h, 64h+64) for h < n_q, k [T][ldk] likewise for
// h < n_kv. One block per token; each thread owns the element pairs (i, i+1) and (i+32, i+33) of one
// head (i even), so it reads two bf16 pairs (or float2s) and one float2 each of cos and sin.
#include "cuda_check.cuh"
#include "device_common.cuh"
#include "rope_yarn.cuh"

namespace gptoss {
namespace {

constexpr int kRopeThreads = 256;
constexpr int kHalf = kHeadDim / 2;       // 32 rotation pairs per head
constexpr int kThreadsPerHead = kHalf / 2;  // each thread rotates two adjacent pairs

// ------------------------------------------------------------------------------------------------
// kernels
// ------------------------------------------------------------------------------------------------

__device__ __forceinline__ float2 load2(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ float2 load2(const __nv_bfloat16* p) {
  return unpack_bf16x2(*reinterpret_cast<const uint32_t*>(p));
}
__device__ __forceinline__ void store2(float* p, float2 v) { *reinterpret_cast<float2*>(p) = v; }
__device__ __forceinline__ void store2(__nv_bfloat16* p, float2 v) {
  *reinterpret_cast<uint32_t*>(p) = pack_bf16x2(v.x, v.y);
}

template <typename T>
__global__ void __launch_bounds__(kRopeThreads) rope_yarn_halfsplit(RopeParams p) {
  static_assert(kHeadDim == 64 && kThreadsPerHead == 16, "pairing assumes head_dim 64");
  const int t = blockIdx.x;
  const int pos = p.batch.tok_pos[t];
  const int items = (p.n_q + p.n_kv) * kThreadsPerHead;
  for (int it = threadIdx.x; it < items; it += blockDim.x) {
    const int head = it / kThreadsPerHead;
    const int i = 2 * (it % kThreadsPerHead);
    T* x = head < p.n_q ? reinterpret_cast<T*>(p.q) + size_t(t) * p.ldq + head * kHeadDim
                        : reinterpret_cast<T*>(p.k) + size_t(t) * p.ldk + (head - p.n_q) * kHeadDim;
    const float2 c = __ldg(reinterpret_cast<const float2*>(p.cos + size_t(pos) * kHalf + i));
    const float2 s = __ldg(reinterpret_cast<const float2*>(p.sin + size_t(pos) * kHalf + i));
    const float2 a = load2(x + i), b = load2(x + i + kHalf);
    store2(x + i, make_float2(a.x * c.x - b.x * s.x, a.y * c.y - b.y * s.y));
    store2(x + i + kHalf, make_float2(b.x * c.x + a.x * s.x, b.y * c.y + a.y * s.y));
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// launchers
// ------------------------------------------------------------------------------------------------

// Floor: T*(n_q + n_kv)*64*2*2 bytes (bf16 read + write) plus 256 B of cos/sin per token: 18 KB per
// token at 64/8 heads. Decode is launch latency (~2 us); a 2048-token prefill is ~38 MB, ~13 us.
Status launch_rope(const RopeParams& p, cudaStream_t stream) {
  const int T = p.batch.T;
  if (T < 0 || p.n_q < 0 || p.n_kv < 0)
    return make_error(StatusCode::InvalidArgument, "rope: negative T, n_q or n_kv");
  if (T == 0 || p.n_q + p.n_kv == 0) return Status::Ok();
  if (!p.batch.tok_pos || !p.cos || !p.sin || (p.n_q > 0 && !p.q) || (p.n_kv > 0 && !p.k))
    return make_error(StatusCode::InvalidArgument, "rope: null pointer");
  if ((p.n_q > 0 && p.ldq < p.n_q * kHeadDim) || (p.n_kv > 0 && p.ldk < p.n_kv * kHeadDim) || p.ldq % 2 ||
      p.ldk % 2)
    return make_error(StatusCode::InvalidArgument,
                      "rope: ldq/ldk must be even and cover n_q*64 / n_kv*64 (got ldq=" + std::to_string(p.ldq) +
                          ", ldk=" + std::to_string(p.ldk) + ")");
  if (!aligned_to(p.cos, 8) || !aligned_to(p.sin, 8))
    return make_error(StatusCode::InvalidArgument, "rope: cos/sin tables must be 8-byte aligned");
  switch (p.type) {
    case DType::BF16:
      if (!aligned_to(p.q, 4) || !aligned_to(p.k, 4))
        return make_error(StatusCode::InvalidArgument, "rope: q and k must be 4-byte aligned");
      rope_yarn_halfsplit<__nv_bfloat16><<<T, kRopeThreads, 0, stream>>>(p);
      GPTOSS_CUDA_LAUNCH_CHECK("rope_yarn_halfsplit<bf16>");
      return Status::Ok();
    case DType::F32:
      if (!aligned_to(p.q, 8) || !aligned_to(p.k, 8))
        return make_error(StatusCode::InvalidArgument, "rope: q and k must be 8-byte aligned");
      rope_yarn_halfsplit<float><<<T, kRopeThreads, 0, stream>>>(p);
      GPTOSS_CUDA_LAUNCH_CHECK("rope_yarn_halfsplit<f32>");
      return Status::Ok();
    default:
      return make_error(StatusCode::Unsupported,
                        std::string("rope: CUDA rotates BF16 or F32, not ") + dtype_name(p.type));
  }
}

}  // namespace gptoss
