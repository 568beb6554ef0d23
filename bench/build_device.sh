#!/usr/bin/env bash
# Builds what a device call carries in .whl/ (see bench/device_run.sh): the cp312 wheel for sm_90a,
# the C++ CUDA tests, and the kernel micro-benchmark (bench/cuda_kernels_main.cu). Run here, on the
# machine with nvcc and no GPU; then `run` with carry [".whl"] and `bash bench/device_run.sh STAGES`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY312:-/root/.pyenv/versions/3.12.1/bin/python}
mkdir -p .whl/ctest .whl/bench build/bench
rm -f .whl/gpt_oss_c-*.whl
"$PY" -m pip wheel . --no-build-isolation --no-deps -w .whl/ -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90a-real \
  -C build-dir=build/dev312 > build/bench/wheel.log 2>&1 ||
  { tail -n 30 build/bench/wheel.log; exit 1; }
cp build/dev312/test_cuda_backend build/dev312/test_mxfp4_layout .whl/ctest/
python3 bench/cuda_kernels.py --build-only
cp build/bench/cuda_kernels .whl/bench/
ls -la .whl .whl/bench .whl/ctest | grep -v "^total"
du -sh .whl
