// Backend factories for builds without CUDA, and the build facts.
#include "backend.h"
#include "engine.h"

namespace gptoss {

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
