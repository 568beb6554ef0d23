"""Where a kernel's instructions and stalls are, from Nsight Compute's source page (SASS).

    ncu --set full -k regex:KERNEL --launch-count N -o rep build/bench/cuda_kernels 1 FAMILY
    ncu --import rep.ncu-rep --page source --csv --print-source sass > src.csv
    python3 bench/ncu_source_summary.py src.csv [--top 15]

For each kernel in the file: the warp instructions executed, grouped by how often each SASS line ran
(a line that ran once per warp is prologue / epilogue; the most frequent counts are the inner loops),
with the opcodes of each group and its share of the stall samples; then the lines with the most stall
samples. Used for the decode MoE in session 5 (bench/NOTES.md): 32% of its instructions and 43% of
its stall samples were once-per-warp lines.
"""
from __future__ import annotations

import argparse
import csv
import gzip
from collections import Counter


def kernels(path: str):
    opener = gzip.open if path.endswith(".gz") else open
    name, header, rows = None, None, []
    with opener(path, "rt", errors="replace") as f:
        for r in csv.reader(f):
            if r and r[0] == "Kernel Name":
                if name is not None:
                    yield name, header, rows
                name, header, rows = r[1], None, []
            elif r and r[0] == "Address":
                header = r
            elif r and header is not None:
                rows.append(r)
    if name is not None:
        yield name, header, rows


def opcode(source: str) -> str:
    parts = source.split()
    return (parts[1] if parts and parts[0].startswith("@") and len(parts) > 1 else parts[0]) if parts else "?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    seen = set()
    for name, h, rows in kernels(args.csv):
        if name in seen:  # ncu repeats a kernel's table per launch; one is enough
            continue
        seen.add(name)
        ie, st, src = h.index("Instructions Executed"), h.index("Warp Stall Sampling (All Samples)"), h.index("Source")
        n = lambda r, i: int(r[i] or 0)  # noqa: E731
        total, samples = sum(n(r, ie) for r in rows), sum(n(r, st) for r in rows) or 1
        print(f"{name[:110]}\n  {total:,} warp instructions, {samples:,} stall samples")
        groups: dict[int, list] = {}
        for r in rows:
            if n(r, ie):
                groups.setdefault(n(r, ie), []).append(r)
        for count, g in sorted(groups.items(), key=lambda kv: -kv[0] * len(kv[1]))[:8]:
            ops = Counter(opcode(r[src]) for r in g).most_common(8)
            share = sum(n(r, st) for r in g) / samples
            print(f"  x{count:>9,}: {len(g):4d} lines = {count * len(g) / total:5.1%} of instructions, "
                  f"{share:5.1%} of stalls; {', '.join(f'{o} {c}' for o, c in ops)}")
        print("  most stalled lines:")
        for r in sorted(rows, key=lambda r: -n(r, st))[: args.top]:
            print(f"    {n(r, st):6d} x{n(r, ie):>9,}  {r[src].strip()[:80]}")


if __name__ == "__main__":
    main()
