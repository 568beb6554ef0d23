// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"), host and device.
// Sampling draws its one uniform per (sequence, position) from here, keyed by the user's seed and
// counted by the absolute position of the token being generated. So a seeded generation gives the
// same tokens on the CPU and on the GPU, whatever else shares the batch.
#pragma once

#include <cstdint>

#include "common.h"

namespace gptoss {

GPTOSS_HD uint32_t philox_mulhi(uint32_t a, uint32_t b, uint32_t* lo) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  *lo = uint32_t(p);
  return uint32_t(p >> 32);
}

// Returns the first of the four output words of Philox4x32-10 at counter (ctr, 0, 0, 0).
GPTOSS_HD uint32_t philox4x32_10(uint64_t key, uint64_t ctr) {
  uint32_t c0 = uint32_t(ctr), c1 = uint32_t(ctr >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t lo0, lo1;
    uint32_t hi0 = philox_mulhi(0xD2511F53u, c0, &lo0);
    uint32_t hi1 = philox_mulhi(0xCD9E8D57u, c2, &lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

// Uniform in [0, 1) with 24 random bits (exactly representable in fp32 on both backends).
GPTOSS_HD float philox_uniform(uint64_t seed, uint64_t counter) {
  return float(philox4x32_10(seed, counter) >> 8) * (1.0f / 16777216.0f);
}

}  // namespace gptoss
