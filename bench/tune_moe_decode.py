"""Compare decode MoE GEMV shapes on one card, in one process tree (see bench/NOTES.md, run 7).

Each variant is a kernel-bench binary built with -DGPTOSS_MOE_GEMV_DECODE=TPW,TG,KS,NT,MINB (the
CMake option GPT_OSS_C_MOE_GEMV_DECODE for the package). For each: the MoE correctness check
(`cuda_kernels check moe`, float64 references) and the MoE timings (`cuda_kernels 20 moe`, graph
replay, median). Prints a table, writes JSON, and prints `best: vN` = the fastest variant at T = 1
among those whose check passed (ties to the lower index, v0 = the shipped shape).

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
        try:
            chk = subprocess.run([exe, "check", "moe"], capture_output=True, text=True, timeout=90)
            check_ok = chk.returncode == 0
            check_tail = chk.stdout.strip().split("\n")[-1] if chk.stdout else chk.stderr[-200:]
        except subprocess.TimeoutExpired:
            check_ok, check_tail = False, "check timed out"
        times = {}
        try:
            b = subprocess.run([exe, "20", "moe"], capture_output=True, text=True, timeout=90)
            for ln in b.stdout.split("\n"):
                if ln.startswith('{"kernel": "moe"'):
                    r = json.loads(ln)
                    times[r["shape"].split(" k=")[0]] = r["us"]
        except subprocess.TimeoutExpired:
            pass
        rows.append({"variant": name, "shape": shape, "check_ok": check_ok, "check": check_tail, "us": times})
        t1 = times.get("T=1 E=32")
        print(f"{name} {shape:12} check {'ok ' if check_ok else 'FAIL'} T=1 {t1} T=8 {times.get('T=8 E=32')} "
              f"T=16 {times.get('T=16 E=32')} T=1/E=128 {times.get('T=1 E=128')}  {check_tail[:60]}", flush=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    ok = [r for r in rows if r["check_ok"] and "T=1 E=32" in r["us"]]
    if not ok:
        print("best: none")
        return 1
    best = min(ok, key=lambda r: r["us"]["T=1 E=32"])
    print(f"best: {best['variant']} {best['shape']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
