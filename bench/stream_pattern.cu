// DRAM read rate of the decode MoE's access pattern, without its arithmetic (bench/NOTES.md, session 9:
// a deeper ring and fewer instructions per chunk both left the stream kernel at ~1.9 TB/s). Every
// case reads the same bytes once per call, rotating over enough copies to span 4x the L2 (cold), and
// XORs what it read into one word per thread (so nothing is optimised away):
//   seq        grid-stride 16-byte loads over the whole buffer (the copy ceiling's read half);
//   ring D W   the stream kernel's shape: W warps, each reading its own contiguous region in 512-byte
//              chunks (16 bytes per lane) through a D-stage cp.async ring in shared memory, plus
//              32 bytes of "scales" per chunk from a second array (8 lanes x 4 bytes), 8 warps per
//              block at 4 blocks per SM;
//   ldg W      the same regions, each lane issuing all of its loads of a region before using any;
//   pair       mlp1's read (35.3 MB) then mlp2's (17.6 MB) in the ring pattern, back to back: plain
//              launches, with programmatic dependent launch (the second waits, then loads), and with
//              PDL and the second's first ring stages loaded before griddepcontrol.wait (as the MoE
//              does): how much of a kernel's ramp and tail PDL hides for pure streams.
// Build and run on the GPU machine:
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Icsrc -Icuda -o build/bench/stream_pattern \
//     bench/stream_pattern.cu && build/bench/stream_pattern
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "mma_sm80.cuh"

using namespace gptoss;

#define CHECK(x)                                                                           \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      return 1;                                                                            \
    }                                                                                      \
  } while (0)

__global__ void seq_read(const uint4* p, size_t n, uint32_t* out) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

constexpr int kChunk = 512, kScale = 32, kStage = kChunk + 128;

// Warp w reads chunks [w * nc, (w + 1) * nc) of codes (512 B each) and scales (32 B each).
// kPdl: 0 none; 1 let dependents launch at once (a primary); 2 griddepcontrol.wait first; 3 the first
// D - 1 stages' loads, then griddepcontrol.wait (a dependent that prefetches what it may).
__device__ __forceinline__ void grid_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void grid_launch() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }

template <int D, int kPdl = 0>
__global__ void __launch_bounds__(256, 4) ring_read(const uint8_t* codes, const uint8_t* scales, int nc, int warps,
                                                    uint32_t* out) {
  if (kPdl == 1) grid_launch();
  if (kPdl == 2) grid_wait();
  extern __shared__ __align__(16) uint8_t smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int w = blockIdx.x * 8 + warp;
  if (w >= warps) return;
  const uint8_t* c = codes + size_t(w) * nc * kChunk + 16 * lane;
  const uint8_t* s = scales + size_t(w) * nc * kScale + 4 * (lane >> 2);
  const uint32_t ring = tc::smem_addr(smem) + uint32_t(warp * D * kStage);
  const uint32_t my_c = ring + 16 * lane, my_s = ring + kChunk + 4 * lane;
  for (int j = 0; j < D - 1; ++j) {
    if (j < nc) {
      tc::cp_async_16(my_c + j * kStage, c + j * kChunk, true);
      tc::cp_async_4(my_s + j * kStage, s + j * kScale);
    }
    tc::cp_async_commit();
  }
  if (kPdl == 3) grid_wait();
  uint32_t acc = 0;
  for (int j = 0; j < nc; ++j) {
    const int jn = j + D - 1;
    if (jn < nc) {
      const uint32_t st = uint32_t((jn % D) * kStage);
      tc::cp_async_16(my_c + st, c + jn * kChunk, true);
      tc::cp_async_4(my_s + st, s + jn * kScale);
    }
    tc::cp_async_commit();
    tc::cp_async_wait<D - 1>();
    const uint32_t st = uint32_t((j % D) * kStage);
    const uint4 v = tc::lds_128(my_c + st);
    acc ^= v.x ^ v.y ^ v.z ^ v.w ^ tc::lds_32(my_s + st);
  }
  out[w * 32 + lane] = acc;
}

template <int NC>
__global__ void __launch_bounds__(256, 4) ldg_read(const uint8_t* codes, const uint8_t* scales, int warps,
                                                   uint32_t* out) {
  const int lane = threadIdx.x & 31, w = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (w >= warps) return;
  const uint4* c = reinterpret_cast<const uint4*>(codes + size_t(w) * NC * kChunk) + lane;
  const uint32_t* s = reinterpret_cast<const uint32_t*>(scales + size_t(w) * NC * kScale) + (lane >> 2);
  uint4 v[NC];
  uint32_t sv[NC];
#pragma unroll
  for (int j = 0; j < NC; ++j) {
    v[j] = __ldcs(c + j * (kChunk / 16));
    sv[j] = __ldcs(s + j * (kScale / 4));
  }
  uint32_t acc = 0;
#pragma unroll
  for (int j = 0; j < NC; ++j) acc ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w ^ sv[j];
  out[w * 32 + lane] = acc;
}

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  // mlp1 of the 20b at one token: 4 experts x 360 tiles x 45 chunks = 64,800 chunks (33.2 MB of codes,
  // 2.1 MB of scales), read by 5,760 warps of ~11 chunks (KS = 4) in the stream kernel.
  const int chunks = 64800;
  const size_t cbytes = size_t(chunks) * kChunk, sbytes = size_t(chunks) * kScale;
  const int copies = int(std::max<size_t>(2, (4 * size_t(prop.l2CacheSize)) / (cbytes + sbytes) + 1));
  uint8_t *codes, *scales;
  uint32_t* out;
  CHECK(cudaMalloc(&codes, cbytes * copies));
  CHECK(cudaMalloc(&scales, sbytes * copies));
  CHECK(cudaMalloc(&out, size_t(64) << 20));
  CHECK(cudaMemset(codes, 1, cbytes * copies));
  CHECK(cudaMemset(scales, 2, sbytes * copies));
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::printf("%s, %d SMs, L2 %d MB, %d copies of %.1f MB\n", prop.name, sms, prop.l2CacheSize >> 20, copies,
              (cbytes + sbytes) / 1e6);
  auto timed = [&](const char* name, auto launch, double bytes = 0) {
    if (bytes == 0) bytes = double(cbytes + sbytes);
    const int reps = 4 * copies;
    for (int i = 0; i < copies; ++i) launch(i);
    cudaEventRecord(a);
    for (int i = 0; i < reps; ++i) launch(i % copies);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    const double us = 1e3 * ms / reps;
    std::printf("%-28s %8.2f us  %7.0f GB/s  (%s)\n", name, us, bytes / (us * 1e3),
                cudaGetErrorString(cudaGetLastError()));
  };
  timed("seq (codes + scales)", [&](int i) {
    seq_read<<<sms * 8, 256>>>(reinterpret_cast<const uint4*>(codes + cbytes * i), cbytes / 16, out);
    seq_read<<<sms * 8, 256>>>(reinterpret_cast<const uint4*>(scales + sbytes * i), sbytes / 16, out + (1 << 20));
  });
  for (int nc : {11, 22, 45}) {
    const int warps = chunks / nc;
    char name[64];
    auto ring = [&](auto kernel, int D) {
      const size_t smem = size_t(8) * D * kStage;
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
      std::snprintf(name, sizeof(name), "ring D=%d nc=%d warps=%d", D, nc, warps);
      timed(name, [&](int i) {
        kernel<<<(warps + 7) / 8, 256, smem>>>(codes + cbytes * i, scales + sbytes * i, nc, warps, out);
      });
    };
    ring(ring_read<4>, 4);
    ring(ring_read<8>, 8);
  }
  timed("ldg nc=11 warps=5890", [&](int i) {
    ldg_read<11><<<(chunks / 11 + 7) / 8, 256>>>(codes + cbytes * i, scales + sbytes * i, chunks / 11, out);
  });
  timed("ldg nc=22 warps=2945", [&](int i) {
    ldg_read<22><<<(chunks / 22 + 7) / 8, 256>>>(codes + cbytes * i, scales + sbytes * i, chunks / 22, out);
  });

  // mlp1 then mlp2 (half the chunks, 2,945 warps of 11), the second from another (cold) copy.
  const int nc = 11, w1 = chunks / nc, w2 = chunks / 2 / nc;
  auto launch = [&](auto kernel, int warps, bool pdl, int i) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((warps + 7) / 8);
    cfg.blockDim = dim3(256);
    cfg.dynamicSmemBytes = size_t(8) * 4 * kStage;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl ? 1 : 0;
    const uint8_t* c = codes + cbytes * i;
    const uint8_t* s = scales + sbytes * i;
    cudaLaunchKernelEx(&cfg, kernel, c, s, nc, warps, out);
  };
  const double b1 = double(w1) * nc * (kChunk + kScale), b2 = double(w2) * nc * (kChunk + kScale);
  auto other = [&](int i) { return (i + copies / 2) % copies; };
  timed("mlp1 alone", [&](int i) { launch(ring_read<4, 0>, w1, false, i); }, b1);
  timed("mlp2 alone", [&](int i) { launch(ring_read<4, 0>, w2, false, i); }, b2);
  timed("pair, plain launches", [&](int i) {
    launch(ring_read<4, 0>, w1, false, i);
    launch(ring_read<4, 0>, w2, false, other(i));
  }, b1 + b2);
  timed("pair, PDL, wait first", [&](int i) {
    launch(ring_read<4, 1>, w1, false, i);
    launch(ring_read<4, 2>, w2, true, other(i));
  }, b1 + b2);
  timed("pair, PDL, loads then wait", [&](int i) {
    launch(ring_read<4, 1>, w1, false, i);
    launch(ring_read<4, 3>, w2, true, other(i));
  }, b1 + b2);
  return 0;
}
