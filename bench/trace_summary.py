"""Per-kernel time and launch gaps of graph-replayed decode steps, from an Nsight Systems GPU trace.

    nsys profile --cuda-graph-trace=node -t cuda -o decode python3 bench/profile_ops.py DIR decode
    nsys stats -r cuda_gpu_trace -f csv -o decode decode.nsys-rep
    python3 bench/trace_summary.py decode_cuda_gpu_trace.csv [STEPS]

A step starts at the embedding kernel (bf16_embed_f32out). Over the last STEPS steps (default 32) it
prints each kernel's launches per step and mean / total microseconds, and how much of a step's wall
time the GPU sat idle between kernels (launch gaps and dependency waits).
"""
import csv
import sys
from collections import defaultdict


def short(name: str) -> str:
    for prefix in ("void ", "gptoss::", "moe::", "(anonymous namespace)::", "<unnamed>::"):
        name = name.replace(prefix, "")
    return name.split("(")[0][:60]


def main(path: str, n_steps: int) -> None:
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            name = row.get("Name", "")
            if not name or name.startswith("[CUDA"):  # memcpy / memset rows
                continue
            rows.append((int(row["Start (ns)"]), int(row["Duration (ns)"]), short(name)))
    rows.sort()
    starts = [i for i, r in enumerate(rows) if r[2].startswith("bf16_embed")]
    if len(starts) < 3:
        sys.exit(f"{path}: fewer than 3 steps found")
    starts = starts[-(n_steps + 1):]
    per = defaultdict(lambda: [0, 0])  # name -> [count, total ns]
    wall = busy = 0
    for a, b in zip(starts, starts[1:]):
        step = rows[a:b]
        wall += step[-1][0] + step[-1][1] - step[0][0]
        end = step[0][0]
        for s, d, n in step:
            busy += max(0, s + d - max(s, end))  # overlapping kernels (PDL) counted once
            end = max(end, s + d)
            per[n][0] += 1
            per[n][1] += d
    steps = len(starts) - 1
    print(f"{steps} steps: wall {wall / steps / 1e3:.1f} us/step, GPU busy {busy / steps / 1e3:.1f} us, "
          f"idle {100 * (1 - busy / wall):.1f}%")
    print(f"{'kernel':60s} {'per step':>8s} {'mean us':>8s} {'us/step':>8s}")
    for n, (cnt, tot) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        print(f"{n:60s} {cnt / steps:8.1f} {tot / cnt / 1e3:8.2f} {tot / steps / 1e3:8.1f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 32)
