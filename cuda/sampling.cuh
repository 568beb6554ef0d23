// Token sampling on the GPU (cuda/sampling.cu). Semantics: SampleParams / SamplingConfig in csrc/ops.h.
#pragma once

#include <cuda_runtime.h>

#include "device_errors.cuh"
#include "ops.h"

namespace gptoss {

constexpr int kSampleMaxVocab = 256 * 1024;  // 256 tiles of 1024 logits (gpt-oss: 201088)

// Per-sequence state, histograms and partial sums, sized once by the backend's reserve(). The
// kernels leave every counter and histogram at zero; the backend zero-fills the region when it
// allocates it.
struct SampleWorkspace {
  void* ptr = nullptr;
  size_t bytes = 0;
  int num_sms = 0;                      // of the device: sizes the grid
  DeviceErrorRecord* errors = nullptr;  // invalid sampling settings land here
};

size_t sample_workspace_bytes(int max_seqs);

// logits [S][ldl] f32 with V <= kSampleMaxVocab; cfg/counter/out_* are device arrays of S entries.
Status launch_sample(const SampleParams& p, const SampleWorkspace& ws, cudaStream_t stream);

}  // namespace gptoss
