"""Compare decode MoE GEMV shapes on one card, in one process tree (see bench/NOTES.md, run 7).

Each variant is a kernel-bench binary built with -DGPTOSS_MOE_GEMV_DECODE=TPWTGKSNTMINB (five digits;
the CMake option GPT_OSS_C_MOE_GEMV_DECODE for the package). Every variant's MoE cases are timed
first (`cuda_kernels 20 moe`, graph replay, median; ~5 s each); then the fastest at T = 1 is checked
for correctness (`cuda_kernels check moe`, float64 references, ~40 s), then the next fastest if that
failed. Prints a table, writes JSON, and prints `best: vN` (v0 = the shipped shape).

    python bench/tune_moe_decode.py DIR_WITH_list.txt_AND_BINARIES --out results.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = []
    for line in (args.dir / "list.txt").read_text().split("\n"):
        if not line.strip():
            continue
        name, shape = line.split()
        exe = str(args.dir / f"cuda_kernels_{name}")
        times = {}
        try:
            b = subprocess.run([exe, "20", "moe"], capture_output=True, text=True, timeout=60)
            for ln in b.stdout.split("\n"):
                if ln.startswith('{"kernel": "moe"'):
                    r = json.loads(ln)
                    times[r["shape"].split(" k=")[0]] = r["us"]
        except subprocess.TimeoutExpired:
            pass
        rows.append({"variant": name, "shape": shape, "exe": exe, "us": times, "check_ok": None})
        print(f"{name} {shape:6} T=1 {times.get('T=1 E=32')} T=8 {times.get('T=8 E=32')} T=16 {times.get('T=16 E=32')} "
              f"T=1/E=128 {times.get('T=1 E=128')}", flush=True)
    best = None
    for r in sorted((r for r in rows if "T=1 E=32" in r["us"]), key=lambda r: r["us"]["T=1 E=32"]):
        try:
            chk = subprocess.run([r["exe"], "check", "moe"], capture_output=True, text=True, timeout=120)
            r["check_ok"] = chk.returncode == 0
            r["check"] = chk.stdout.strip().split("\n")[-1] if chk.stdout else chk.stderr[-200:]
        except subprocess.TimeoutExpired:
            r["check_ok"], r["check"] = False, "check timed out"
        print(f"check {r['variant']}: {'ok' if r['check_ok'] else 'FAIL'} ({r['check']})", flush=True)
        if r["check_ok"]:
            best = r
            break
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    if best is None:
        print("best: none")
        return 1
    print(f"best: {best['variant']} {best['shape']}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
