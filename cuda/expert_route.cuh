// Token -> expert permutation for the MoE (csrc/ops.h MoEParams), and the weighted combine back
// onto the residual.
//
// Slots: slot i = t * k + j is token t's j-th chosen expert expert_idx[i]. launch_expert_route sorts
// the slots by expert, stably (ties keep slot order), so the result depends only on expert_idx:
//   expert_off [E + 1]       rows of expert e are sorted rows [expert_off[e], expert_off[e + 1])
//   sorted_slot[T * k]       slot of each sorted row
//   tiles                    each expert's rows cut into tiles of `tile_rows` rows:
//   tile_expert[max_tiles], tile_row0[max_tiles] (first sorted row), n_tiles[1] (how many)
// Slots whose expert is outside [0, E) are left out (they contribute nothing).
//
// launch_expert_combine: y[t, :] += sum_{j < k, expert valid} partial[t * k + j, :], the k terms
// summed in slot order in f32 and then added to y: deterministic, no atomics.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"

namespace gptoss {

constexpr int kRouteMaxExperts = 256;

struct ExpertRouteParams {
  const int32_t* expert_idx = nullptr;  // [T * k]
  int T = 0, k = 0, E = 0;
  int tile_rows = 0;                    // rows per tile (the MoE kernel's token tile)
  int32_t* expert_off = nullptr;        // [E + 1]
  int32_t* sorted_slot = nullptr;       // [T * k]
  int32_t* tile_expert = nullptr;       // [expert_route_max_tiles(...)]
  int32_t* tile_row0 = nullptr;         // [expert_route_max_tiles(...)]
  int32_t* n_tiles = nullptr;           // [1]
};

// Upper bound on the number of tiles for `slots` = T * k slots (the grid size of the MoE kernels).
int expert_route_max_tiles(int slots, int E, int tile_rows);

Status launch_expert_route(const ExpertRouteParams& p, cudaStream_t stream);

struct ExpertCombineParams {
  const float* partial = nullptr;       // [T * k][H], already weighted
  const int32_t* expert_idx = nullptr;  // [T * k]
  float* y = nullptr;  int ldy = 0;     // [T][ldy] residual
  int T = 0, k = 0, E = 0, H = 0;
};

Status launch_expert_combine(const ExpertCombineParams& p, cudaStream_t stream);

}  // namespace gptoss
