"""Per-kernel GPU time of decode steps from Nsight Compute (the lent GPU machine has ncu, not nsys).

    ncu --csv --metrics gpu__time_duration.sum --launch-skip N --launch-count M \
        python3 bench/profile_ops.py DIR decode > step.csv
    python3 bench/ncu_step_summary.py step.csv

ncu serialises and replays every kernel, so each duration is the kernel alone (no launch gap and no
overlap with its neighbours through programmatic dependent launch). A step starts at the embedding
kernel (bf16_embed_f32out); over the complete steps in the capture this prints each kernel's launches
per step and mean / total microseconds. Comparing the per-step sum with the step time of a graph
replay (`gpt-oss-c bench`) gives what the launches and dependency waits cost.
"""
import csv
import io
import sys
from collections import defaultdict


def short(name: str) -> str:
    # ncu's CSV spells the anonymous namespace "unnamed>::" (its "<" is lost).
    for prefix in ("void ", "gptoss::", "moe::", "(anonymous namespace)::", "<unnamed>::", "unnamed>::"):
        name = name.replace(prefix, "")
    return name.split("(")[0][:60]


def main(path: str) -> None:
    text = open(path, errors="replace").read()
    start = text.find('"ID"')  # ncu prints ==PROF== lines before the CSV header
    if start < 0:
        sys.exit(f"{path}: no ncu CSV found")
    kernels = []  # (id, name, ns) in launch order
    for row in csv.DictReader(io.StringIO(text[start:])):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = row.get("Metric Unit", "nsecond")
        value = float(row["Metric Value"].replace(",", ""))
        ns = value * {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9}.get(unit, 1.0)
        kernels.append((int(row["ID"]), short(row["Kernel Name"]), ns))
    kernels.sort()
    starts = [i for i, k in enumerate(kernels) if k[1].startswith("bf16_embed")]
    if len(starts) < 2:
        sys.exit(f"{path}: fewer than 2 step starts (bf16_embed_f32out) among {len(kernels)} kernels")
    per = defaultdict(lambda: [0, 0.0])
    total = 0.0
    for a, b in zip(starts, starts[1:]):
        for _, name, ns in kernels[a:b]:
            per[name][0] += 1
            per[name][1] += ns
            total += ns
    steps = len(starts) - 1
    print(f"{steps} steps, {sum(c for c, _ in per.values()) / steps:.0f} kernels per step, "
          f"sum of kernel times {total / steps / 1e3:.1f} us per step")
    print(f"{'kernel':60s} {'per step':>8s} {'mean us':>8s} {'us/step':>8s}")
    for name, (cnt, ns) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:60s} {cnt / steps:8.1f} {ns / cnt / 1e3:8.2f} {ns / steps / 1e3:8.1f}")


if __name__ == "__main__":
    main(sys.argv[1])
