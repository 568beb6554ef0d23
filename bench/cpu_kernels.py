"""CPU kernel throughput against the machine's memory bandwidth (the floor for decode).

Measures, through gpt_oss_c._core.ops (the same Backend path the engine uses):
  * memory bandwidth: a large numpy copy (read + write bytes) and a large numpy max over uint64
    words (read; one thread, so a lower bound on what all cores can read);
  * dense bf16 GEMV, T=1: 5120 x 2880 (qkv) and 201088 x 2880 (unembedding), in GB/s of weights;
  * MoE at gpt-oss-20b shapes, T=1: 4 of 32 experts, mlp1 5760 x 2880 + mlp2 2880 x 2880 MXFP4,
    in GB/s of expert bytes read (blocks + scales).
Weights are rotated over several copies (or random experts) so that they come from memory, not L3.
Prints one JSON object; --levels runs each SIMD level in a subprocess ($GPT_OSS_C_SIMD).

  PYTHONPATH=python python bench/cpu_kernels.py [--threads N] [--levels avx512,avx2,scalar] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np


def timeit(fn, reps: int) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def memory_bandwidth(nbytes: int = 1 << 30) -> dict:
    src = np.ones(nbytes // 8, np.float64)
    dst = np.empty_like(src)
    t_copy = timeit(lambda: np.copyto(dst, src), 5)
    words = src.view(np.uint64)
    t_read = timeit(lambda: words.max(), 5)  # a streaming reduction numpy vectorises (faster than sum)
    return {"copy_GBps": 2 * nbytes / t_copy / 1e9, "read_GBps": nbytes / t_read / 1e9}


def normal_bf16(rng, N: int, K: int, scale: float = 0.02) -> np.ndarray:
    """N(0, scale) weights as bf16 bits (truncated), built in slices to bound the f32 temporary.
    Realistic values matter: random bit patterns include subnormals, which cost the FMA units
    microcode assists and would make the kernel look compute-bound."""
    out = np.empty((N, K), np.uint16)
    for r in range(0, N, 8192):
        out[r : r + 8192] = (rng.standard_normal((min(8192, N - r), K), np.float32) * scale).view(np.uint32) >> 16
    return out


def bench_dense(ops, device: str, N: int, K: int, min_bytes: int = 1 << 29) -> dict:
    rng = np.random.default_rng(0)
    copies = max(1, min_bytes // (N * K * 2))
    ws = [normal_bf16(rng, N, K) for _ in range(copies)]
    x = rng.standard_normal((1, K)).astype(np.float32)
    it = iter(range(1 << 62))
    t = timeit(lambda: ops.dense(x, ws[next(it) % copies], device=device), max(5, 2 * copies))
    return {"shape": [N, K], "ms": t * 1e3, "GBps": N * K * 2 / t / 1e9}


def bench_moe(ops, device: str, E: int = 32, k: int = 4, H: int = 2880, I: int = 2880) -> dict:
    rng = np.random.default_rng(1)
    w1b = rng.integers(0, 256, size=(E, 2 * I, H // 32, 16), dtype=np.uint8)
    w1s = rng.integers(118, 126, size=(E, 2 * I, H // 32), dtype=np.uint8)
    w2b = rng.integers(0, 256, size=(E, H, I // 32, 16), dtype=np.uint8)
    w2s = rng.integers(118, 126, size=(E, H, I // 32), dtype=np.uint8)
    b1 = rng.standard_normal((E, 2 * I)).astype(np.float32)
    b2 = rng.standard_normal((E, H)).astype(np.float32)
    x = rng.standard_normal((1, H)).astype(np.float32)
    y = np.zeros((1, H), np.float32)
    w = np.full((1, k), 1.0 / k, np.float32)

    def step():
        idx = rng.permutation(E)[:k].astype(np.int32)[None]
        ops.moe(x, idx, w, w1b, w1s, b1, w2b, w2s, b2, y, device=device)

    t = timeit(step, 30)
    expert_bytes = (2 * I * (H // 32) + H * (I // 32)) * 17  # 16 block bytes + 1 scale per 32
    return {"experts": k, "shape_mlp1": [2 * I, H], "shape_mlp2": [H, I], "ms": t * 1e3,
            "GBps": k * expert_bytes / t / 1e9}


def run_one(threads: int) -> dict:
    from gpt_oss_c import _core

    ops = _core.ops
    device = f"cpu:{threads}" if threads else "cpu"
    mem = memory_bandwidth()
    out = {
        "device": ops.backend_info(device)["device_name"],
        "simd": _core.build_info()["cpu_simd"],
        "memory": mem,
        "dense_qkv": bench_dense(ops, device, 5120, 2880),
        "dense_unembedding": bench_dense(ops, device, 201088, 2880, min_bytes=0),
        "moe_20b_decode": bench_moe(ops, device),
    }
    for key in ("dense_qkv", "dense_unembedding", "moe_20b_decode"):
        out[key]["fraction_of_read_bw"] = out[key]["GBps"] / mem["read_GBps"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    ap.add_argument("--levels", default="", help="comma-separated SIMD levels, each run in a subprocess")
    ap.add_argument("--out", default="", help="also write the JSON here")
    args = ap.parse_args()
    if args.levels:
        results = {}
        for level in args.levels.split(","):
            env = dict(os.environ, GPT_OSS_C_SIMD=level)
            cmd = [sys.executable, __file__, "--threads", str(args.threads)]
            results[level] = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
        result = {"host": platform.node(), "cpu_count": os.cpu_count(), "levels": results}
    else:
        result = run_one(args.threads)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
