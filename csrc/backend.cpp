// The default compositions of the fused op families (ops.h), the backend factories for builds
// without CUDA, and the build facts.
#include "backend.h"
#include "engine.h"

namespace gptoss {

Status Backend::attn_input(const AttnInputParams& p) {
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

Status Backend::moe_input(const MoEInputParams& p) {
  GPTOSS_RETURN_IF_ERROR(rmsnorm(p.norm));
  GPTOSS_RETURN_IF_ERROR(dense(p.gate));
  return router_topk(p.router);
}

#ifndef GPT_OSS_C_HAS_CUDA
Status make_cuda_backend(int, std::unique_ptr<Backend>*) {
  return make_error(StatusCode::Unsupported,
                    "this build of gpt_oss_c has no CUDA backend (it was built without nvcc); "
                    "reinstall with a CUDA toolkit on PATH, or use device='cpu'");
}
bool cuda_available() { return false; }
#endif

BuildInfo build_info() {
  BuildInfo b;
  b.version = GPT_OSS_C_VERSION;
  b.compiler = GPT_OSS_C_COMPILER;
#ifdef GPT_OSS_C_HAS_CUDA
  b.cuda = true;
  b.cuda_archs = GPT_OSS_C_CUDA_ARCHS;
#endif
  b.simd = cpu_simd_level();
  b.threads = cpu_default_threads();
  return b;
}

}  // namespace gptoss
