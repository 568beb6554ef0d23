"""Micro-benchmark of the dense bf16, decode attention and MXFP4 MoE CUDA kernels on random data.

Builds bench/cuda_kernels_main.cu together with the kernel sources (nvcc, sm_90a + sm_80 SASS),
runs it, and prints one line per case: median GPU time per call (CUDA graph of back-to-back calls,
so no host launch overhead), achieved GB/s and TFLOP/s, and the fraction of the case's floor:
max(bytes / measured device copy rate, FLOPs / 770 TFLOP/s). Writes the JSON records to
bench/results/cuda_kernels_<device>.json.

    python bench/cuda_kernels.py [--reps 20] [--nvcc nvcc] [--out DIR]
    python bench/cuda_kernels.py --check     # correctness of every kernel path vs float64 host references

GPT_OSS_C_FORCE_PORTABLE=1 selects the portable (sm_80) kernels on an H100/H200, as in the backend.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["bench/cuda_kernels_main.cu", "bench/cuda_kernels_check.cu", "cuda/attention.cu", "cuda/dense_bf16*.cu", "cuda/dense_gemv_resident.cu",
           "cuda/moe_mxfp4*.cu", "cuda/moe_input_cluster.cu",
           "cuda/moe_input_expert_split.cu", "cuda/expert_route.cu", "cuda/kernel_caps.cu", "cuda/mxfp4_layout.cu"]


def build(nvcc: str, exe: Path) -> None:
    srcs = sorted(p for pattern in SOURCES for p in ROOT.glob(pattern))
    deps = srcs + list((ROOT / "cuda").glob("*.cuh")) + [ROOT / "csrc" / "common.h", ROOT / "csrc" / "ops.h",
                                                          Path(__file__)]
    if exe.exists() and exe.stat().st_mtime > max(p.stat().st_mtime for p in deps):
        return
    exe.parent.mkdir(parents=True, exist_ok=True)
    cmd = [nvcc, "-std=c++17", "-O3", "--expt-relaxed-constexpr", "-gencode=arch=compute_90a,code=sm_90a",
           "-gencode=arch=compute_80,code=sm_80", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'cuda'}", "-o", str(exe)]
    cmd += [str(s) for s in srcs]
    print("building:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20, help="calls per captured graph")
    ap.add_argument("--nvcc", default=shutil.which("nvcc") or "nvcc")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--check", action="store_true", help="run the correctness check instead of the benchmark")
    ap.add_argument("--build-only", action="store_true", help="only (re)build build/bench/cuda_kernels (no GPU needed)")
    args = ap.parse_args()

    exe = ROOT / "build" / "bench" / "cuda_kernels"
    build(args.nvcc, exe)
    if args.build_only:
        return 0
    if args.check:
        return subprocess.run([str(exe), "check"]).returncode
    proc = subprocess.run([str(exe), str(args.reps)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        return proc.returncode
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    dev = records[0]
    print(f"{dev['device']} ({dev['sms']} SMs): device copy {dev['copy_GB/s']:.0f} GB/s, {dev['reps']} calls per graph")
    print(f"{'kernel':6} {'shape':44} {'us':>9} {'GB/s':>7} {'TFLOP/s':>8} {'floor us':>9} {'of floor':>8}")
    for r in records[1:]:
        print(f"{r['kernel']:6} {r['shape']:44} {r['us']:9.2f} {r['GB/s']:7.0f} {r['TFLOP/s']:8.1f} {r['floor_us']:9.2f} "
              f"{100 * r['of_floor']:7.1f}%")
    args.out.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9]+", "_", dev["device"]).strip("_")
    path = args.out / f"cuda_kernels_{name}.json"
    path.write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
