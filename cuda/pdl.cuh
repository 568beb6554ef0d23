// Programmatic dependent launch (sm_90): a kernel launched with the attribute may start while its
// predecessor on the stream still runs, once every block of the predecessor has called
// pdl_launch_dependents() (or exited); it must call pdl_wait() before it touches anything the
// predecessor writes (pdl_wait returns when the predecessor has completed and its writes are
// visible). Both are no-ops when the launch did not ask for it, and compiled out below sm_90.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "cuda_check.cuh"

namespace gptoss {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Launches kernel<<<grid, threads, smem, stream>>>(args...) in thread-block clusters of
// `cluster_x` blocks along x (0: no cluster attribute; sm_90), with programmatic stream
// serialisation when `pdl` (the caller decides: sm_90 and not disabled), checking the launch.
template <class... KArgs, class... Args>
Status launch_pdl_cluster(void (*kernel)(KArgs...), dim3 grid, dim3 threads, size_t smem, unsigned cluster_x, bool pdl,
                          cudaStream_t stream, const char* name, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = threads;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (cluster_x > 0) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster_x;
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  GPTOSS_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
  GPTOSS_CUDA_LAUNCH_CHECK(name);
  return Status::Ok();
}

// launch_pdl_cluster without clusters.
template <class... KArgs, class... Args>
Status launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 threads, size_t smem, bool pdl, cudaStream_t stream,
                  const char* name, Args&&... args) {
  return launch_pdl_cluster(kernel, grid, threads, smem, 0, pdl, stream, name, std::forward<Args>(args)...);
}

}  // namespace gptoss
