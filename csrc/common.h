// Shared by host C++ and CUDA: status codes, dtypes and bf16 bit conversions.
// Every fallible function in csrc/ and cuda/ returns a Status; csrc/bindings.cpp turns a non-ok
// Status into a Python exception (see status_to_exception there). Nothing here ever exits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#if defined(__CUDACC__)
#define GPTOSS_HD __host__ __device__ __forceinline__
#else
#define GPTOSS_HD inline
#endif

namespace gptoss {

enum class StatusCode : int32_t {
  Ok = 0,
  InvalidArgument,  // -> ValueError
  OutOfMemory,      // -> MemoryError (message says how much was needed and how much was free)
  Unsupported,      // -> NotImplementedError (config, dtype or device that this build cannot run)
  IoError,          // -> OSError
  DeviceError,      // -> RuntimeError (CUDA call failed, no GPU, driver too old)
  Internal,         // -> RuntimeError
};

struct Status {
  StatusCode code = StatusCode::Ok;
  std::string message;
  bool ok() const { return code == StatusCode::Ok; }
  static Status Ok() { return Status{}; }
};

inline Status make_error(StatusCode code, std::string message) { return Status{code, std::move(message)}; }

#define GPTOSS_RETURN_IF_ERROR(expr)          \
  do {                                        \
    ::gptoss::Status _gptoss_s = (expr);      \
    if (!_gptoss_s.ok()) return _gptoss_s;    \
  } while (0)

enum class DType : int32_t { F32 = 0, BF16 = 1, F16 = 2, U8 = 3, I32 = 4 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::BF16: case DType::F16: return 2;
    case DType::U8: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::U8: return "U8";
    case DType::I32: return "I32";
  }
  return "?";
}

// bfloat16 as raw bits on the host. CUDA code reinterprets these buffers as __nv_bfloat16.
using bf16_t = uint16_t;

GPTOSS_HD float bf16_to_f32(bf16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays NaN (quiet bit forced so rounding cannot turn it into Inf).
GPTOSS_HD bf16_t f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t(u >> 16);
}

// IEEE half -> float (used only at load time, for checkpoints that store dense tensors as F16).
inline float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((man & 0x400u) == 0) { man <<= 1; --exp; }
      u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// FP4 E2M1 code -> value (bit 3 is the sign). Shared by every MXFP4 decoder and the tests.
GPTOSS_HD float fp4_e2m1_value(unsigned code) {
  const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  float v = mag[code & 7u];
  return (code & 8u) ? -v : v;
}

// E8M0 scale byte -> 2^(s-127), exactly (s = 0 gives 2^-127, a subnormal; 255 is not special-cased,
// matching the reference's ldexp).
GPTOSS_HD float e8m0_to_f32(uint8_t s) {
  uint32_t u = s == 0 ? 0x00400000u : (uint32_t(s) << 23);
  float f;
  memcpy(&f, &u, 4);
  return f;
}

}  // namespace gptoss
