"""CPU decode attention at long context against the machine's read bandwidth (its floor).

Builds bench/cpu_attention_main.cpp against the engine library of a CMake build (default
build/dev, see the README's dev build), runs it for each (KV dtype, context, sequences) case and
prints one JSON object: per case the median ms per attention call (one layer, gpt-oss heads 64/8,
full causal), the K/V bytes read per second and that as a fraction of the read bandwidth measured
in the same process. Decode attention streams every cached K/V row once, so it should sit near 1.

  python bench/cpu_attention.py [--build build/dev] [--threads N] [--kv f32,bf16]
                                [--contexts 4096,32768] [--seqs 1,4] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "bench" / "cpu_attention_main.cpp"


def build(build_dir: Path) -> Path:
    lib = build_dir / "libgptoss_engine.a"
    if not lib.exists():
        sys.exit(f"{lib} not found: build the engine first (cmake --build {build_dir})")
    exe = build_dir / "cpu_attention_main"
    if not exe.exists() or exe.stat().st_mtime < max(lib.stat().st_mtime, MAIN.stat().st_mtime):
        cxx = os.environ.get("CXX", "c++")
        cmd = [cxx, "-O2", "-std=c++17", f"-I{ROOT / 'csrc'}", str(MAIN), str(lib), "-pthread", "-o", str(exe)]
        subprocess.run(cmd, check=True)
    return exe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=str(ROOT / "build" / "dev"), help="CMake build dir with libgptoss_engine.a")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    ap.add_argument("--kv", default="f32,bf16", help="KV cache dtypes to run")
    ap.add_argument("--contexts", default="4096,32768")
    ap.add_argument("--seqs", default="1,4", help="decode sequences per step")
    ap.add_argument("--out", default="", help="also write the JSON here")
    args = ap.parse_args()
    exe = build(Path(args.build))
    cases = []
    for kv in args.kv.split(","):
        for ctx in args.contexts.split(","):
            for seqs in args.seqs.split(","):
                cmd = [str(exe), "--kv", kv, "--context", ctx, "--seqs", seqs, "--threads", str(args.threads)]
                cases.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
                print(json.dumps(cases[-1]), file=sys.stderr)
    text = json.dumps({"host": platform.node(), "cpu_count": os.cpu_count(), "cases": cases}, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
