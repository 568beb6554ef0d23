#!/usr/bin/env bash
# Builds the decode MoE GEMV shape variants for a tuning run on the GPU machine (compiled here, where
# it costs no device time, and carried in the ignored .whl/var): for each "vN DIGITS" line of
# bench/moe_decode_shapes.txt (DIGITS = TPW TG KS NT MINB, cuda/moe_mxfp4_gemv.cu), the kernel-bench
# binary .whl/var/cuda_kernels_vN and, with --wheels, the package wheel .whl/var/vN/*.whl built with
# that shape (the build tree keeps the last shape in its CMake cache: build the shipped wheel with
# -C cmake.define.GPT_OSS_C_MOE_GEMV_DECODE= afterwards). Then: `run` with carry [".whl"] and
# `bash bench/device_run.sh tune e2e bench20b`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/root/.pyenv/versions/3.12.1/bin/python}  # the device machine's Python is 3.12
F="-std=c++17 -O3 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Icsrc -Icuda"
mkdir -p build/bench/obj .whl/var
for f in bench/cuda_kernels_main.cu bench/cuda_kernels_check.cu cuda/dense_bf16.cu cuda/moe_mxfp4.cu \
         cuda/moe_mxfp4_stream.cu cuda/moe_mxfp4_gemm.cu cuda/moe_mxfp4_wgmma.cu cuda/expert_route.cu cuda/mxfp4_layout.cu; do
  nvcc $F -c "$f" -o "build/bench/obj/$(basename "$f" .cu).o"
done
grep -v '^#' bench/moe_decode_shapes.txt | grep . > .whl/var/list.txt
while read -r name digits; do
  nvcc $F "-DGPTOSS_MOE_GEMV_DECODE=$digits" -c cuda/moe_mxfp4_gemv.cu -o "build/bench/obj/gemv_$name.o"
  objs=$(ls build/bench/obj/*.o | grep -v '/gemv_')
  nvcc $F -o ".whl/var/cuda_kernels_$name" $objs "build/bench/obj/gemv_$name.o"
  if [ "${1:-}" = --wheels ]; then
    rm -rf ".whl/var/$name" && mkdir -p ".whl/var/$name"
    "$PY" -m pip wheel . -q --no-build-isolation --no-deps -w ".whl/var/$name" -C build-dir=build/dev312 \
      -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90a-real -C "cmake.define.GPT_OSS_C_MOE_GEMV_DECODE=$digits"
  fi
  echo "built $name ($digits)"
done < .whl/var/list.txt
