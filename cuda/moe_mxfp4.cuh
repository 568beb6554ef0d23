// MXFP4 mixture of experts on CUDA (implemented by cuda-b in cuda/moe_mxfp4.cu).
// PRIVATE COPY in branch cuda-a of the interface fixed in the team brief; cuda-b's header (which
// also documents the device layout of the MXFP4 tensors) replaces it on merge.
#pragma once

#include <cuda_runtime.h>

#include "backend.h"
#include "common.h"
#include "ops.h"

namespace gptoss {

size_t moe_workspace_bytes(const BackendLimits& limits);  // scratch for launch_moe_mxfp4
Status launch_moe_mxfp4(const MoEParams& p, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Device copy of one MXFP4 checkpoint tensor (kind Mxfp4Blocks or Mxfp4Scales), possibly re-laid-out
// for the kernels. The backend allocates `*bytes` and calls mxfp4_upload, which copies (via a pinned
// or pageable staging buffer) and re-lays-out on the way.
Status mxfp4_device_bytes(WeightKind kind, const int64_t* shape, int ndim, size_t* bytes);
Status mxfp4_upload(WeightKind kind, const void* host, size_t host_bytes, const int64_t* shape, int ndim,
                    void* dev, cudaStream_t stream);

}  // namespace gptoss
