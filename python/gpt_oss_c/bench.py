"""Benchmark: decode and prefill speed against the hardware floor, optionally side by side with
Hugging Face transformers on the same weights, in the same process.

    gpt-oss-c bench --model DIR [--compare-hf] [--out results.json]
    python -m gpt_oss_c.bench --size 20b          # writes a synthetic 20b to a scratch dir first

The ceilings (device copy bandwidth, bf16 matmul rate) are measured in this process with PyTorch.
The floor of a batch-1 decode step is the bytes it must read (config-derived: bf16 attention and
router weights, the active experts' MXFP4 blocks and scales, the unembedding, and the KV cache at that
context) over the measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Progress:
    """A one-line progress bar on a TTY; plain log lines otherwise."""

    def __init__(self, total: int):
        self.total, self.done, self.tty = total, 0, sys.stderr.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        if self.tty:
            bar = "#" * int(30 * self.done / self.total)
            sys.stderr.write(f"\r[{bar:<30}] {self.done}/{self.total} {what:<40}")
            sys.stderr.flush()
            if self.done == self.total:
                sys.stderr.write("\n")
        else:
            log(f"[{self.done}/{self.total}] {what}")


# ------------------------------------------------------------------------------------------------
# Floors
# ------------------------------------------------------------------------------------------------

def bytes_per_token(cfg, context: int) -> int:
    """Bytes one batch-1 decode step must read at `context` positions (weights once, KV once)."""
    H, I, E, k, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.experts_per_token, cfg.vocab_size
    Q, KV = cfg.num_attention_heads * 64, cfg.num_key_value_heads * 64
    attn = (Q + 2 * KV) * H * 2 + H * Q * 2 + (Q + 2 * KV + H) * 2  # qkv, out (+ biases)
    router = E * H * 2 + E * 2
    mxfp4 = lambda rows, K: rows * (K // 32) * 17  # 16 bytes of codes + 1 scale byte per block
    experts = k * (mxfp4(2 * I, H) + mxfp4(H, I) + (2 * I + H) * 2)
    kv = 0
    for t in cfg.layer_types:
        n = min(context, cfg.sliding_window) if t == "sliding_attention" else context
        kv += n * KV * 2 * 2  # K and V, bf16
    unembed = V * H * 2
    return cfg.num_hidden_layers * (attn + router + experts) + kv + unembed + H * 2


def flops_per_token(cfg, context: int) -> float:
    """Matrix FLOPs of one token of a prefill at `context` (attention counted at that context)."""
    H, I, k = cfg.hidden_size, cfg.intermediate_size, cfg.experts_per_token
    Q, KV = cfg.num_attention_heads * 64, cfg.num_key_value_heads * 64
    dense = (Q + 2 * KV) * H + H * Q + cfg.num_experts * H + k * (2 * I * H + H * I)
    attn = 0
    for t in cfg.layer_types:
        n = min(context, cfg.sliding_window) if t == "sliding_attention" else context
        attn += 2 * n * Q  # q.k and p.v, per query head dim
    return 2.0 * (cfg.num_hidden_layers * dense) + 2.0 * attn


# ------------------------------------------------------------------------------------------------
# Ceilings (PyTorch, same process)
# ------------------------------------------------------------------------------------------------

def card_info() -> dict:
    info = {"card": "cpu", "driver": None}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
        if out:
            name, driver = [s.strip() for s in out[0].split(",")]
            info = {"card": name, "driver": driver}
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def measure_ceilings() -> dict:
    import torch

    def timed(fn, reps=10):
        for _ in range(3):
            fn()
        ts = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) / 1e3)
        return statistics.median(ts)

    n = 1 << 30  # 2 GiB of bf16 each way: far beyond L2
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src))
    copy_bw = 2 * src.numel() * 2 / t
    del src, dst
    m = 8192
    a = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    t = timed(lambda: a @ b)
    tflops = 2 * m**3 / t / 1e12
    del a, b
    torch.cuda.empty_cache()
    return {"copy_bw_GBps": copy_bw / 1e9, "bf16_tflops": tflops}


# ------------------------------------------------------------------------------------------------
# Our engine
# ------------------------------------------------------------------------------------------------

def _ids(n: int, seed: int, vocab: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, min(vocab, 199998), size=n).tolist()


def decode_rates(model, prompt_len: int, new_tokens: int, seed=0) -> tuple[float, float]:
    """Batch-1 decode tok/s after a `prompt_len` prompt (greedy, EOS ignored), from one run: the
    engine's step time (GenerationResult.decode_s), and the caller's wall-clock time of generate()
    less the prefill step, which adds the Python generation loop (detokenising, stop checks)."""
    model.generate(_ids(prompt_len, seed + 1, model.config.vocab_size), max_new_tokens=8, temperature=0,
                   ignore_eos=True)  # warm-up: graph capture, caches
    t0 = time.perf_counter()
    out = model.generate(_ids(prompt_len, seed, model.config.vocab_size), max_new_tokens=new_tokens, temperature=0,
                         ignore_eos=True)
    elapsed = time.perf_counter() - t0
    n = len(out.token_ids) - 1
    return n / out.decode_s, n / (elapsed - out.prefill_s)


def bench_decode(model, prompt_len: int, new_tokens: int, seed=0) -> float:
    """Batch-1 decode tok/s by the engine's step time (decode_rates' first)."""
    return decode_rates(model, prompt_len, new_tokens, seed)[0]


def bench_prefill(model, n: int, reps: int = 3) -> float:
    eng = model._engine
    ids = _ids(n, 7, model.config.vocab_size)
    eng.step([(0, 0, ids, (0.0, 0, 1.0, 0.0, 0))], 0, True)  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        eng.step([(0, 0, ids, (0.0, 0, 1.0, 0.0, 0))], 0, True)  # the first new token is part of it
        ts.append(time.perf_counter() - t0)
    model._slot_tokens[0] = ids
    return n / statistics.median(ts)


def bench_batch(model, batch: int, prompt_len: int = 128, new_tokens: int = 128) -> float:
    """Aggregate decode tok/s with `batch` sequences decoding together (after their prefill)."""
    prompts = [_ids(prompt_len, 100 + i, model.config.vocab_size) for i in range(batch)]
    model.generate(prompts, max_new_tokens=4, temperature=0, ignore_eos=True)  # warm-up
    outs = model.generate(prompts, max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    decode_s = max(o.decode_s for o in outs)
    return sum(len(o.token_ids) - 1 for o in outs) / decode_s


# ------------------------------------------------------------------------------------------------
# Hugging Face transformers, same weights, same process
# ------------------------------------------------------------------------------------------------

def bench_hf(path: Path, prompt_len: int, new_tokens: int, device: str = "cuda") -> dict:
    """HF transformers' GptOss in bf16 on the same checkpoint: prefill of 2048 tokens and greedy decode
    (its own KV cache; the best of three runs), timed like ours. MXFP4 experts are dequantised to bf16 at load, as HF does
    without its optional kernels. Loaded on the CPU, then moved (a device_map would need `accelerate`)."""
    import torch
    from transformers import AutoModelForCausalLM

    kw = {}
    try:
        from transformers import Mxfp4Config

        kw["quantization_config"] = Mxfp4Config(dequantize=True)
    except ImportError:
        pass
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16, **kw).to(device)
    hf.eval()
    vocab = hf.config.vocab_size
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    res = {}
    with torch.inference_mode():
        ids = torch.tensor([_ids(2048, 7, vocab)], device=device)
        hf(ids[:, :64])
        sync()
        t0 = time.perf_counter()
        hf(ids)
        sync()
        res["hf_prefill_2048_tok_s"] = 2048 / (time.perf_counter() - t0)
        prompt = torch.tensor([_ids(prompt_len, 0, vocab)], device=device)
        hf.generate(prompt, max_new_tokens=4, do_sample=False)
        sync()
        # HF's eager decode is bound by the host's kernel launches and varied by a third between runs
        # (bench/NOTES.md, session 6): the best of three, so that our ratio is against its best.
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = hf.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            sync()
            runs.append((out.shape[1] - prompt.shape[1]) / (time.perf_counter() - t0))
        res["hf_decode_tok_s"] = max(runs)
        res["hf_decode_runs_tok_s"] = [round(r, 2) for r in runs]
    del hf
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return res


# ------------------------------------------------------------------------------------------------

def scratch_checkpoint(size: str, layout: str, scratch: str | None) -> Path:
    from .testing import write_synthetic_checkpoint

    roots = [scratch] if scratch else ["/dev/shm", tempfile.gettempdir()]
    need = {"20b": 13.8e9, "120b": 65.3e9}.get(size, 1e9)  # the synthetic checkpoint's bytes
    for root in roots:
        if root and os.path.isdir(root) and shutil.disk_usage(root).free > need * 1.01:
            path = Path(root) / f"gpt_oss_c-bench-{size}-{layout}"
            if not (path / "config.json").is_file():
                log(f"writing a synthetic {size} ({layout}) checkpoint to {path} ...")
                t0 = time.perf_counter()
                write_synthetic_checkpoint(path, size=size, layout=layout, seed=0)
                log(f"  done in {time.perf_counter() - t0:.0f}s")
            return path
    raise OSError(f"no scratch directory with {need / 1e9:.0f} GB free for a synthetic {size}; pass --scratch")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gpt-oss-c bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint directory (default: a synthetic --size checkpoint)")
    ap.add_argument("--size", default="20b", help="synthetic size when --model is absent (tiny, 20b, 120b)")
    ap.add_argument("--scratch", help="where to write the synthetic checkpoint (default /dev/shm or tmp)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compare-hf", action="store_true", help="also run HF transformers' GptOss in bf16")
    ap.add_argument("--quick", action="store_true", help="skip the 8K-context and 8192-prefill runs")
    ap.add_argument("--out", help="JSON output path (default bench/results/<date>-<card>.json if writable)")
    args = ap.parse_args(argv)

    import gpt_oss_c

    path = Path(args.model) if args.model else scratch_checkpoint(args.size, "hf", args.scratch)
    cuda = args.device.startswith("cuda")
    res = {"date": datetime.date.today().isoformat(), **card_info()}
    if not cuda:
        res["card"] = f"cpu ({os.cpu_count()} threads)"
    res["build"] = gpt_oss_c.build_info()
    steps = 8 + (2 if args.compare_hf else 0) - (2 if args.quick else 0)
    out = args.out
    if out is None:
        d = Path("bench/results")
        if d.is_dir():
            out = d / f"{res['date']}-{res['card'].replace(' ', '_')}.json"

    def save() -> None:  # after every stage, so that a run cut short keeps what it measured
        if out:
            Path(out).write_text(json.dumps(res, indent=2) + "\n")

    prog = Progress(steps)
    if cuda:
        res.update(measure_ceilings())
    prog.step("ceilings")

    t0 = time.perf_counter()
    model = gpt_oss_c.load(path, device=args.device, max_context=8192 + 512 if not args.quick else 1024)
    res["load_s"] = time.perf_counter() - t0
    cfg = model.config
    res["model"] = cfg.name
    res["bytes_per_token"] = bytes_per_token(cfg, 128 + 128)
    prog.step("load")
    save()
    res["decode_bs1_tok_s"], res["decode_bs1_wall_tok_s"] = decode_rates(model, 128, 256)
    prog.step("decode bs1")
    save()
    if "copy_bw_GBps" in res:
        res["decode_bs1_floor_tok_s"] = res["copy_bw_GBps"] * 1e9 / res["bytes_per_token"]
        res["decode_bs1_floor_fraction"] = res["decode_bs1_tok_s"] / res["decode_bs1_floor_tok_s"]
    if not args.quick:
        res["decode_ctx8k_tok_s"] = bench_decode(model, 8192, 128, seed=3)
        res["bytes_per_token_ctx8k"] = bytes_per_token(cfg, 8192 + 64)
        if "copy_bw_GBps" in res:
            res["decode_ctx8k_floor_fraction"] = (
                res["decode_ctx8k_tok_s"] * res["bytes_per_token_ctx8k"] / (res["copy_bw_GBps"] * 1e9))
        prog.step("decode 8K context")
        save()
    for n in (512, 2048) + (() if args.quick else (8192,)):
        if n <= model.max_context:
            res[f"prefill_{n}_tok_s"] = bench_prefill(model, n)
            res[f"prefill_{n}_tflops"] = res[f"prefill_{n}_tok_s"] * flops_per_token(cfg, n // 2) / 1e12
    prog.step("prefill")
    save()
    info = model.info()
    del model
    batched = gpt_oss_c.load(path, device=args.device, max_context=512, max_batch=64)
    for b in (8, 32, 64):
        res[f"batch{b}_tok_s"] = bench_batch(batched, b)
    info2 = batched.info()
    res["peak_gpu_mem_GB"] = max(info["device_memory_used"], info2["device_memory_used"]) / 1e9
    del batched
    prog.step("batched decode")
    save()
    if args.compare_hf:
        res.update(bench_hf(path, 128, 64, args.device))
        res["ratio_decode_vs_hf"] = res["decode_bs1_tok_s"] / res["hf_decode_tok_s"]
        res["ratio_prefill_2048_vs_hf"] = res.get("prefill_2048_tok_s", 0) / res["hf_prefill_2048_tok_s"]
        prog.step("HF transformers")
        save()
    prog.step("done")

    keys = [k for k in res if k not in ("build",)]
    width = max(len(k) for k in keys)
    for k in keys:
        v = res[k]
        print(f"{k:<{width}}  {v:,.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if out:
        save()
        log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
