// Upload of MXFP4 checkpoint tensors into the CUDA device layout (documented in moe_mxfp4.cuh;
// index math and nibble packing in mxfp4_layout.cuh).
//
// The checkpoint bytes are copied to a temporary device staging buffer a few row tiles at a time
// and re-laid-out there by one kernel per kind, so the host only streams bytes (no per-nibble CPU
// work for 13-65 GB of experts). The source is [tiles * 16 rows][G][16] (blocks) or
// [tiles * 16 rows][G] (scales): expert boundaries are tile boundaries since R % 16 == 0, so the
// whole tensor is one run of E * R / 16 tiles.
#include <algorithm>
#include <string>

#include "cuda_check.cuh"
#include "moe_mxfp4.cuh"
#include "mxfp4_layout.cuh"

namespace gptoss {
namespace {

struct Mxfp4Shape {
  int64_t E = 1, R = 0, G = 0;
};

Status parse_shape(WeightKind kind, const int64_t* shape, int ndim, Mxfp4Shape* s) {
  auto dims = [&] {
    std::string d = "(";
    for (int i = 0; i < ndim; ++i) d += (i ? ", " : "") + std::to_string(shape[i]);
    return d + ")";
  };
  if (kind == WeightKind::Mxfp4Blocks) {
    if ((ndim != 4 && ndim != 3) || shape[ndim - 1] != kMxfp4BlockBytes)
      return make_error(StatusCode::InvalidArgument, "MXFP4 blocks must be [E][rows][K/32][16] or [rows][K/32][16], got " + dims());
    s->E = ndim == 4 ? shape[0] : 1;
    s->R = shape[ndim - 3];
    s->G = shape[ndim - 2];
  } else if (kind == WeightKind::Mxfp4Scales) {
    if (ndim != 3 && ndim != 2)
      return make_error(StatusCode::InvalidArgument, "MXFP4 scales must be [E][rows][K/32] or [rows][K/32], got " + dims());
    s->E = ndim == 3 ? shape[0] : 1;
    s->R = shape[ndim - 2];
    s->G = shape[ndim - 1];
  } else {
    return make_error(StatusCode::InvalidArgument, "mxfp4 layout: weight kind is not Mxfp4Blocks or Mxfp4Scales");
  }
  if (s->E < 1 || s->R < 1 || s->G < 1 || s->R % kMxfp4TileRows != 0)
    return make_error(StatusCode::InvalidArgument,
                      "MXFP4 tensor " + dims() + ": the CUDA layout needs rows to be a positive multiple of 16");
  if (s->G > (1 << 24) || s->E * s->R > (int64_t(1) << 36))
    return make_error(StatusCode::InvalidArgument, "MXFP4 tensor " + dims() + " is too large");
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// kernels
// ---------------------------------------------------------------------------------------------

// One thread per (tile, chunk, lane): 16 packed bytes from 2 rows x 2 blocks x 4 bytes of source.
__global__ void u8_mxfp4_relayout_blocks(const uint8_t* src, uint8_t* dst, int64_t tiles, int G, int chunks) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= tiles * chunks * 32) return;
  const int lane = int(i & 31), j = int((i >> 5) % chunks);
  const int64_t tile = (i >> 5) / chunks;
  const int r = lane >> 2, c = lane & 3;
  const size_t row_bytes = size_t(G) * kMxfp4BlockBytes;
  const uint8_t* src_a = src + (size_t(tile) * kMxfp4TileRows + mxfp4_tile_row(r)) * row_bytes;
  const uint8_t* src_b = src + (size_t(tile) * kMxfp4TileRows + mxfp4_tile_row(r + 8)) * row_bytes;
  uint32_t out[4];
  mxfp4_pack_lane(src_a, src_b, G, j, c, out);
  *reinterpret_cast<uint4*>(dst + mxfp4_block_offset(size_t(tile), chunks, j) + lane * 16) =
      make_uint4(out[0], out[1], out[2], out[3]);
}

// One thread per (tile, chunk, lane row r): 4 scale bytes.
__global__ void u8_mxfp4_relayout_scales(const uint8_t* src, uint8_t* dst, int64_t tiles, int G, int chunks) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= tiles * chunks * 8) return;
  const int r = int(i & 7), j = int((i >> 3) % chunks);
  const int64_t tile = (i >> 3) / chunks;
  const uint8_t* sc_a = src + (size_t(tile) * kMxfp4TileRows + mxfp4_tile_row(r)) * size_t(G);
  const uint8_t* sc_b = src + (size_t(tile) * kMxfp4TileRows + mxfp4_tile_row(r + 8)) * size_t(G);
  *reinterpret_cast<uint32_t*>(dst + mxfp4_scale_offset(size_t(tile), chunks, j) + r * 4) =
      mxfp4_pack_scales(sc_a, sc_b, G, j);
}

// ---------------------------------------------------------------------------------------------
// launchers
// ---------------------------------------------------------------------------------------------
struct DeviceBuffer {
  void* p = nullptr;
  ~DeviceBuffer() {
    if (p) cudaFree(p);
  }
};

}  // namespace

Status mxfp4_device_bytes(WeightKind kind, const int64_t* shape, int ndim, size_t* bytes) {
  Mxfp4Shape s;
  GPTOSS_RETURN_IF_ERROR(parse_shape(kind, shape, ndim, &s));
  const size_t tiles = size_t(s.E * s.R / kMxfp4TileRows), chunks = size_t(mxfp4_chunks(int(s.G)));
  *bytes = tiles * chunks * (kind == WeightKind::Mxfp4Blocks ? kMxfp4ChunkBytes : kMxfp4ScaleChunkBytes);
  return Status::Ok();
}

// Cost: one pass over the tensor (host -> device at the PCIe/pageable rate, then a re-layout pass
// at device bandwidth); load time only.
Status mxfp4_upload(WeightKind kind, const void* host, size_t host_bytes, const int64_t* shape, int ndim, void* dev,
                    cudaStream_t stream) {
  Mxfp4Shape s;
  GPTOSS_RETURN_IF_ERROR(parse_shape(kind, shape, ndim, &s));
  const bool blocks = kind == WeightKind::Mxfp4Blocks;
  const size_t tile_src = size_t(kMxfp4TileRows) * size_t(s.G) * (blocks ? kMxfp4BlockBytes : 1);
  const int64_t tiles = s.E * s.R / kMxfp4TileRows;
  if (host_bytes != tile_src * size_t(tiles))
    return make_error(StatusCode::InvalidArgument, "mxfp4_upload: " + std::to_string(host_bytes) + " bytes given, shape needs " +
                                                       std::to_string(tile_src * size_t(tiles)));
  if (!host || !dev) return make_error(StatusCode::InvalidArgument, "mxfp4_upload: null host or device pointer");
  const int chunks = mxfp4_chunks(int(s.G));

  const size_t kStagingBytes = size_t(32) << 20;
  const int64_t per_copy = std::max<int64_t>(1, std::min<int64_t>(tiles, int64_t(kStagingBytes / tile_src)));
  DeviceBuffer stage;
  GPTOSS_CUDA_CHECK(cudaMalloc(&stage.p, size_t(per_copy) * tile_src));
  for (int64_t t0 = 0; t0 < tiles; t0 += per_copy) {
    const int64_t n = std::min(per_copy, tiles - t0);
    GPTOSS_CUDA_CHECK(cudaMemcpyAsync(stage.p, static_cast<const uint8_t*>(host) + size_t(t0) * tile_src,
                                      size_t(n) * tile_src, cudaMemcpyHostToDevice, stream));
    const int64_t threads = n * chunks * (blocks ? 32 : 8);
    const int block = 256;
    const unsigned grid = unsigned((threads + block - 1) / block);
    uint8_t* out = static_cast<uint8_t*>(dev);
    if (blocks) {
      u8_mxfp4_relayout_blocks<<<grid, block, 0, stream>>>(static_cast<const uint8_t*>(stage.p),
                                                             out + mxfp4_block_offset(size_t(t0), chunks, 0), n, int(s.G),
                                                             chunks);
      GPTOSS_CUDA_LAUNCH_CHECK("u8_mxfp4_relayout_blocks");
    } else {
      u8_mxfp4_relayout_scales<<<grid, block, 0, stream>>>(static_cast<const uint8_t*>(stage.p),
                                                             out + mxfp4_scale_offset(size_t(t0), chunks, 0), n, int(s.G),
                                                             chunks);
      GPTOSS_CUDA_LAUNCH_CHECK("u8_mxfp4_relayout_scales");
    }
  }
  // The staging buffer is reused by the next copy only after the kernel before it (stream order);
  // it may be freed only once the last kernel is done.
  GPTOSS_CUDA_CHECK(cudaStreamSynchronize(stream));
  return Status::Ok();
}

}  // namespace gptoss
