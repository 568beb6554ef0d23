// What a kernel may use on the current device: dynamic shared memory above the 48 KB default, and
// sm_90 features. Shared by every kernel family that needs either (one copy of each check).
#pragma once

#include <cstddef>

#include "cuda_check.cuh"

namespace gptoss {

// A/B knobs: true when the environment variable `name` is "0" (a kernel choice turned off). Read
// at each call; callers keep the answer in a static.
bool env_knob_off(const char* name);

// The current device's opt-in shared memory per block (static and dynamic together; 227 KB on sm_90,
// 99 KB on sm_120), cached per device; 0 when the query fails. For choosing a kernel that fits.
size_t smem_optin_bytes();

// Lets `kernel` launch with `bytes` of dynamic shared memory: an Unsupported status naming `name`
// when its static and dynamic shared memory together exceed the device's opt-in limit; otherwise
// raises the kernel's limit once per kernel and size (the attribute call is host-side and may
// synchronise with pending copies, so not on every launch).
Status ensure_smem(const void* kernel, size_t bytes, const char* name);

template <class... A>
Status ensure_smem(void (*kernel)(A...), size_t bytes, const char* name) {
  return ensure_smem(reinterpret_cast<const void*>(kernel), bytes, name);
}

// True when GPT_OSS_C_FORCE_PORTABLE=1 is not set, the current device has compute capability 9.0
// (`exact_90`: the sm_90a instructions wgmma and setmaxnreg exist on no other) or 9.0 and newer
// (otherwise: clusters, TMA-free distributed shared memory), and `kernel` was compiled as sm_90 code
// rather than compute_80 PTX JIT-compiled for this device (its arch-guarded body would then trap).
// Not cached: callers keep the answer for the process.
bool sm90_code_runnable(const void* kernel, bool exact_90);

template <class... A>
bool sm90_code_runnable(void (*kernel)(A...), bool exact_90) {
  return sm90_code_runnable(reinterpret_cast<const void*>(kernel), exact_90);
}

}  // namespace gptoss
