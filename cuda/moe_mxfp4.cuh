// The MXFP4 mixture of experts on CUDA (csrc/ops.h MoEParams), and the device layout of its
// weights.
//
// ---- MXFP4 device layout ----------------------------------------------------------------------
// mxfp4_upload turns a checkpoint tensor
//     blocks [E][R][G][16] u8 (byte j of a block: element 2j in the low nibble, 2j+1 in the high)
//     scales [E][R][G]     u8 (E8M0: value = fp4 * 2^(s - 127))
// (G = K/32; a 3-D blocks / 2-D scales tensor is read as E = 1) into the layout the kernels read
// with one 16-byte load per lane per 64-wide k chunk. R must be a multiple of 16; Kc = ceil(G/2)
// chunks, a last half chunk padded with zero codes (scale 127).
//
// Rows: tiles of 16 rows; in tile t, mma row rho < 8 holds checkpoint row 16t + 2 rho and rho >= 8
// holds 16t + 2(rho - 8) + 1. For mlp1 (rows interleaved glu 2i / linear 2i+1) the glu and linear
// rows of unit 8t + rho sit on mma rows rho and rho + 8, which one lane owns in the accumulator: the
// clamped SwiGLU is computed in registers. mlp2 has the same layout; its outputs 16t + 2 rho and
// 16t + 2 rho + 1 are adjacent, one 8-byte store.
//
// blocks -> [E * R/16 tiles][Kc][32 lanes][16 bytes]. Lane L = 4r + c holds tile rows r and r + 8
// at k = 64j + 32h + 8c + (0..7), h = 0, 1: its A operands for the 4 mma k16 steps of the chunk
// (the k permutation of mma_sm80.cuh). Word s = 2h + q holds step s: with base = 64j + 32h + 8c + 4q,
//     a0a1 = row r   at base+0, base+1        a2a3 = row r+8 at base+0, base+1
//     a4a5 = row r   at base+2, base+3        a6a7 = row r+8 at base+2, base+3
// and the 4-bit codes sit at bit positions chosen so each bf16x2 register is a rotate and a mask
// away (mxfp4_layout.cuh: bf16 bits sign << 15 | (code & 7) << 6 = fp4 * 2^-126, exact):
//     a0a1 = u & 0x81C081C0    a2a3 = rotl(u, 4) & 0x81C081C0    a4a5 = rotl(u, 10) & 0x81C081C0
//     a6a7 = (rotl(u, 6) & 0x80C080C0) | (rotl(u, 14) & 0x01000100)
// followed by bf16x2 multiplies by the scale (dequant_steps in moe_mxfp4_impl.cuh: one multiply by
// 2^(s-1) when every scale byte is < 128). Same byte count as the checkpoint (plus the pad).
// scales -> [E * R/16 tiles][Kc][8 rows r][4 bytes]: (row r, block 2j), (row r+8, block 2j),
// (row r, block 2j+1), (row r+8, block 2j+1); a lane reads its 4 bytes with one 32-bit load.
//
// ---- The op -----------------------------------------------------------------------------------
// mlp1 (writing z: bf16, one row per slot) and mlp2 (weighted partial rows) are one launch each,
// of the kernel family the step size (slots = T * k) selects:
//  * <= 32 (decode): the streaming kernels (moe_mxfp4_stream.cu): each group of warps finds its
//    active expert and that expert's slots itself (no routing pass) and streams one 16-row weight
//    tile's K through cp.async rings; the last group of each output tile adds the partials onto y
//    in slot order.
//  * <= 512 (batched decode): expert_route.cu sorts the slots by expert (stable) and cuts 16-row
//    tiles; moe_mxfp4_stream_batch.cu streams each block's weight tiles once per route tile.
//  * larger (prefill): expert_route.cu cuts larger tiles; grouped GEMMs over them
//    (moe_mxfp4_wgmma_rs.cu with wgmma on sm_90a, moe_mxfp4_gemm.cu with mma.sync elsewhere).
// On the routed paths expert_combine then adds the k partials of each token in slot order.
// Kernel internals: moe_mxfp4_impl.cuh.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backend.h"
#include "common.h"
#include "ops.h"

namespace gptoss {

// Scratch for launch_moe_mxfp4 at the largest step `limits` allows (max_tokens x top_k slots):
// about max_tokens * top_k * (2 I + 4 H) bytes (bf16 z, f32 partials) plus small index arrays.
// The buffer passed to launch_moe_mxfp4 must be 16-byte aligned (cudaMalloc's 256 is fine).
size_t moe_workspace_bytes(const BackendLimits& limits);

// y[t] += sum_j w[t, j] * (W2[e] swiglu(W1[e] x[t] + b1[e]) + b2[e]) (ops.h). x bf16 [T][ldx]
// (ldx % 8 == 0, 16-byte aligned), y f32 [T][ldy]; weights in the layout above. Requirements are
// checked (InvalidArgument / Unsupported). Slots whose expert index is outside [0, E) contribute
// nothing. Deterministic; no allocation or host sync (capture-safe). `pdl`: the decode paths launch
// mlp2 with programmatic dependent launch (the caller's decision, as DenseWorkspace::pdl: sm_90+,
// not GPT_OSS_C_FORCE_PORTABLE, not GPT_OSS_C_NO_PDL).
Status launch_moe_mxfp4(const MoEParams& p, void* workspace, size_t workspace_bytes, bool pdl, cudaStream_t stream);

// Device bytes of a checkpoint MXFP4 tensor in the layout above.
Status mxfp4_device_bytes(WeightKind kind, const int64_t* shape, int ndim, size_t* bytes);

// Copies `host` (host_bytes of checkpoint layout) to `dev` (mxfp4_device_bytes long), re-laid-out.
// Uses a temporary device staging buffer and synchronises `stream` before returning.
Status mxfp4_upload(WeightKind kind, const void* host, size_t host_bytes, const int64_t* shape, int ndim, void* dev,
                    cudaStream_t stream);

}  // namespace gptoss
