// The CUDA device layout of MXFP4 weights: index math and nibble packing, shared by the upload
// re-layout kernel (mxfp4_layout.cu), the MoE kernels (moe_mxfp4.cu) and a host unit test
// (tests/cpp/test_mxfp4_layout.cpp). Pure integer code, host and device; no CUDA types here.
// The layout itself is documented at the top of moe_mxfp4.cuh.
#pragma once

#include <cstdint>

#include "common.h"

namespace gptoss {

constexpr int kMxfp4TileRows = 16;        // rows per tile (one mma m16 tile)
constexpr int kMxfp4ChunkK = 64;          // k per chunk (two MXFP4 blocks)
constexpr int kMxfp4ChunkBytes = 512;     // packed codes of one (tile, chunk): 32 lanes x 16 bytes
constexpr int kMxfp4ScaleChunkBytes = 32; // scales of one (tile, chunk): 8 lane rows x 4 bytes

// Number of 64-wide chunks covering G blocks of 32 (a last odd block makes a half chunk).
GPTOSS_HD int mxfp4_chunks(int G) { return (G + 1) / 2; }

// Checkpoint row (within a 16-row tile) held by mma row rho: even rows in 0..7, odd rows in 8..15,
// so checkpoint rows 2i and 2i+1 (mlp1's glu and linear of one unit) land on mma rows i and i+8,
// both owned by the same lane in the mma accumulator.
GPTOSS_HD int mxfp4_tile_row(int rho) { return rho < 8 ? 2 * rho : 2 * (rho - 8) + 1; }

// Bit positions of the 4 code bits (mantissa, e0, e1, sign) of element `half` (0: lower k, 1:
// upper k) of A register `reg` (0: a0a1, 1: a2a3, 2: a4a5, 3: a6a7) inside a packed 32-bit word.
// A register needs its 8 code bits at the bf16 positions M = 0x81C081C0 (bits 6, 7, 8, 15 and
// +16). Registers 0..2 hold M rotated right by 0, 4 and 10 (unpacked by a rotate and a mask:
// 1 + 2 + 2 integer ops); register 3 takes the 8 bits left over, in two pieces rotated right by 6
// and 14 (4 ops). 9 integer ops per word: the decode kernels are bound by the integer pipe, and no
// assignment lets all four registers be a single rotate-and-mask (exhaustive search).
GPTOSS_HD int mxfp4_bit_pos(int reg, int half, int bit) {
  // Positions for the lower half; the upper half is +16 (mod 32).
  const int lo[4][4] = {{6, 7, 8, 15}, {2, 3, 4, 11}, {28, 29, 30, 5}, {0, 1, 26, 9}};
  return (lo[reg][bit] + 16 * half) & 31;
}

// Packs 8 FP4 codes: code[reg][half] (4 bits each, checkpoint encoding).
GPTOSS_HD uint32_t mxfp4_pack_word(const uint8_t code[4][2]) {
  uint32_t u = 0;
  for (int reg = 0; reg < 4; ++reg)
    for (int half = 0; half < 2; ++half)
      for (int bit = 0; bit < 4; ++bit) u |= uint32_t((code[reg][half] >> bit) & 1u) << mxfp4_bit_pos(reg, half, bit);
  return u;
}

// u rotated left by t (0 < t < 32): one funnel shift on the GPU.
GPTOSS_HD uint32_t mxfp4_rotl(uint32_t u, int t) {
#ifdef __CUDA_ARCH__
  return __funnelshift_l(u, u, t);
#else
  return (u << t) | (u >> (32 - t));
#endif
}

// Unpacks a word into 4 bf16x2 registers holding fp4 * 2^-126 (bf16 bits sign << 15 |
// (code & 7) << 6: exponent field e1e0, mantissa msb m, which is exact including the e = 0
// subnormal code 0.5). A bf16 multiply by the scale (times 2^126) then gives the exact weights.
GPTOSS_HD void mxfp4_unpack_word(uint32_t u, uint32_t out[4]) {
  const uint32_t m = 0x81C081C0u;
  out[0] = u & m;
  out[1] = mxfp4_rotl(u, 4) & m;
  out[2] = mxfp4_rotl(u, 10) & m;
  out[3] = (mxfp4_rotl(u, 6) & 0x80C080C0u) | (mxfp4_rotl(u, 14) & 0x01000100u);
}

// __byte_perm on the GPU: byte n of the result is byte (s >> 4n) & 7 of the 8 bytes {y, x} (x low).
GPTOSS_HD uint32_t mxfp4_byte_perm(uint32_t x, uint32_t y, uint32_t s) {
#ifdef __CUDA_ARCH__
  return __byte_perm(x, y, s);
#else
  const uint64_t v = uint64_t(y) << 32 | x;
  uint32_t r = 0;
  for (int n = 0; n < 4; ++n) r |= uint32_t((v >> (8 * ((s >> (4 * n)) & 7))) & 0xffu) << (8 * n);
  return r;
#endif
}

// The bf16 pairs (2^(s_i-1), 2^(s_i-1)) for the 4 scale bytes s_i of a packed scale word, all
// s_i < 128: the exponent field s_i + 126 in bits 7..14 and 23..30 (a carry-free byte add, then
// byte i into bytes 1 and 3, shifted right by one). Times an unpacked register (fp4 * 2^-126,
// above) it gives the dequantised weight fp4 * 2^(s-127) in one exact multiply; for s >= 128,
// 2^(s-1) is not a bf16 and the kernels multiply by 2^126 and 2^(s-127) instead.
GPTOSS_HD void mxfp4_scale_muls_bf16x2(uint32_t packed, uint32_t m[4]) {
  const uint32_t v = packed + 0x7E7E7E7Eu;
  m[0] = mxfp4_byte_perm(v, 0u, 0x0404u) >> 1;
  m[1] = mxfp4_byte_perm(v, 0u, 0x1414u) >> 1;
  m[2] = mxfp4_byte_perm(v, 0u, 0x2424u) >> 1;
  m[3] = mxfp4_byte_perm(v, 0u, 0x3434u) >> 1;
}

// "Prefill k order" (moe_mxfp4_wgmma_rs.cu): the order in which a 64-wide k chunk of activations
// must sit in shared memory so that wgmma, which reads its shared-memory operand in natural order,
// pairs element 16s + t with mma k slot t of step s of the A registers above (slot t of step
// s = 2h + q holds k = 32h + 8((t & 7) >> 1) + 4q + 2(t >> 3) + (t & 1)). Offset o -> position, and
// back; both keep pairs together (o even <-> position even).
GPTOSS_HD int mxfp4_prefill_pos(int o) {
  const int h = o >> 5, c = (o >> 3) & 3, q = (o >> 2) & 1, hi = (o >> 1) & 1;
  return 16 * (2 * h + q) + 2 * c + (o & 1) + 8 * hi;
}
GPTOSS_HD int mxfp4_prefill_offset(int p) {
  const int s = p >> 4, t = p & 15;
  return 32 * (s >> 1) + 8 * ((t & 7) >> 1) + 4 * (s & 1) + 2 * (t >> 3) + (t & 1);
}

// Byte offsets of tile `tile` (global over experts: e * R/16 + row tile), chunk j.
GPTOSS_HD size_t mxfp4_block_offset(size_t tile, int chunks, int j) {
  return (tile * size_t(chunks) + size_t(j)) * kMxfp4ChunkBytes;
}
GPTOSS_HD size_t mxfp4_scale_offset(size_t tile, int chunks, int j) {
  return (tile * size_t(chunks) + size_t(j)) * kMxfp4ScaleChunkBytes;
}

// The 16 bytes of lane (r, c) of chunk j of one tile, from the checkpoint rows of that tile:
// src_a = checkpoint row mxfp4_tile_row(r), src_b = mxfp4_tile_row(r + 8), each [G][16] bytes.
// Word s = 2h + q covers k = 64j + 32h + 8c + 4q + (0..3) (block 2j + h, bytes 4c + 2q and
// 4c + 2q + 1 of it); blocks past G are zero codes.
GPTOSS_HD void mxfp4_pack_lane(const uint8_t* src_a, const uint8_t* src_b, int G, int j, int c, uint32_t out[4]) {
  for (int s = 0; s < 4; ++s) {
    const int h = s >> 1, q = s & 1, g = 2 * j + h;
    uint8_t code[4][2] = {{0, 0}, {0, 0}, {0, 0}, {0, 0}};
    if (g < G) {
      const uint8_t* a = src_a + size_t(g) * 16 + 4 * c + 2 * q;
      const uint8_t* b = src_b + size_t(g) * 16 + 4 * c + 2 * q;
      const uint8_t bytes[4] = {a[0], b[0], a[1], b[1]};  // a0a1, a2a3, a4a5, a6a7
      for (int reg = 0; reg < 4; ++reg) {
        code[reg][0] = bytes[reg] & 15u;
        code[reg][1] = bytes[reg] >> 4;
      }
    }
    out[s] = mxfp4_pack_word(code);
  }
}

// The 4 scale bytes of lane row r of chunk j: (row r, block 2j), (row r+8, block 2j),
// (row r, block 2j+1), (row r+8, block 2j+1). sc_a / sc_b are the [G] scales of those rows;
// a pad block gets 127 (2^0; its codes are zero anyway).
GPTOSS_HD uint32_t mxfp4_pack_scales(const uint8_t* sc_a, const uint8_t* sc_b, int G, int j) {
  const int g0 = 2 * j, g1 = 2 * j + 1;
  const uint32_t b0 = sc_a[g0], b1 = sc_b[g0];
  const uint32_t b2 = g1 < G ? sc_a[g1] : 127u, b3 = g1 < G ? sc_b[g1] : 127u;
  return b0 | (b1 << 8) | (b2 << 16) | (b3 << 24);
}

}  // namespace gptoss
