#include "kernel_caps.cuh"

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>

#include "cuda_backend.cuh"

namespace gptoss {

bool env_knob_off(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && std::string(v) == "0";
}

size_t smem_optin_bytes() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  static std::atomic<int> optin_of[64] = {};  // per device; 0 = not queried yet
  int optin = dev >= 0 && dev < 64 ? optin_of[dev].load(std::memory_order_relaxed) : 0;
  if (optin == 0) {
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
      cudaGetLastError();  // a failed query must not poison the next launch
      return 0;
    }
    if (dev >= 0 && dev < 64) optin_of[dev].store(optin, std::memory_order_relaxed);
  }
  return size_t(optin);
}

Status ensure_smem(const void* kernel, size_t bytes, const char* name) {
  const size_t optin = smem_optin_bytes();
  if (optin == 0) return make_error(StatusCode::DeviceError, std::string(name) + ": cannot query the device's shared memory limit");
  // The kernel's static shared memory counts against the same opt-in limit as the dynamic part
  // (asking for the whole opt-in as dynamic fails with cudaErrorInvalidValue when there is any).
  cudaFuncAttributes fa;
  GPTOSS_CUDA_CHECK(cudaFuncGetAttributes(&fa, kernel));
  if (bytes + fa.sharedSizeBytes > optin)
    return make_error(StatusCode::Unsupported, std::string(name) + " needs " + std::to_string(bytes) + " + " +
                                                   std::to_string(fa.sharedSizeBytes) +
                                                   " bytes of shared memory; this device allows " + std::to_string(optin));
  if (bytes <= 48 * 1024) return Status::Ok();
  static std::mutex mu;
  static std::unordered_map<const void*, size_t> raised;
  std::lock_guard<std::mutex> lock(mu);
  size_t& have = raised[kernel];
  if (have < bytes) {
    GPTOSS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    have = bytes;
  }
  return Status::Ok();
}

bool sm90_code_runnable(const void* kernel, bool exact_90) {
  if (cuda_force_portable()) return false;
  int dev = 0, major = 0, minor = 0;
  cudaFuncAttributes fa;
  const bool ok = cudaGetDevice(&dev) == cudaSuccess &&
                  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
                  (exact_90 ? major == 9 && minor == 0 : major >= 9) &&
                  cudaFuncGetAttributes(&fa, kernel) == cudaSuccess && fa.ptxVersion >= 90;
  cudaGetLastError();  // a failed query must not poison the next launch
  return ok;
}

}  // namespace gptoss
