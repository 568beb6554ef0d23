// KV-cache append: this step's post-RoPE k and its v go to the cache at index pos % len.
// When a sequence brings more than `len` tokens in one step only its last `len` are written, so the
// ring never sees two writes to one index in a step and the result does not depend on write order.
//
// Layout: k, v [T][ldkv] (head h at columns [64h, 64h+64)), bf16 or f32. Cache K and V are each
// [slots][n_kv][len][64] bf16: position p of the sequence in slot s, head h, is row
// (s*n_kv + h)*len + p % len. One block per token; a thread moves one 16-byte bf16 chunk
// (8 values) of one head of k or v, so a token is n_kv*8*2 chunks.
#include "cuda_check.cuh"
#include "device_common.cuh"
#include "kv_cache.cuh"

namespace gptoss {
namespace {

constexpr int kAppendThreads = 128;
constexpr int kChunksPerRow = kHeadDim * 2 / 16;  // 16-byte chunks in a 64-value bf16 row

// ------------------------------------------------------------------------------------------------
// kernels
// ------------------------------------------------------------------------------------------------

__device__ __forceinline__ uint4 load_chunk(const __nv_bfloat16* src) { return *reinterpret_cast<const uint4*>(src); }
__device__ __forceinline__ uint4 load_chunk(const float* src) {
  const float4 a = reinterpret_cast<const float4*>(src)[0], b = reinterpret_cast<const float4*>(src)[1];
  return make_uint4(pack_bf16x2(a.x, a.y), pack_bf16x2(a.z, a.w), pack_bf16x2(b.x, b.y), pack_bf16x2(b.z, b.w));
}

template <typename T>
__global__ void __launch_bounds__(kAppendThreads) kv_append_bf16cache(KVAppendParams p, DeviceErrorRecord* errors) {
  static_assert(kChunksPerRow == 8, "a 64-value bf16 row is eight 16-byte chunks");
  const int t = blockIdx.x;
  const int s = p.batch.tok_seq[t];
  const int tok0 = p.batch.seq_tok0[s];
  const int n = p.batch.seq_tok0[s + 1] - tok0;
  const int len = p.cache.len;
  if (t - tok0 < n - len) return;  // overwritten later in this same step: only the last `len` land
  const int slot = p.batch.seq_slot[s];
  if (slot < 0 || slot >= p.cache.slots) {
    if (threadIdx.x == 0 && t - tok0 == max(0, n - len))  // the sequence's first written token reports
      record_device_error(errors, kDevErrKVAppendSlot, s, slot, p.cache.slots);
    return;
  }
  const int idx = p.batch.tok_pos[t] % len;
  const size_t slot_row = size_t(slot) * p.cache.n_kv;
  const int items = p.cache.n_kv * kChunksPerRow * 2;
  for (int it = threadIdx.x; it < items; it += blockDim.x) {
    const int c = it % kChunksPerRow;
    const int h = (it / kChunksPerRow) % p.cache.n_kv;
    const bool is_v = it >= items / 2;
    const T* src = reinterpret_cast<const T*>(is_v ? p.v : p.k) + size_t(t) * p.ldkv + h * kHeadDim + c * 8;
    bf16_t* dst = static_cast<bf16_t*>(is_v ? p.cache.v : p.cache.k) + ((slot_row + h) * len + idx) * kHeadDim + c * 8;
    *reinterpret_cast<uint4*>(dst) = load_chunk(src);
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// launchers
// ------------------------------------------------------------------------------------------------

// Floor: T*n_kv*64*2 values read and written (bf16: 2 KB per token at 8 KV heads); decode is launch
// latency (~2 us), a 2048-token prefill ~8 MB, ~3 us of bandwidth.
Status launch_kv_append(const KVAppendParams& p, DeviceErrorRecord* errors, cudaStream_t stream) {
  const BatchDesc& b = p.batch;
  if (b.T < 0 || b.S < 0) return make_error(StatusCode::InvalidArgument, "kv_append: negative T or S");
  if (b.T == 0) return Status::Ok();
  if (!b.tok_pos || !b.tok_seq || !b.seq_slot || !b.seq_tok0 || !p.k || !p.v || !p.cache.k || !p.cache.v)
    return make_error(StatusCode::InvalidArgument, "kv_append: null pointer");
  if (p.cache.len <= 0 || p.cache.n_kv <= 0 || p.cache.slots <= 0)
    return make_error(StatusCode::InvalidArgument, "kv_append: cache len, n_kv and slots must be positive");
  if (p.ldkv < p.cache.n_kv * kHeadDim || p.ldkv % 8 != 0)
    return make_error(StatusCode::InvalidArgument,
                      "kv_append: ldkv must be a multiple of 8 covering n_kv*64, got " + std::to_string(p.ldkv));
  if (!aligned_to(p.k, 16) || !aligned_to(p.v, 16) || !aligned_to(p.cache.k, 16) || !aligned_to(p.cache.v, 16))
    return make_error(StatusCode::InvalidArgument, "kv_append: k, v and the cache must be 16-byte aligned");
  if (p.cache.type != DType::BF16)
    return make_error(StatusCode::Unsupported, std::string("kv_append: the CUDA KV cache is BF16, got ") + dtype_name(p.cache.type));
  switch (p.act_type) {
    case DType::BF16:
      kv_append_bf16cache<__nv_bfloat16><<<b.T, kAppendThreads, 0, stream>>>(p, errors);
      GPTOSS_CUDA_LAUNCH_CHECK("kv_append_bf16cache<bf16>");
      return Status::Ok();
    case DType::F32:
      kv_append_bf16cache<float><<<b.T, kAppendThreads, 0, stream>>>(p, errors);
      GPTOSS_CUDA_LAUNCH_CHECK("kv_append_bf16cache<f32>");
      return Status::Ok();
    default:
      return make_error(StatusCode::Unsupported,
                        std::string("kv_append: CUDA takes BF16 or F32 k/v, not ") + dtype_name(p.act_type));
  }
}

}  // namespace gptoss
