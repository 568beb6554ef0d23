"""Synthetic gpt-oss checkpoints: the real file layouts, names, shapes and dtypes, random weights.

`write_synthetic_checkpoint` writes either layout (GPT_OSS_FORMAT.md sections 1-2):
  * "hf": config.json, generation_config.json, model.safetensors or shards
    model-{i:05d}-of-{last:05d}.safetensors (0-based, last = shards - 1) plus
    model.safetensors.index.json;
  * "original": config.json (the 16 keys), dtypes.json, model.safetensors or shards
    model--{i:05d}-of-{n:05d}.safetensors (1-based, double dash, as 120b has them) + index.
It writes the safetensors format itself (header JSON in safetensors' own order: __metadata__,
then tensors sorted by dtype, widest first, then name; padded with spaces so the data starts
8-byte aligned), tensor by tensor in chunks from a few threads, with bounded memory: a 20b
(13.8 GB) or 120b (65 GB) never needs the model in RAM.

Values are a pure function of (seed, canonical tensor name, chunk index), so the same seed gives
byte-identical weights in both layouts (the original's fused qkv is the q, k and v rows in
order). Each canonical tensor is drawn in chunks of CHUNK_ELEMS elements, each chunk from its own
SFC64 stream, so the result does not depend on the thread count. Distributions (bf16 unless said):
  embed ~ N(0, 1); unembed ~ N(0, UNEMBED_GAIN/sqrt(H)) so logits have a std of a few units;
  q/k/v/gate weights ~ N(0, 1/sqrt(H)); o ~ N(0, 1/sqrt(nq*64)); biases ~ N(0, BIAS_STD);
  norm scales ~ 1 + N(0, NORM_STD); sinks ~ N(0, 1);
  MXFP4 blocks: uniform random bytes (uniform FP4 codes, E[v^2] = 8.5625); scales (U8, E8M0):
  a per-block mix of exponents e0 and e0 + 1 chosen so the dequantised weights have std
  1/sqrt(K), K being the input width (H for mlp1, I for mlp2).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import fields
from typing import Any, Mapping

import numpy as np

from ..config import GPT_OSS_20B, GPT_OSS_120B, ModelConfig
from ..loader import DTYPE_SIZES, INDEX_NAME, StoredTensor, stored_tensors

TINY = ModelConfig(
    num_hidden_layers=4, num_experts=8, experts_per_token=4,
    vocab_size=201088,        # the real vocabulary, so the real tokenizer works
    hidden_size=128,
    intermediate_size=160,    # != hidden, and 5 MXFP4 blocks (not a power of two)
    head_dim=64, num_attention_heads=8, num_key_value_heads=2,
    sliding_window=8,         # short prompts already cross the window
    initial_context_length=4096, rope_theta=150000.0, rope_scaling_factor=32.0,
    rope_ntk_alpha=1.0, rope_ntk_beta=32.0, swiglu_limit=7.0)
SIZES = {"tiny": TINY, "20b": GPT_OSS_20B, "120b": GPT_OSS_120B}
# The real checkpoints' shard counts: (hf, original).
REAL_SHARDS = {"20b": (3, 1), "120b": (15, 7)}

UNEMBED_GAIN = 3.0
BIAS_STD = 0.05
NORM_STD = 0.1
FP4_MEAN_SQUARE = 8.5625  # mean of v^2 over the 16 E2M1 codes
CHUNK_ELEMS = 1 << 23     # part of the value definition: changing it changes the weights

GENERATION_CONFIG = {
    "bos_token_id": 199998,
    "do_sample": True,
    "eos_token_id": [200002, 199999, 200012],
    "pad_token_id": 199999,
    "transformers_version": "4.55.0.dev0",
}
_STORED_DTYPE = {"dense": "BF16", "mxfp4_blocks": "U8", "mxfp4_scales": "U8"}
_LOGICAL_DTYPE = {"dense": "BF16", "mxfp4_blocks": "FP4", "mxfp4_scales": "UE8"}  # dtypes.json
# safetensors orders data by dtype in reverse Dtype-enum order (BF16 before U8), then by name.
_DTYPE_RANK = {"BF16": 0, "U8": 1}


def synthetic_config(size: str | Mapping[str, Any] = "tiny") -> ModelConfig:
    """The config of a synthetic size: "tiny", "20b", "120b", or a dict of ModelConfig fields that
    override a base size (key "base", default "tiny"), e.g. {"vocab_size": 1024}."""
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown synthetic size {size!r}; use one of {list(SIZES)} or a dict")
        return SIZES[size]
    if not isinstance(size, Mapping):
        raise TypeError(f"size must be a str or a dict, got {type(size).__name__}")
    overrides = dict(size)
    base = overrides.pop("base", "tiny")
    valid = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; valid fields: {sorted(valid)}")
    return synthetic_config(base).replace(**overrides)


def write_synthetic_checkpoint(path: str | os.PathLike, size: str | Mapping[str, Any] = "tiny",
                               layout: str = "hf", seed: int = 0,
                               shards: int | None = None) -> str:
    """Writes a synthetic checkpoint into directory `path` (created; must be empty) and returns
    its absolute path. `shards=None` uses the real shard count for "20b"/"120b" (hf 3/15,
    original 1/7) and one file otherwise. Shows progress on stderr (TTY only) above 1 GiB."""
    cfg = synthetic_config(size)
    if layout not in ("hf", "original"):
        raise ValueError(f"layout must be 'hf' or 'original', got {layout!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if shards is None:
        real = REAL_SHARDS.get(size) if isinstance(size, str) else None
        shards = real[layout == "original"] if real else 1
    stored = stored_tensors(cfg, layout)
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= len(stored):
        raise ValueError(f"shards must be an int in [1, {len(stored)}], got {shards!r}")
    original_json = cfg.to_original_json() if layout == "original" else None  # may refuse cfg

    path = os.path.abspath(os.fspath(path))
    os.makedirs(path, exist_ok=True)
    if os.listdir(path):
        raise FileExistsError(f"{path} is not empty; write a synthetic checkpoint into a new "
                              f"or empty directory")

    groups = _split_into_shards(stored, shards)
    names = [_shard_name(layout, i, shards) for i in range(shards)]
    if layout == "hf":
        _write_text(path, "config.json", cfg.to_hf_json())
        _write_text(path, "generation_config.json",
                    json.dumps(GENERATION_CONFIG, indent=2, sort_keys=True) + "\n")
    else:
        _write_text(path, "config.json", original_json)
        _write_text(path, "dtypes.json",
                    json.dumps({st.name: _LOGICAL_DTYPE[st.kind] for st in stored}))
    if shards > 1:
        index = {"metadata": {"total_size": sum(_nbytes(st) for st in stored)},
                 "weight_map": {st.name: names[g] for g, grp in enumerate(groups) for st in grp}}
        _write_text(path, INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n")

    _Writer(cfg, seed, [(os.path.join(path, n), grp) for n, grp in zip(names, groups)]).run()
    return path


# ---------------------------------------------------------------------------------------------
# file layout


def _nbytes(st: StoredTensor) -> int:
    return math.prod(st.shape) * DTYPE_SIZES[_STORED_DTYPE[st.kind]]


def _shard_name(layout: str, i: int, n: int) -> str:
    if n == 1:
        return "model.safetensors"
    if layout == "hf":
        return f"model-{i:05d}-of-{n - 1:05d}.safetensors"
    return f"model--{i + 1:05d}-of-{n:05d}.safetensors"


def _split_into_shards(stored: list[StoredTensor], n: int) -> list[list[StoredTensor]]:
    """Consecutive runs of tensors of about total/n bytes each; every shard gets >= 1 tensor."""
    total = sum(_nbytes(st) for st in stored)
    groups: list[list[StoredTensor]] = [[] for _ in range(n)]
    cum, prev = 0, -1
    for t, st in enumerate(stored):
        g = min(cum * n // total, n - 1)
        g = min(max(g, n - (len(stored) - t)), prev + 1)  # no empty shard, none skipped
        groups[g].append(st)
        cum += _nbytes(st)
        prev = g
    return groups


def _safetensors_header(tensors: list[StoredTensor]) -> tuple[bytes, dict[str, int]]:
    """(header bytes incl. the 8-byte length, data offset of each tensor relative to data start)."""
    order = sorted(tensors, key=lambda st: (_DTYPE_RANK[_STORED_DTYPE[st.kind]], st.name))
    hdr: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offsets, pos = {}, 0
    for st in order:
        n = _nbytes(st)
        hdr[st.name] = {"dtype": _STORED_DTYPE[st.kind], "shape": list(st.shape),
                        "data_offsets": [pos, pos + n]}
        offsets[st.name] = pos
        pos += n
    raw = json.dumps(hdr, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, offsets


def _write_text(d: str, name: str, text: str) -> None:
    with open(os.path.join(d, name), "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


# ---------------------------------------------------------------------------------------------
# values


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def _dense_params(cfg: ModelConfig, canon: str) -> tuple[float, float]:
    """(mean, std) of a dense canonical tensor."""
    leaf = canon.rsplit(".", 1)[-1]
    H = cfg.hidden_size
    if leaf == "embed":
        return 0.0, 1.0
    if leaf == "unembed":
        return 0.0, UNEMBED_GAIN / math.sqrt(H)
    if leaf in ("attn_norm", "mlp_norm", "norm"):
        return 1.0, NORM_STD
    if leaf in ("q_w", "k_w", "v_w", "gate_w"):
        return 0.0, 1.0 / math.sqrt(H)
    if leaf == "o_w":
        return 0.0, 1.0 / math.sqrt(cfg.num_attention_heads * cfg.head_dim)
    if leaf == "sinks":
        return 0.0, 1.0
    return 0.0, BIAS_STD  # q_b, k_b, v_b, o_b, gate_b, b1, b2


def _scale_mix(k: int) -> tuple[int, float]:
    """(e0, p): exponent e0 + 1 with probability p, else e0, gives E[w^2] = 1/k."""
    target = 1.0 / (k * FP4_MEAN_SQUARE)
    e0 = math.floor(math.log2(target) / 2)
    return e0, (target - 4.0 ** e0) / (4.0 ** (e0 + 1) - 4.0 ** e0)


def _chunk_bytes(cfg: ModelConfig, seed: int, canon: str, kind: str, chunk: int,
                 n: int) -> np.ndarray:
    """Chunk `chunk` (n elements) of canonical tensor `canon`, as stored bytes."""
    rng = np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, _name_key(canon),
                                                                      chunk])))
    if kind == "mxfp4_blocks":
        return rng.bit_generator.random_raw((n + 7) // 8).view(np.uint8)[:n]
    if kind == "mxfp4_scales":
        k = cfg.hidden_size if canon.endswith("w1_scales") else cfg.intermediate_size
        e0, p = _scale_mix(k)
        return np.where(rng.random(n, dtype=np.float32) < p, 127 + e0 + 1, 127 + e0).astype(
            np.uint8)
    mean, std = _dense_params(cfg, canon)
    x = rng.standard_normal(n, dtype=np.float32)
    x *= std
    x += mean
    u = x.view(np.uint32)
    u += 0x8000  # round to nearest bf16 (half away from zero); no value here is near overflow
    return (u >> 16).astype(np.uint16).view(np.uint8)


class _Writer:
    """Fills pre-sized files chunk by chunk from a thread pool, at most 2 chunks per thread in
    flight (bounded memory); the chunks land at their offsets with pwrite, in any order."""

    def __init__(self, cfg: ModelConfig, seed: int, files: list[tuple[str, list[StoredTensor]]]):
        self.cfg, self.seed, self.files = cfg, seed, files
        self.total = sum(_nbytes(st) for _, grp in files for st in grp)
        self.done = 0
        self.lock = threading.Lock()
        self.show = sys.stderr.isatty() and self.total > (1 << 30)
        self.t0 = self.last = time.monotonic()

    def _tasks(self, fd: int, base: int, st: StoredTensor):
        offset = base
        for canon, shape in st.parts:
            n = math.prod(shape)
            size = DTYPE_SIZES[_STORED_DTYPE[st.kind]]
            for c in range((n + CHUNK_ELEMS - 1) // CHUNK_ELEMS):
                m = min(CHUNK_ELEMS, n - c * CHUNK_ELEMS)
                yield fd, offset + c * CHUNK_ELEMS * size, canon, st.kind, c, m
            offset += n * size

    def _run_one(self, fd: int, offset: int, canon: str, kind: str, chunk: int, n: int) -> None:
        data = memoryview(_chunk_bytes(self.cfg, self.seed, canon, kind, chunk, n))
        while len(data):
            w = os.pwrite(fd, data, offset)
            data, offset = data[w:], offset + w
        with self.lock:
            self.done += n * DTYPE_SIZES[_STORED_DTYPE[kind]]
            now = time.monotonic()
            if self.show and (now - self.last > 0.5 or self.done == self.total):
                self.last = now
                rate = self.done / max(now - self.t0, 1e-9) / 1e6
                sys.stderr.write(
                    f"\rwriting synthetic checkpoint: {100 * self.done / self.total:5.1f}% "
                    f"{self.done / 1e9:.1f}/{self.total / 1e9:.1f} GB, {rate:.0f} MB/s")
                if self.done == self.total:
                    sys.stderr.write("\n")
                sys.stderr.flush()

    def run(self) -> None:
        fds = []
        try:
            tasks = []
            for fname, grp in self.files:
                header, offsets = _safetensors_header(grp)
                fd = os.open(fname, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                fds.append(fd)
                os.ftruncate(fd, len(header) + sum(_nbytes(st) for st in grp))
                os.pwrite(fd, header, 0)
                for st in grp:
                    tasks.append(self._tasks(fd, len(header) + offsets[st.name], st))
            workers = max(1, min(os.cpu_count() or 1, 32))
            with ThreadPoolExecutor(workers) as pool:
                pending = set()
                for gen in tasks:
                    for args in gen:
                        if len(pending) >= 2 * workers:
                            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                            for f in finished:
                                f.result()
                        pending.add(pool.submit(self._run_one, *args))
                for f in pending:
                    f.result()
        finally:
            for fd in fds:
                os.close(fd)
