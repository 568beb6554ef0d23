// Number conversions of csrc/common.h: bf16 round-to-nearest-even (ties, overflow, NaN, signed
// zero, subnormals), the bf16 round trip of every bit pattern, f16 -> f32 for all 65536 halves
// against an ldexp formula, and E8M0 scales for all 256 bytes.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>

#include "check.h"
#include "common.h"
#include "cpu/simd.h"

using namespace gptoss;

static float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even computed the slow way: pick the closer of the two bf16 neighbours.
static uint16_t rne_reference(uint32_t u) {
  const uint16_t lo = uint16_t(u >> 16), hi = uint16_t(lo + 1);
  const uint32_t rest = u & 0xffffu;
  if (rest < 0x8000u) return lo;
  if (rest > 0x8000u) return hi;
  return (lo & 1) ? hi : lo;
}

int main() {
  CHECK(f32_to_bf16(1.0f) == 0x3f80, "1.0");
  CHECK(f32_to_bf16(from_bits(0x3f808000u)) == 0x3f80, "tie rounds to even (down)");
  CHECK(f32_to_bf16(from_bits(0x3f818000u)) == 0x3f82, "tie rounds to even (up)");
  CHECK(f32_to_bf16(from_bits(0x3f808001u)) == 0x3f81, "above the tie rounds up");
  CHECK(f32_to_bf16(from_bits(0x7f7fffffu)) == 0x7f80, "FLT_MAX rounds to +inf");
  CHECK(f32_to_bf16(-INFINITY) == 0xff80, "-inf");
  CHECK(f32_to_bf16(-0.0f) == 0x8000, "-0");
  CHECK(f32_to_bf16(from_bits(0x00018000u)) == 0x0002, "subnormal tie to even");
  for (uint32_t nan : {0x7f800001u, 0x7fffffffu, 0xff800001u, 0x7fc00000u}) {
    const uint16_t b = f32_to_bf16(from_bits(nan));
    CHECK((b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0, "NaN %08x became %04x", nan, b);
  }

  std::mt19937 gen(7);
  for (int i = 0; i < 2000000; ++i) {
    const uint32_t u = gen();
    if ((u & 0x7fffffffu) > 0x7f800000u) continue;  // NaNs checked above
    CHECK(f32_to_bf16(from_bits(u)) == rne_reference(u), "f32 %08x", u);
  }
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = bf16_to_f32(uint16_t(b));
    uint32_t u;
    std::memcpy(&u, &f, 4);
    CHECK(u == b << 16, "bf16 %04x widened to %08x", b, u);
    if ((b & 0x7fff) <= 0x7f80) CHECK(f32_to_bf16(f) == b, "bf16 %04x round trip", b);
  }

  for (uint32_t h = 0; h < 65536; ++h) {
    const int e = int(h >> 10) & 31, m = int(h & 0x3ff);
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    const float got = f16_to_f32(uint16_t(h));
    if (e == 31) {
      CHECK(m ? std::isnan(got) : (std::isinf(got) && std::signbit(got) == bool(h & 0x8000)), "f16 %04x", h);
      continue;
    }
    const double want = e == 0 ? sign * std::ldexp(double(m), -24) : sign * std::ldexp(1.0 + m / 1024.0, e - 15);
    CHECK(double(got) == want && std::signbit(got) == bool(h & 0x8000), "f16 %04x: %g != %g", h, double(got), want);
  }

  const float* table = e8m0_scale_table();
  for (int s = 0; s < 256; ++s) {
    const float want = std::ldexp(1.0f, s - 127);  // 2^-127 is subnormal, 2^128 overflows to inf
    CHECK(e8m0_to_f32(uint8_t(s)) == want && table[s] == want, "e8m0 %d: %g / %g != %g", s,
          double(e8m0_to_f32(uint8_t(s))), double(table[s]), double(want));
  }
  std::printf("conversions ok\n");
  return 0;
}
