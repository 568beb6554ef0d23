// Host checks of the CUDA MXFP4 device layout (cuda/mxfp4_layout.cuh), runnable without a GPU:
// the nibble packing round-trips through the kernels' shift-and-mask unpacking to the exact FP4
// values, and a chunk-by-chunk replay of what the MoE kernels feed the tensor cores (lane layout
// and k permutation of cuda/mma_sm80.cuh, rows of the 16-row tiles, scales) reproduces the
// checkpoint's row . x dot products exactly (float64, power-of-two data: no rounding anywhere).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "../../cuda/mxfp4_layout.cuh"

using namespace gptoss;

static int failures = 0;
#define CHECK(cond, ...)                                 \
  do {                                                   \
    if (!(cond)) {                                       \
      ++failures;                                        \
      if (failures <= 20) {                              \
        std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
        std::printf(__VA_ARGS__);                        \
        std::printf("\n");                               \
      }                                                  \
    }                                                    \
  } while (0)

// bf16 bits of fp4 * 2^-126, times 2^126: what one bf16x2 multiply by 2^126 gives on the GPU.
static double unpacked_value(uint32_t reg_bits, int half) {
  const uint16_t b = uint16_t(reg_bits >> (16 * half));
  return double(bf16_to_f32(b)) * std::ldexp(1.0, 126);
}

static void test_bit_positions_partition() {
  std::vector<int> seen(32, 0);
  for (int reg = 0; reg < 4; ++reg)
    for (int half = 0; half < 2; ++half)
      for (int bit = 0; bit < 4; ++bit) seen[mxfp4_bit_pos(reg, half, bit)]++;
  for (int i = 0; i < 32; ++i) CHECK(seen[i] == 1, "bit %d used %d times", i, seen[i]);
}

static void test_word_round_trip() {
  std::mt19937 rng(1);
  for (int trial = 0; trial < 20000; ++trial) {
    uint8_t code[4][2];
    for (int reg = 0; reg < 4; ++reg)
      for (int half = 0; half < 2; ++half) code[reg][half] = uint8_t(trial < 16 ? trial : rng() & 15u);
    uint32_t out[4];
    mxfp4_unpack_word(mxfp4_pack_word(code), out);
    for (int reg = 0; reg < 4; ++reg)
      for (int half = 0; half < 2; ++half) {
        const double want = fp4_e2m1_value(code[reg][half]);
        const double got = unpacked_value(out[reg], half);
        CHECK(got == want || (want == 0.0 && got == 0.0), "code %d reg %d half %d: got %g want %g", code[reg][half],
              reg, half, got, want);
      }
  }
}

// The one-multiply scale path: for s < 128 both halves of each mxfp4_scale_muls_bf16x2 are 2^(s-1), and
// times an unpacked register (fp4 * 2^-126) the product fp4 * 2^(s-127) is an exact bf16 (so the
// GPU's rounded bf16 multiply returns it unchanged), subnormal results (s <= 1) included.
static void test_scale_multiplier() {
  for (uint32_t s = 0; s < 128; ++s) {
    const uint32_t bytes[4] = {(s * 37u + 11u) & 127u, 127u - s % 7, s, (s + 64u) & 127u};  // s in byte 2
    uint32_t muls[4];
    mxfp4_scale_muls_bf16x2(bytes[0] | bytes[1] << 8 | bytes[2] << 16 | bytes[3] << 24, muls);
    for (int i = 0; i < 4; ++i) {
      const double want_i = std::ldexp(1.0, int(bytes[i]) - 1);
      CHECK(double(bf16_to_f32(uint16_t(muls[i]))) == want_i && double(bf16_to_f32(uint16_t(muls[i] >> 16))) == want_i,
            "scale byte %u (position %d): multiplier %08x is not 2^(s-1)", bytes[i], i, muls[i]);
    }
    const double want_m = std::ldexp(1.0, int(s) - 1);
    for (int code = 0; code < 16; ++code) {
      uint8_t codes[4][2] = {{uint8_t(code), uint8_t(15 - code)}, {0, 0}, {0, 0}, {0, 0}};
      uint32_t out[4];
      mxfp4_unpack_word(mxfp4_pack_word(codes), out);
      for (int half = 0; half < 2; ++half) {
        const double prod = double(bf16_to_f32(uint16_t(out[0] >> (16 * half)))) * want_m;
        const double want = fp4_e2m1_value(codes[0][half]) * std::ldexp(1.0, int(s) - 127);
        const double as_bf16 = double(bf16_to_f32(f32_to_bf16(float(prod))));
        CHECK(prod == want && as_bf16 == prod, "code %d scale byte %u: %g x 2^(s-1) = %g, want %g (bf16 %g)",
              codes[0][half], s, double(bf16_to_f32(uint16_t(out[0] >> (16 * half)))), prod, want, as_bf16);
      }
    }
  }
}

static void test_tile_rows() {
  std::vector<int> seen(16, 0);
  for (int rho = 0; rho < 16; ++rho) seen[mxfp4_tile_row(rho)]++;
  for (int i = 0; i < 16; ++i) CHECK(seen[i] == 1, "tile row %d used %d times", i, seen[i]);
  for (int rho = 0; rho < 8; ++rho) CHECK(mxfp4_tile_row(rho + 8) == mxfp4_tile_row(rho) + 1, "glu/linear pair %d", rho);
}

// Replays the kernels' view of one expert (R rows, G blocks) against x and compares every row's
// dot product with the checkpoint decode.
static void test_replay(int R, int G, uint32_t seed) {
  std::mt19937 rng(seed);
  const int K = 32 * G, chunks = mxfp4_chunks(G), tiles = R / 16;
  std::vector<uint8_t> blocks(size_t(R) * G * 16), scales(size_t(R) * G);
  for (auto& b : blocks) b = uint8_t(rng());
  for (auto& s : scales) s = uint8_t(117 + rng() % 20);
  std::vector<double> x(K);
  for (auto& v : x) v = std::ldexp(double(int(rng() % 15) - 7), -int(rng() % 4));

  // Checkpoint reference.
  std::vector<double> ref(R, 0.0);
  for (int row = 0; row < R; ++row)
    for (int k = 0; k < K; ++k) {
      const uint8_t byte = blocks[(size_t(row) * G + k / 32) * 16 + (k % 32) / 2];
      const double w = fp4_e2m1_value(k % 2 ? byte >> 4 : byte & 15u) * std::ldexp(1.0, scales[size_t(row) * G + k / 32] - 127);
      ref[row] += w * x[k];
    }

  // Device layout built with the same functions the upload kernels use.
  std::vector<uint32_t> dev_blocks(size_t(tiles) * chunks * 32 * 4);
  std::vector<uint32_t> dev_scales(size_t(tiles) * chunks * 8);
  for (int t = 0; t < tiles; ++t)
    for (int j = 0; j < chunks; ++j) {
      for (int lane = 0; lane < 32; ++lane) {
        const int r = lane / 4, c = lane % 4;
        const uint8_t* a = &blocks[size_t(t * 16 + mxfp4_tile_row(r)) * G * 16];
        const uint8_t* b = &blocks[size_t(t * 16 + mxfp4_tile_row(r + 8)) * G * 16];
        mxfp4_pack_lane(a, b, G, j, c, &dev_blocks[mxfp4_block_offset(t, chunks, j) / 4 + lane * 4]);
      }
      for (int r = 0; r < 8; ++r)
        dev_scales[mxfp4_scale_offset(t, chunks, j) / 4 + r] =
            mxfp4_pack_scales(&scales[size_t(t * 16 + mxfp4_tile_row(r)) * G], &scales[size_t(t * 16 + mxfp4_tile_row(r + 8)) * G], G, j);
    }

  // Replay: lane (r, c), step s = 2h + q, A registers {a0a1, a2a3, a4a5, a6a7} = rows
  // {r, r+8, r, r+8} at k {base, base, base+2, base+2} (+0 / +1 halves), scale of block 2j + h.
  std::vector<double> got(R, 0.0);
  for (int t = 0; t < tiles; ++t)
    for (int j = 0; j < chunks; ++j)
      for (int h = 0; h < 2; ++h) {
        if (j * 64 + 32 * h >= K) continue;  // the kernels skip the pad half
        for (int lane = 0; lane < 32; ++lane) {
          const int r = lane / 4, c = lane % 4;
          const uint32_t sc = dev_scales[mxfp4_scale_offset(t, chunks, j) / 4 + r];
          const double s_r = std::ldexp(1.0, int((sc >> (16 * h)) & 255u) - 127);
          const double s_r8 = std::ldexp(1.0, int((sc >> (16 * h + 8)) & 255u) - 127);
          for (int q = 0; q < 2; ++q) {
            uint32_t A[4];
            mxfp4_unpack_word(dev_blocks[mxfp4_block_offset(t, chunks, j) / 4 + lane * 4 + 2 * h + q], A);
            const int base = j * 64 + 32 * h + 8 * c + 4 * q;
            const int rows[4] = {r, r + 8, r, r + 8};
            const int ks[4] = {base, base, base + 2, base + 2};
            for (int reg = 0; reg < 4; ++reg)
              for (int half = 0; half < 2; ++half) {
                const int row = t * 16 + mxfp4_tile_row(rows[reg]);
                const double s = rows[reg] < 8 ? s_r : s_r8;
                got[row] += unpacked_value(A[reg], half) * s * x[ks[reg] + half];
              }
          }
        }
      }
  for (int row = 0; row < R; ++row)
    CHECK(got[row] == ref[row], "R=%d G=%d row %d: replay %.17g vs checkpoint %.17g", R, G, row, got[row], ref[row]);
}

// The wgmma prefill path (cuda/moe_mxfp4_wgmma_rs.cu): each warp's A registers (as in
// test_replay) meet activations stored in prefill k order, read in the mma fragment's logical slot
// order: register pair {a0a1} of lane (r, c) in step s covers slots 2c, 2c + 1 of row r, {a2a3}
// the same slots of row r + 8, {a4a5} / {a6a7} slots 2c + 8, 2c + 9; slot t reads activation
// position 16 s + t of the chunk. The dot products must equal the checkpoint's, and the two
// permutation functions must be inverse bijections.
static void test_prefill_order(int R, int G, uint32_t seed) {
  for (int o = 0; o < 64; ++o) {
    CHECK(mxfp4_prefill_offset(mxfp4_prefill_pos(o)) == o, "prefill order: offset(pos(%d)) != %d", o, o);
    CHECK((mxfp4_prefill_pos(o) & 1) == (o & 1), "prefill order splits the pair of %d", o);
    CHECK(o >= 32 || mxfp4_prefill_pos(o) < 32, "prefill order moves %d out of the first half", o);
  }
  std::mt19937 rng(seed);
  const int K = 32 * G, chunks = mxfp4_chunks(G), tiles = R / 16;
  std::vector<uint8_t> blocks(size_t(R) * G * 16), scales(size_t(R) * G);
  for (auto& b : blocks) b = uint8_t(rng());
  for (auto& s : scales) s = uint8_t(117 + rng() % 20);
  std::vector<double> x(K), xp(size_t(chunks) * 64, 0.0);  // natural and prefill order (pad: 0)
  for (auto& v : x) v = std::ldexp(double(int(rng() % 15) - 7), -int(rng() % 4));
  for (int k = 0; k < K; ++k) xp[size_t(k & ~63) + mxfp4_prefill_pos(k & 63)] = x[k];
  std::vector<double> ref(R, 0.0), got(R, 0.0);
  for (int row = 0; row < R; ++row)
    for (int k = 0; k < K; ++k) {
      const uint8_t byte = blocks[(size_t(row) * G + k / 32) * 16 + (k % 32) / 2];
      ref[row] += fp4_e2m1_value(k % 2 ? byte >> 4 : byte & 15u) * std::ldexp(1.0, scales[size_t(row) * G + k / 32] - 127) * x[k];
    }
  for (int t = 0; t < tiles; ++t)
    for (int j = 0; j < chunks; ++j)
      for (int lane = 0; lane < 32; ++lane) {
        const int r = lane / 4, c = lane % 4;
        uint32_t w[4];
        mxfp4_pack_lane(&blocks[size_t(t * 16 + mxfp4_tile_row(r)) * G * 16], &blocks[size_t(t * 16 + mxfp4_tile_row(r + 8)) * G * 16],
                        G, j, c, w);
        const uint32_t sc = mxfp4_pack_scales(&scales[size_t(t * 16 + mxfp4_tile_row(r)) * G],
                                              &scales[size_t(t * 16 + mxfp4_tile_row(r + 8)) * G], G, j);
        for (int s = 0; s < 4; ++s) {  // all four steps: the pad half has zero codes and zero activations
          const int h = s >> 1;
          uint32_t A[4];
          mxfp4_unpack_word(w[s], A);
          const int rows[4] = {r, r + 8, r, r + 8};
          const int slot0[4] = {2 * c, 2 * c, 2 * c + 8, 2 * c + 8};
          for (int reg = 0; reg < 4; ++reg)
            for (int half = 0; half < 2; ++half) {
              const int row = t * 16 + mxfp4_tile_row(rows[reg]);
              const double scale = std::ldexp(1.0, int((sc >> (16 * h + 8 * (rows[reg] >= 8))) & 255u) - 127);
              got[row] += unpacked_value(A[reg], half) * scale * xp[size_t(j) * 64 + 16 * s + slot0[reg] + half];
            }
        }
      }
  for (int row = 0; row < R; ++row)
    CHECK(got[row] == ref[row], "prefill order R=%d G=%d row %d: %.17g vs checkpoint %.17g", R, G, row, got[row], ref[row]);
}

int main() {
  test_bit_positions_partition();
  test_word_round_trip();
  test_scale_multiplier();
  test_tile_rows();
  test_replay(16, 1, 11);   // one half chunk
  test_replay(32, 3, 12);   // one full + one half chunk
  test_replay(48, 4, 13);   // two full chunks
  test_replay(64, 90, 14);  // gpt-oss K = 2880
  test_prefill_order(16, 1, 31);   // one half chunk
  test_prefill_order(32, 3, 32);   // one full + one half chunk
  test_prefill_order(64, 90, 33);  // gpt-oss K = 2880
  if (failures) {
    std::printf("test_mxfp4_layout: %d failures\n", failures);
    return 1;
  }
  std::printf("test_mxfp4_layout: all passed\n");
  return 0;
}
