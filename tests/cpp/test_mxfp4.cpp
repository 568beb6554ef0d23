// MXFP4 decoding as the kernels see it: the E2M1 table, the checkpoint's nibble order (byte j =
// element 2j low, 2j+1 high; 0xF1 -> +0.5, -6.0), E8M0 scaling, and the activation permutation.
// Each kernel level's decoded weight W[r][i] is read back exactly by dotting a row with a one-hot
// activation vector (one product with 1.0 plus exact zeros). Also the load-time scale hint.
#include <cstdint>
#include <random>
#include <vector>

#include "check.h"
#include "common.h"
#include "cpu/simd.h"
#include "ops.h"

using namespace gptoss;

int main() {
  const float spec[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
  for (unsigned c = 0; c < 16; ++c)
    CHECK(fp4_e2m1_value(c) == spec[c] && kFp4Value[c] == spec[c], "code %u", c);

  for (int i = 0; i < 96; ++i) {
    const int j = mxfp4_permuted_index(i);
    CHECK(j / 32 == i / 32 && (i % 2 ? j % 32 >= 16 : j % 32 < 16), "permuted index of %d is %d", i, j);
  }
  std::vector<float> x(96), xp(96);
  for (int i = 0; i < 96; ++i) x[i] = float(i);
  mxfp4_permute(x.data(), 96, xp.data());
  for (int i = 0; i < 96; ++i) CHECK(xp[mxfp4_permuted_index(i)] == x[i], "permute %d", i);

  // Two rows of 3 blocks; byte 0 of row 0 is the spec's example 0xF1.
  const int R = 2, nb = 3, K = nb * 32;
  std::mt19937 gen(11);
  std::vector<uint8_t> blocks(size_t(R) * nb * 16), scales(size_t(R) * nb);
  for (auto& b : blocks) b = uint8_t(gen());
  for (auto& s : scales) s = uint8_t(118 + gen() % 16);
  blocks[0] = 0xF1;
  scales[0] = 127;
  std::vector<float> want(size_t(R) * K);
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < K; ++i) {
      const uint8_t byte = blocks[(size_t(r) * nb + i / 32) * 16 + (i % 32) / 2];
      want[size_t(r) * K + i] = fp4_e2m1_value(i % 2 ? byte >> 4 : byte & 15) * e8m0_to_f32(scales[size_t(r) * nb + i / 32]);
    }
  CHECK(want[0] == 0.5f && want[1] == -6.0f, "0xF1 decodes to (%g, %g)", double(want[0]), double(want[1]));

  for (const char* level : {"scalar", "avx2", "avx512"}) {
    const SimdKernels* k = simd_kernels_for(level);
    if (!k) {
      std::printf("%s: not available on this CPU, skipped\n", level);
      continue;
    }
    for (int i = 0; i < K; ++i) {
      std::vector<float> onehot(K, 0.0f), permuted(K);
      onehot[i] = 1.0f;
      mxfp4_permute(onehot.data(), K, permuted.data());
      float out[2];
      k->gemv_mxfp4(blocks.data(), scales.data(), R, nb, permuted.data(), K, 1, out, 1);
      for (int r = 0; r < R; ++r)
        CHECK(out[r] == want[size_t(r) * K + i], "%s row %d element %d: %g != %g", level, r, i, double(out[r]),
              double(want[size_t(r) * K + i]));
    }
    std::printf("%s: mxfp4 decode exact\n", level);
  }
  std::printf("mxfp4 ok\n");
  // mxfp4_scales_below_128 (the MoE kernels' load-time dequantisation hint): one byte >= 128 at
  // any position -- in the 8-byte body or the tail, first or last -- clears it; 127 does not.
  for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(13), size_t(64), size_t(71)}) {
    std::vector<uint8_t> sc(n);
    for (auto& b : sc) b = uint8_t(gen() % 128);
    CHECK(mxfp4_scales_below_128(sc.data(), n), "n=%zu all below 128", n);
    for (size_t i = 0; i < n; ++i) {
      for (uint8_t big : {uint8_t(128), uint8_t(200), uint8_t(255)}) {
        const uint8_t keep = sc[i];
        sc[i] = big;
        CHECK(!mxfp4_scales_below_128(sc.data(), n), "n=%zu byte %zu = %u", n, i, unsigned(big));
        sc[i] = 127;
        CHECK(mxfp4_scales_below_128(sc.data(), n), "n=%zu byte %zu = 127", n, i);
        sc[i] = keep;
      }
    }
  }
  return 0;
}
