"""Per-op GPU time of decode and prefill steps (CUDA backend profiler, eager, no graphs).

    GPT_OSS_C_PROFILE=1 GPT_OSS_C_NO_GRAPHS=1 python bench/profile_ops.py DIR [decode|prefill|batch]

The table is printed to stderr when the model is released. Only for performance work: eager launches
add host gaps between kernels that a graph replay does not have, so the kernel times are what matter.
"""
import sys

import numpy as np

import gpt_oss_c


def main(path, what):
    model = gpt_oss_c.load(path, device="cuda", max_context=4096, max_batch=64 if what == "batch" else 1)
    rng = np.random.default_rng(0)
    ids = lambda n: rng.integers(0, 199998, size=n).tolist()
    if what == "decode":
        out = model.generate(ids(128), max_new_tokens=64, temperature=0, ignore_eos=True)
        print(f"decode (eager, profiled) {(len(out.token_ids) - 1) / out.decode_s:.1f} tok/s", file=sys.stderr)
    elif what == "prefill":
        for _ in range(3):
            model._engine.step([(0, 0, ids(2048), (0.0, 0, 1.0, 0.0, 0))], 0, True)
    elif what == "batch":
        model.generate([ids(128) for _ in range(64)], max_new_tokens=32, temperature=0, ignore_eos=True)
    del model


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "decode")
