"""Load and generate with the synthetic 20b and 120b on one GPU (issue 3's size check).

    python bench/big_models.py [20b] [120b]

Writes each synthetic checkpoint to a scratch directory (see gpt_oss_c.bench.scratch_checkpoint),
loads it onto CUDA, greedily decodes 128 tokens after a 128-token prompt, and prints one JSON line:
load time, GPU memory in use, decode tok/s. A checkpoint is deleted after its run (120b needs the room).
"""
import json
import shutil
import sys
import time

import numpy as np

import gpt_oss_c
from gpt_oss_c.bench import card_info, scratch_checkpoint


def run(size):
    path = scratch_checkpoint(size, "hf", None)
    t0 = time.perf_counter()
    model = gpt_oss_c.load(path, device="cuda")
    load_s = time.perf_counter() - t0
    ids = np.random.default_rng(0).integers(0, 199998, size=128).tolist()
    model.generate(ids, max_new_tokens=8, temperature=0, ignore_eos=True)  # warm-up (graph capture)
    out = model.generate(ids, max_new_tokens=128, temperature=0, ignore_eos=True)
    info = model.info()
    res = dict(size=size, **card_info(), load_s=round(load_s, 2), max_context=model.max_context,
               weights_GB=round(info["weight_bytes"] / 1e9, 2), kv_cache_GB=round(info["kv_cache_bytes"] / 1e9, 2),
               gpu_mem_used_GB=round(info["device_memory_used"] / 1e9, 2),
               decode_tok_s=round((len(out.token_ids) - 1) / out.decode_s, 1), finish=out.finish_reason)
    print(json.dumps(res), flush=True)
    del model
    shutil.rmtree(path)


if __name__ == "__main__":
    for size in sys.argv[1:] or ["20b", "120b"]:
        run(size)
