"""What each op costs inside the graph-replayed CUDA decode step (performance attribution only).

    python bench/op_cost.py DIR [--batch B] [--runs 3]

Decodes with GPT_OSS_C_SKIP_OPS set to one op family at a time (cuda/cuda_backend.cuh: the skipped
calls launch nothing, so the tokens are wrong but the step keeps its shape) and prints the step time
saved against the full step. Unlike per-kernel profiles (ncu serialises kernels, the kernel bench
repeats one kernel on warm weights), the difference includes the op's launch, its dependency waits
and whatever overlap programmatic dependent launch gives, i.e. what removing or speeding up that op
would buy. Each variant runs in its own process (the skip list is read when the backend is created).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# (label, GPT_OSS_C_SKIP_OPS) -- op names and shape strings as CudaBackend::run_op formats them.
# Steps of up to 8 tokens take the fused attn_input op, larger ones its plain ops; on sm_90 steps of
# up to 128 tokens take the fused moe_input (cuda/moe_input_cluster.cu). Skipping the router or the
# norm before it changes which experts the MoE reads (a batch may then hit fewer of them), so at
# batch > 1 the moe_input line is an upper bound.
LAYER_OPS = {
    True: [("attn_input (norm + qkv + rope + kv append)", "attn_input")],
    False: [("rmsnorm (attention input)", "rmsnorm"), ("qkv (dense N=5120)", "dense@N=5120"),
            ("rope + kv append", "rope,kv_append")],
}
MOE_INPUT = [("moe_input (norm + router + top-k)", "moe_input")]


def variants(batch: int) -> list[tuple[str, str]]:
    own = LAYER_OPS[batch <= 8] + MOE_INPUT
    common = [("attention, sliding layers", "attention@window=128"), ("attention, full layers", "attention@window=0"),
              ("out-projection (dense N=2880)", "dense@N=2880"), ("moe", "moe")]
    every = ",".join(skip for _, skip in own + common)
    return ([("full step", "")] + own + common + [("unembedding (dense N=201088)", "dense@N=201088"),
                                                  ("every per-layer op", every)])


CHILD = """
import json, statistics, sys
import gpt_oss_c
from gpt_oss_c.bench import bench_batch, bench_decode
path, batch, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
m = gpt_oss_c.load(path, device="cuda", max_context=1024, max_batch=max(batch, 1))
f = (lambda: bench_decode(m, 128, 256)) if batch == 1 else (lambda: bench_batch(m, batch, 128, 64))
print(json.dumps([f() for _ in range(runs)]))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="checkpoint directory")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for label, skip in variants(args.batch):
        env = dict(os.environ, GPT_OSS_C_SKIP_OPS=skip)
        proc = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.batch), str(args.runs)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{label}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        tok_s = statistics.median(json.loads(proc.stdout.strip().splitlines()[-1]))
        rows.append((label, skip, tok_s))
    # Step time per decoded token (batch: per step of `batch` tokens).
    step_us = {label: args.batch / t * 1e6 for label, _, t in rows}
    full = step_us["full step"]
    print(f"batch {args.batch}: full step {full:.1f} us ({rows[0][2]:.1f} tok/s)")
    print(f"{'skipped':44s} {'tok/s':>8s} {'step us':>8s} {'saved us':>9s} {'share':>6s}")
    for label, _, t in rows:
        us = step_us[label]
        print(f"{label:44s} {t:8.1f} {us:8.1f} {full - us:9.1f} {(full - us) / full:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
