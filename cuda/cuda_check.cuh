// One checking macro for every CUDA runtime call and every launch. A failure becomes a
// Status{DeviceError} naming the call, file, line and device; nothing here exits or throws.
// Build with -DGPT_OSS_C_CUDA_DEBUG_SYNC=ON to synchronise after each launch, so that an
// asynchronous fault is reported at the launch that caused it.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "common.h"

namespace gptoss {

inline Status cuda_status(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return Status::Ok();
  cudaGetLastError();  // consume a non-sticky error so the next launch check does not report it again
  int dev = -1;
  cudaGetDevice(&dev);
  StatusCode code = err == cudaErrorMemoryAllocation ? StatusCode::OutOfMemory : StatusCode::DeviceError;
  return make_error(code, std::string("CUDA error ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                              ") in " + what + " at " + file + ":" + std::to_string(line) + " on device " +
                              std::to_string(dev));
}

}  // namespace gptoss

#define GPTOSS_CUDA_CHECK(call) \
  GPTOSS_RETURN_IF_ERROR(::gptoss::cuda_status((call), #call, __FILE__, __LINE__))

#ifdef GPT_OSS_C_CUDA_DEBUG_SYNC
#define GPTOSS_CUDA_LAUNCH_CHECK(kernel_name)                                                        \
  do {                                                                                              \
    GPTOSS_RETURN_IF_ERROR(::gptoss::cuda_status(cudaGetLastError(), kernel_name, __FILE__, __LINE__)); \
    GPTOSS_RETURN_IF_ERROR(::gptoss::cuda_status(cudaDeviceSynchronize(), kernel_name, __FILE__, __LINE__)); \
  } while (0)
#else
#define GPTOSS_CUDA_LAUNCH_CHECK(kernel_name) \
  GPTOSS_RETURN_IF_ERROR(::gptoss::cuda_status(cudaGetLastError(), kernel_name, __FILE__, __LINE__))
#endif
