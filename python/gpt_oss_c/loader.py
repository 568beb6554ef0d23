"""Finds, parses and validates a gpt-oss checkpoint directory, in either real layout.

Layouts (GPT_OSS_FORMAT.md section 2):
  * "hf": the Hugging Face repo root: config.json plus model.safetensors, or shards
    model-0000i-of-0000N.safetensors listed by model.safetensors.index.json; names like
    `model.layers.3.self_attn.q_proj.weight`, `...mlp.experts.gate_up_proj_blocks`;
  * "original": OpenAI's `original/` folder: config.json plus one or more *.safetensors
    (120b: model--0000i-of-00007.safetensors); names like `block.3.attn.qkv.weight`.
The layout is decided by the tensor names, not by the file names. Given a directory that holds a
complete root checkpoint (config.json and *.safetensors) that one is loaded; a directory without
one but with an `original/` subfolder (e.g. a download of only `original/*`) loads `original/`.
Pass `<dir>/original` to choose the original layout explicitly when both are present.

Nothing here reads tensor data: only the safetensors headers (8-byte little-endian length, then a
JSON object mapping each name to {dtype, shape, data_offsets} relative to the end of the header,
plus an optional __metadata__). Every tensor comes out as a TensorRef (file, absolute byte offset,
nbytes, dtype, shape) under one canonical naming shared with the C++ engine (csrc/engine.h):
  embed [V, H], norm [H], unembed [V, H], and per layer i `layers.{i}.`:
  attn_norm [H], q_w [nq*64, H], q_b [nq*64], k_w [nkv*64, H], k_b, v_w [nkv*64, H], v_b,
  o_w [H, nq*64], o_b [H], sinks [nq], mlp_norm [H], gate_w [E, H], gate_b [E],
  w1_blocks [E, 2I, H/32, 16] U8, w1_scales [E, 2I, H/32] U8, b1 [E, 2I],
  w2_blocks [E, H, I/32, 16] U8, w2_scales [E, H, I/32] U8, b2 [E, H].
The original layout's fused qkv weight/bias becomes three refs into it (its rows are contiguous,
q then k then v), so nothing is copied. Dense tensors may be BF16, F16 or F32; MXFP4 blocks and
scales must be U8.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Iterable

from .config import ModelConfig
from .errors import CheckpointError, UnsupportedConfigError

# Bytes per element of every dtype the safetensors format defines with a whole-byte size.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
DENSE_DTYPES = ("BF16", "F16", "F32")
MXFP4_DTYPES = ("U8",)

# safetensors itself refuses headers above 100 MB; a real gpt-oss header is ~100 kB.
MAX_HEADER_BYTES = 100_000_000

INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorRef:
    """`nbytes` bytes at absolute byte `offset` of `file`: a row-major `shape` of `dtype`."""

    name: str
    file: str
    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint: `path` is the directory actually loaded (maybe `<dir>/original`),
    `tensors` maps every canonical name (see the module docstring) to its TensorRef, in model
    order (embed, layers 0.., norm, unembed)."""

    path: str
    layout: str
    config: ModelConfig
    tensors: dict[str, TensorRef]


@dataclass(frozen=True)
class StoredTensor:
    """A tensor as one layout stores it: its stored name and shape, whether it is dense or an
    MXFP4 part, and the canonical tensors it holds, in row order (one, or q, k, v for the
    original layout's fused qkv)."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "dense" | "mxfp4_blocks" | "mxfp4_scales"
    parts: tuple[tuple[str, tuple[int, ...]], ...]


# ---------------------------------------------------------------------------------------------
# the tensor set of each layout


def canonical_tensors(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Canonical name -> (shape, kind) for every tensor of the model, in model order."""
    H, I, E, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.vocab_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    out: dict[str, tuple[tuple[int, ...], str]] = {"embed": ((V, H), "dense")}
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        out.update({
            p + "attn_norm": ((H,), "dense"),
            p + "q_w": ((q, H), "dense"), p + "q_b": ((q,), "dense"),
            p + "k_w": ((kv, H), "dense"), p + "k_b": ((kv,), "dense"),
            p + "v_w": ((kv, H), "dense"), p + "v_b": ((kv,), "dense"),
            p + "o_w": ((H, q), "dense"), p + "o_b": ((H,), "dense"),
            p + "sinks": ((cfg.num_attention_heads,), "dense"),
            p + "mlp_norm": ((H,), "dense"),
            p + "gate_w": ((E, H), "dense"), p + "gate_b": ((E,), "dense"),
            p + "w1_blocks": ((E, 2 * I, H // 32, 16), "mxfp4_blocks"),
            p + "w1_scales": ((E, 2 * I, H // 32), "mxfp4_scales"),
            p + "b1": ((E, 2 * I), "dense"),
            p + "w2_blocks": ((E, H, I // 32, 16), "mxfp4_blocks"),
            p + "w2_scales": ((E, H, I // 32), "mxfp4_scales"),
            p + "b2": ((E, H), "dense"),
        })
    out["norm"] = ((H,), "dense")
    out["unembed"] = ((V, H), "dense")
    return out


_HF_LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "q_w": "self_attn.q_proj.weight", "q_b": "self_attn.q_proj.bias",
    "k_w": "self_attn.k_proj.weight", "k_b": "self_attn.k_proj.bias",
    "v_w": "self_attn.v_proj.weight", "v_b": "self_attn.v_proj.bias",
    "o_w": "self_attn.o_proj.weight", "o_b": "self_attn.o_proj.bias",
    "sinks": "self_attn.sinks",
    "mlp_norm": "post_attention_layernorm.weight",
    "gate_w": "mlp.router.weight", "gate_b": "mlp.router.bias",
    "w1_blocks": "mlp.experts.gate_up_proj_blocks", "w1_scales": "mlp.experts.gate_up_proj_scales",
    "b1": "mlp.experts.gate_up_proj_bias",
    "w2_blocks": "mlp.experts.down_proj_blocks", "w2_scales": "mlp.experts.down_proj_scales",
    "b2": "mlp.experts.down_proj_bias",
}
_ORIGINAL_LAYER_NAMES = {
    "attn_norm": "attn.norm.scale",
    "o_w": "attn.out.weight", "o_b": "attn.out.bias",
    "sinks": "attn.sinks",
    "mlp_norm": "mlp.norm.scale",
    "gate_w": "mlp.gate.weight", "gate_b": "mlp.gate.bias",
    "w1_blocks": "mlp.mlp1_weight.blocks", "w1_scales": "mlp.mlp1_weight.scales",
    "b1": "mlp.mlp1_bias",
    "w2_blocks": "mlp.mlp2_weight.blocks", "w2_scales": "mlp.mlp2_weight.scales",
    "b2": "mlp.mlp2_bias",
}
_GLOBAL_NAMES = {
    "hf": {"embed": "model.embed_tokens.weight", "norm": "model.norm.weight",
           "unembed": "lm_head.weight"},
    "original": {"embed": "embedding.weight", "norm": "norm.scale",
                 "unembed": "unembedding.weight"},
}


def stored_tensors(cfg: ModelConfig, layout: str) -> list[StoredTensor]:
    """Every tensor a checkpoint of `layout` ("hf" or "original") holds for `cfg`, in model order
    (the order the original checkpoint lists them)."""
    if layout not in _GLOBAL_NAMES:
        raise ValueError(f"layout must be 'hf' or 'original', got {layout!r}")
    canon = canonical_tensors(cfg)
    out: list[StoredTensor] = []

    def one(stored: str, c: str) -> None:
        shape, kind = canon[c]
        out.append(StoredTensor(stored, shape, kind, ((c, shape),)))

    one(_GLOBAL_NAMES[layout]["embed"], "embed")
    for i in range(cfg.num_hidden_layers):
        c = f"layers.{i}."
        if layout == "hf":
            for key, stored in _HF_LAYER_NAMES.items():
                one(f"model.layers.{i}.{stored}", c + key)
            continue
        p = f"block.{i}."
        one(p + "attn.norm.scale", c + "attn_norm")
        for suffix, keys in (("weight", ("q_w", "k_w", "v_w")), ("bias", ("q_b", "k_b", "v_b"))):
            parts = tuple((c + k, canon[c + k][0]) for k in keys)
            rows = sum(s[0] for _, s in parts)
            out.append(StoredTensor(p + "attn.qkv." + suffix, (rows,) + parts[0][1][1:], "dense",
                                    parts))
        for key, stored in _ORIGINAL_LAYER_NAMES.items():
            if key != "attn_norm":
                one(p + stored, c + key)
    one(_GLOBAL_NAMES[layout]["norm"], "norm")
    one(_GLOBAL_NAMES[layout]["unembed"], "unembed")
    return out


# ---------------------------------------------------------------------------------------------
# safetensors headers


@dataclass(frozen=True)
class HeaderEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


def read_safetensors_header(path: str) -> dict[str, HeaderEntry]:
    """Parses and checks one safetensors header; returns name -> entry with absolute offsets.

    Checks that the length field is sane and inside the file, the JSON is an object of
    {dtype, shape, data_offsets} entries, every dtype is known, every byte range matches
    dtype x shape, lies inside the file and overlaps no other. Raises CheckpointError."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(
                f"{path}: file is {size} bytes, too short to be a safetensors file (it must start "
                f"with an 8-byte header length)", file=path)
        n = int.from_bytes(head, "little")
        if n < 2 or n > MAX_HEADER_BYTES:
            raise CheckpointError(
                f"{path}: the header length field says {n} bytes, which is not plausible (expected "
                f"2..{MAX_HEADER_BYTES}); this is not a safetensors file or its first bytes are "
                f"corrupt", file=path)
        if 8 + n > size:
            raise CheckpointError(
                f"{path}: truncated: the header length field says {n} bytes but only {size - 8} "
                f"bytes follow it", file=path)
        raw = f.read(n)
    try:
        hdr = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({e})",
                              file=path) from None
    if not isinstance(hdr, dict):
        raise CheckpointError(
            f"{path}: the safetensors header is a JSON {type(hdr).__name__}, expected an object "
            f"mapping tensor names to entries", file=path)

    data_start = 8 + n
    entries: dict[str, HeaderEntry] = {}
    for name, e in hdr.items():
        if name == "__metadata__":
            if not isinstance(e, dict) or not all(isinstance(v, str) for v in e.values()):
                raise CheckpointError(
                    f"{path}: __metadata__ must map strings to strings, got {e!r}", file=path)
            continue

        def bad(msg: str) -> CheckpointError:
            return CheckpointError(f"{path}: tensor {name}: {msg}", file=path, tensor=name)

        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= e.keys():
            raise bad(f"header entry {e!r} lacks dtype/shape/data_offsets")
        dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise bad(f"unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_nonneg_int(d) for d in shape):
            raise bad(f"shape {shape!r} is not a list of non-negative integers")
        if (not isinstance(offs, list) or len(offs) != 2 or not all(_is_nonneg_int(o) for o in offs)
                or offs[0] > offs[1]):
            raise bad(f"data_offsets {offs!r} is not [begin, end] with 0 <= begin <= end")
        need = math.prod(shape) * DTYPE_SIZES[dtype]
        if offs[1] - offs[0] != need:
            raise bad(f"data_offsets {offs} span {offs[1] - offs[0]} bytes but dtype {dtype} with "
                      f"shape {tuple(shape)} needs {need}")
        if data_start + offs[1] > size:
            raise bad(f"data ends at byte {data_start + offs[1]} but the file has only {size} "
                      f"bytes (truncated?)")
        entries[name] = HeaderEntry(dtype, tuple(shape), data_start + offs[0], data_start + offs[1])

    prev_name, prev_end = None, data_start
    for name, e in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if e.begin < prev_end and e.end > e.begin:
            raise CheckpointError(
                f"{path}: tensor {name} (bytes {e.begin}..{e.end}) overlaps tensor {prev_name} "
                f"(ends at {prev_end})", file=path, tensor=name)
        if e.end > prev_end:
            prev_name, prev_end = name, e.end
    return entries


def _is_nonneg_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# ---------------------------------------------------------------------------------------------
# loading


def resolve_checkpoint_dir(path: str | os.PathLike) -> str:
    """The directory to load: `path` if it holds config.json and *.safetensors, else
    `path/original` if that holds a config.json. Raises FileNotFoundError / NotADirectoryError /
    CheckpointError."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if not os.path.isdir(path):
        raise NotADirectoryError(
            f"{path} is a file; pass the checkpoint directory (the one holding config.json)")
    has_cfg = os.path.isfile(os.path.join(path, "config.json"))
    has_st = any(f.endswith(".safetensors") for f in os.listdir(path))
    orig = os.path.join(path, "original")
    if has_cfg and has_st:
        return path
    if os.path.isfile(os.path.join(orig, "config.json")):
        return orig
    if not has_cfg:
        raise FileNotFoundError(
            f"no config.json in {path} (nor in {orig}); is this a gpt-oss checkpoint directory?")
    raise CheckpointError(f"{path} has a config.json but no *.safetensors weight files", file=path)


def _shard_files(d: str) -> tuple[list[str], dict[str, str] | None, str | None]:
    """The weight files to read, and the index's weight_map (tensor -> file) when there is one."""
    index = os.path.join(d, INDEX_NAME)
    if not os.path.isfile(index):
        files = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".safetensors"))
        if not files:
            raise CheckpointError(f"{d} holds no *.safetensors weight files", file=d)
        return files, None, None
    try:
        with open(index, "rb") as f:
            idx = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{index} is not valid JSON: {e}", file=index) from None
    wm = idx.get("weight_map") if isinstance(idx, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise CheckpointError(f"{index} has no weight_map object mapping tensor names to files",
                              file=index)
    files = []
    for shard in sorted(set(wm.values())):
        full = os.path.join(d, shard)
        if os.path.basename(shard) != shard or not os.path.isfile(full):
            tensor = next(t for t, s in wm.items() if s == shard)
            raise CheckpointError(
                f"{index} maps tensor {tensor} (and others) to shard {shard!r}, which is not a "
                f"file in {d}", file=index, tensor=tensor)
        files.append(full)
    return files, {t: os.path.join(d, s) for t, s in wm.items()}, index


def _detect_layout(names: Iterable[str], d: str) -> str:
    names = list(names)
    hf = [n for n in names if n.startswith("model.") or n == "lm_head.weight"]
    orig = [n for n in names if n.startswith("block.") or n in (
        "embedding.weight", "unembedding.weight", "norm.scale")]
    if hf and orig:
        raise CheckpointError(
            f"{d} mixes Hugging Face tensor names (e.g. {hf[0]}) with original-layout names "
            f"(e.g. {orig[0]}); keep one layout per directory", file=d)
    if hf:
        return "hf"
    if orig:
        return "original"
    raise CheckpointError(
        f"{d} holds no gpt-oss tensors (expected names like model.layers.0.* or block.0.*; found "
        f"{sorted(names)[:5]})", file=d)


def _reject_dequantized(names: Iterable[str], d: str) -> None:
    for n in names:
        if n.endswith((".mlp.experts.gate_up_proj", ".mlp.experts.down_proj", ".mlp.mlp1_weight",
                       ".mlp.mlp2_weight")):
            raise UnsupportedConfigError(
                f"{d} is a dequantised checkpoint (it holds unpacked expert weights such as {n}); "
                f"gpt_oss_c requires the MXFP4 expert weights (*_blocks / *_scales) of the "
                f"official openai/gpt-oss checkpoints")


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Finds, parses and validates the checkpoint in `path` (see the module docstring).

    Raises FileNotFoundError (no directory or config.json), CheckpointError (corrupt, truncated
    or mismatched files: the message names the file, the tensor, what was expected and found),
    UnsupportedConfigError (a config or a dequantised checkpoint the engine cannot run)."""
    d = resolve_checkpoint_dir(path)
    cfg = ModelConfig.from_file(os.path.join(d, "config.json"))
    files, weight_map, index = _shard_files(d)

    found: dict[str, tuple[str, HeaderEntry]] = {}
    for f in files:
        for name, e in read_safetensors_header(f).items():
            if name in found:
                raise CheckpointError(
                    f"tensor {name} appears in both {found[name][0]} and {f}", file=f, tensor=name)
            found[name] = (f, e)
    if weight_map is not None:
        for name, f in weight_map.items():
            if name not in found or found[name][0] != f:
                where = f"in {found[name][0]}" if name in found else "in no shard"
                raise CheckpointError(
                    f"{index} says tensor {name} is in {f}, but it is {where}", file=index,
                    tensor=name)

    layout = _detect_layout(found, d)
    _reject_dequantized(found, d)
    expected = stored_tensors(cfg, layout)

    missing = [st.name for st in expected if st.name not in found]
    if missing:
        raise CheckpointError(
            f"{d}: {len(missing)} tensor(s) the config needs are missing from "
            f"{', '.join(os.path.basename(f) for f in files)}: {', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''} (config: {cfg.num_hidden_layers} layers, "
            f"{cfg.num_experts} experts, {layout} layout)", file=d, tensor=missing[0])
    extra = sorted(set(found) - {st.name for st in expected})
    if extra:
        raise CheckpointError(
            f"{d}: {len(extra)} tensor(s) that a {cfg.num_hidden_layers}-layer, "
            f"{cfg.num_experts}-expert {layout} checkpoint does not have: {', '.join(extra[:5])}"
            f"{', ...' if len(extra) > 5 else ''}; does config.json match the weights?",
            file=d, tensor=extra[0])

    refs: dict[str, TensorRef] = {}
    for st in expected:
        f, e = found[st.name]
        allowed = DENSE_DTYPES if st.kind == "dense" else MXFP4_DTYPES
        if e.dtype not in allowed:
            what = {"dense": "a dense tensor", "mxfp4_blocks": "MXFP4 blocks (packed FP4 pairs)",
                    "mxfp4_scales": "MXFP4 scales (E8M0 exponents)"}[st.kind]
            raise CheckpointError(
                f"{f}: tensor {st.name} has dtype {e.dtype}, expected {' or '.join(allowed)} for "
                f"{what}", file=f, tensor=st.name)
        if e.shape != st.shape:
            raise CheckpointError(
                f"{f}: tensor {st.name} has shape {e.shape}, expected {st.shape} (from "
                f"{os.path.join(d, 'config.json')})", file=f, tensor=st.name)
        offset = e.begin
        for canon, shape in st.parts:
            nbytes = math.prod(shape) * DTYPE_SIZES[e.dtype]
            refs[canon] = TensorRef(canon, f, offset, nbytes, e.dtype, shape)
            offset += nbytes
    order = canonical_tensors(cfg)
    return Checkpoint(d, layout, cfg, {name: refs[name] for name in order})


def core_tensor_list(ckpt: Checkpoint) -> list[tuple[str, str, int, int, str, list[int]]]:
    """[(name, file, offset, nbytes, dtype, shape), ...] in model order, for the C++ binding."""
    return [(r.name, r.file, r.offset, r.nbytes, r.dtype, list(r.shape))
            for r in ckpt.tensors.values()]
