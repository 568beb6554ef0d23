"""The `gpt-oss-c` command: generate, chat, bench, make-test-model, info."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def demo_model_path() -> Path:
    """A tiny random-weight checkpoint, created once in the user's cache directory."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt_oss_c" / "demo-tiny-hf"
    if not (base / "config.json").is_file():
        from .testing import write_synthetic_checkpoint

        print(f"creating the tiny demo checkpoint in {base} ...", file=sys.stderr)
        tmp = base.with_name(base.name + f".tmp{os.getpid()}")
        write_synthetic_checkpoint(tmp, size="tiny", layout="hf", seed=0)
        tmp.rename(base)
    return base


def _model_path(args) -> Path:
    if args.model:
        return Path(args.model)
    print("note: no --model given; using a tiny synthetic demo model with RANDOM weights, so its output "
          "is gibberish. Pass --model DIR for a real gpt-oss checkpoint.", file=sys.stderr)
    return demo_model_path()


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory (HF or original layout); default: tiny random demo")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--max-context", type=int, default=None, help="KV-cache positions per sequence")


def _cmd_generate(args) -> int:
    import gpt_oss_c

    model = gpt_oss_c.load(_model_path(args), device=args.device, max_context=args.max_context)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    stop = list(args.stop or []) or None
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
              top_k=args.top_k, min_p=args.min_p, seed=args.seed, stop=stop)
    t0 = time.perf_counter()
    n = 0
    first = None
    finish = None
    for chunk in model.generate(prompt, stream=True, **kw):
        if first is None:
            first = time.perf_counter()
        n += len(chunk.token_ids)
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        finish = chunk.finish_reason or finish
    end = time.perf_counter()
    sys.stdout.write("\n")
    decode_rate = (n - 1) / (end - first) if n > 1 and end > first else 0.0
    print(f"[{n} tokens, finish_reason={finish}, time to first token {first - t0:.3f}s, "
          f"decode {decode_rate:.1f} tok/s on {model.device}]", file=sys.stderr)
    return 0


def _cmd_make_test_model(args) -> int:
    from .testing import write_synthetic_checkpoint

    size = json.loads(args.size) if args.size.startswith("{") else args.size
    t0 = time.perf_counter()
    path = write_synthetic_checkpoint(args.path, size=size, layout=args.layout, seed=args.seed, shards=args.shards)
    print(f"wrote a synthetic ({size}, {args.layout}) checkpoint with random weights to {path} "
          f"in {time.perf_counter() - t0:.1f}s")
    return 0


def _cmd_info(args) -> int:
    import gpt_oss_c

    out = {"build": gpt_oss_c.build_info()}
    if args.model:
        model = gpt_oss_c.load(args.model, device=args.device, max_context=args.max_context)
        out["model"] = model.info()
        out["config"] = {k: v for k, v in vars(model.config).items()}
    print(json.dumps(out, indent=2, default=str))
    return 0


def _cmd_chat(args) -> int:
    from .chat_cli import run_chat

    return run_chat(args)


def _cmd_bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpt-oss-c", description="gpt_oss_c: a compiled gpt-oss inference engine")
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt (streams; prints tok/s at the end)")
    _add_model_args(g)
    g.add_argument("prompt", nargs="?", help="prompt text (default: read stdin)")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.set_defaults(func=_cmd_generate)

    c = sub.add_parser("chat", help="interactive chat in the harmony format")
    _add_model_args(c)
    from .chat_cli import add_chat_arguments

    add_chat_arguments(c)
    c.set_defaults(func=_cmd_chat)

    b = sub.add_parser("bench", help="benchmark decode/prefill on the GPU (see python -m gpt_oss_c.bench -h)",
                       add_help=False)
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    b.set_defaults(func=_cmd_bench)

    m = sub.add_parser("make-test-model", help="write a synthetic checkpoint (real names/shapes, random weights)")
    m.add_argument("path")
    m.add_argument("--size", default="tiny", help="tiny, 20b, 120b, or a JSON dict of config overrides")
    m.add_argument("--layout", default="hf", choices=["hf", "original"])
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--shards", type=int, default=None, help="number of HF shards")
    m.set_defaults(func=_cmd_make_test_model)

    i = sub.add_parser("info", help="build facts, and a model's config and memory use")
    _add_model_args(i)
    i.set_defaults(func=_cmd_info)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, RuntimeError, NotImplementedError, MemoryError) as e:
        print(f"gpt-oss-c: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
