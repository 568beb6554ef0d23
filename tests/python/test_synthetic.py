"""Synthetic checkpoint writer: real files, names, shapes and dtypes; values; reference loaders."""

import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

from gpt_oss_c.config import FULL, GPT_OSS_20B, ModelConfig
from gpt_oss_c.errors import UnsupportedConfigError
from gpt_oss_c.loader import load_checkpoint, stored_tensors
from gpt_oss_c.testing import synthetic_config, write_synthetic_checkpoint
from gpt_oss_c.testing.synthetic import TINY

SMALL = {"vocab_size": 1000, "num_hidden_layers": 3}
TORCH_DTYPE = {"BF16": torch.bfloat16, "U8": torch.uint8}
FP4 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], np.float64)


def bf16_to_f64(raw: bytes) -> np.ndarray:
    return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32).astype(
        np.float64)


def mxfp4_decode(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """[E, R, G, 16] u8 + [E, R, G] u8 -> [E, R, G*32] float64 (GPT_OSS_FORMAT.md section 3)."""
    codes = np.stack([blocks & 15, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    w = FP4[codes] * np.ldexp(1.0, scales.astype(np.int32) - 127)[..., None]
    return w.reshape(*blocks.shape[:2], -1)


def read(ref) -> bytes:
    with open(ref.file, "rb") as f:
        f.seek(ref.offset)
        return f.read(ref.nbytes)


def safetensors_files(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".safetensors"))


# ---------------------------------------------------------------------------------------------
# configs


def test_synthetic_configs():
    assert synthetic_config() == TINY
    assert (TINY.num_hidden_layers, TINY.num_experts, TINY.experts_per_token) == (4, 8, 4)
    assert (TINY.vocab_size, TINY.num_attention_heads, TINY.num_key_value_heads) == (201088, 8, 2)
    assert TINY.sliding_window == 8
    assert synthetic_config("20b").name == "gpt-oss-20b"
    assert synthetic_config("120b").name == "gpt-oss-120b"
    small = synthetic_config({"vocab_size": 1000, "num_hidden_layers": 3})
    assert small.vocab_size == 1000 and small.layer_types == (
        "sliding_attention", "full_attention", "sliding_attention")
    assert synthetic_config({"base": "20b", "num_hidden_layers": 2}) == GPT_OSS_20B.replace(
        num_hidden_layers=2)


@pytest.mark.parametrize("size,exc,needle", [
    ("7b", ValueError, "unknown synthetic size '7b'"),
    ({"hidden": 64}, ValueError, "unknown config field(s) ['hidden']"),
    ({"head_dim": 128}, UnsupportedConfigError, "head_dim = 128"),
    (3, TypeError, "size must be a str or a dict"),
])
def test_bad_synthetic_sizes(size, exc, needle):
    with pytest.raises(exc) as e:
        synthetic_config(size)
    assert needle in str(e.value)


# ---------------------------------------------------------------------------------------------
# files


def test_tiny_has_the_real_vocab_and_stays_small(tmp_path):
    d = write_synthetic_checkpoint(tmp_path / "t")
    size = os.path.getsize(os.path.join(d, "model.safetensors"))
    assert size < 110e6
    assert load_checkpoint(d).config.vocab_size == 201088


def test_hf_files(tmp_path):
    cfg = synthetic_config(SMALL)
    d = write_synthetic_checkpoint(tmp_path / "h", SMALL, layout="hf")
    assert sorted(os.listdir(d)) == ["config.json", "generation_config.json", "model.safetensors"]
    text = open(os.path.join(d, "config.json")).read()
    assert text == cfg.to_hf_json()
    assert ModelConfig.from_file(os.path.join(d, "config.json")) == cfg
    gen = json.load(open(os.path.join(d, "generation_config.json")))
    assert gen == {"bos_token_id": 199998, "do_sample": True,
                   "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999,
                   "transformers_version": "4.55.0.dev0"}


def test_original_files(tmp_path):
    d = write_synthetic_checkpoint(tmp_path / "o", SMALL, layout="original")
    assert sorted(os.listdir(d)) == ["config.json", "dtypes.json", "model.safetensors"]
    cfg = json.load(open(os.path.join(d, "config.json")))
    assert list(cfg) == ["num_hidden_layers", "num_experts", "experts_per_token", "vocab_size",
                         "hidden_size", "intermediate_size", "swiglu_limit", "head_dim",
                         "num_attention_heads", "num_key_value_heads", "sliding_window",
                         "initial_context_length", "rope_theta", "rope_scaling_factor",
                         "rope_ntk_alpha", "rope_ntk_beta"]
    assert type(cfg["rope_theta"]) is int and type(cfg["swiglu_limit"]) is float
    dtypes = json.load(open(os.path.join(d, "dtypes.json")))
    with safe_open(os.path.join(d, "model.safetensors"), framework="pt") as f:
        assert set(dtypes) == set(f.keys())
    assert dtypes["block.0.mlp.mlp1_weight.blocks"] == "FP4"
    assert dtypes["block.2.mlp.mlp2_weight.scales"] == "UE8"
    assert dtypes["block.1.attn.qkv.weight"] == dtypes["unembedding.weight"] == "BF16"


@pytest.mark.parametrize("layout,shards", [("hf", 1), ("hf", 3), ("original", 1), ("original", 2)])
def test_safetensors_package_reads_every_tensor(tmp_path, layout, shards):
    cfg = synthetic_config(SMALL)
    d = write_synthetic_checkpoint(tmp_path / "c", SMALL, layout=layout, shards=shards)
    expected = {st.name: st for st in stored_tensors(cfg, layout)}
    seen = set()
    for path in safetensors_files(d):
        with safe_open(path, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            for name in f.keys():
                t = f.get_tensor(name)
                st = expected[name]
                assert tuple(t.shape) == st.shape, name
                assert t.dtype == TORCH_DTYPE["BF16" if st.kind == "dense" else "U8"], name
                seen.add(name)
    assert seen == set(expected)


def test_header_is_laid_out_like_safetensors_writes_it(tmp_path):
    d = write_synthetic_checkpoint(tmp_path / "c", SMALL, layout="original")
    path = os.path.join(d, "model.safetensors")
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    assert (8 + n) % 8 == 0 and raw[8:8 + n].rstrip(b" ").endswith(b"}")
    hdr = json.loads(raw[8:8 + n])
    keys = list(hdr)
    assert keys[0] == "__metadata__"
    rank = {"BF16": 0, "U8": 1}
    assert keys[1:] == sorted(keys[1:], key=lambda k: (rank[hdr[k]["dtype"]], k))
    pos = 0
    for k in keys[1:]:
        b, e = hdr[k]["data_offsets"]
        assert b == pos
        pos = e
    assert 8 + n + pos == len(raw)


def test_hf_shards_and_index(tmp_path):
    cfg = synthetic_config(SMALL)
    d = write_synthetic_checkpoint(tmp_path / "c", SMALL, layout="hf", shards=3)
    names = [f"model-0000{i}-of-00002.safetensors" for i in range(3)]
    assert [os.path.basename(p) for p in safetensors_files(d)] == names
    text = open(os.path.join(d, "model.safetensors.index.json")).read()
    idx = json.loads(text)
    assert text == json.dumps(idx, indent=2, sort_keys=True) + "\n"
    stored = stored_tensors(cfg, "hf")
    total = sum(math.prod(st.shape) * (2 if st.kind == "dense" else 1) for st in stored)
    assert idx["metadata"] == {"total_size": total}
    assert set(idx["weight_map"]) == {st.name for st in stored}
    assert set(idx["weight_map"].values()) == set(names)
    for shard in names:
        with safe_open(os.path.join(d, shard), framework="pt") as f:
            assert {k for k, v in idx["weight_map"].items() if v == shard} == set(f.keys())
    # consecutive runs in model order: embed opens the first shard, lm_head closes the last
    assert idx["weight_map"]["model.embed_tokens.weight"] == names[0]
    assert idx["weight_map"]["lm_head.weight"] == names[2]


def test_original_shard_names(tmp_path):
    d = write_synthetic_checkpoint(tmp_path / "c", SMALL, layout="original", shards=3)
    assert [os.path.basename(p) for p in safetensors_files(d)] == [
        f"model--0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert os.path.isfile(os.path.join(d, "model.safetensors.index.json"))


def test_writer_rejects_bad_arguments(tmp_path):
    d = tmp_path / "full"
    d.mkdir()
    (d / "x").write_text("x")
    with pytest.raises(FileExistsError, match="is not empty"):
        write_synthetic_checkpoint(d, SMALL)
    with pytest.raises(ValueError, match="layout must be 'hf' or 'original'"):
        write_synthetic_checkpoint(tmp_path / "a", SMALL, layout="gguf")
    with pytest.raises(ValueError, match=r"shards must be an int in \[1, 60\]"):
        write_synthetic_checkpoint(tmp_path / "b", SMALL, shards=0)
    with pytest.raises(ValueError, match=r"shards must be an int in \[1, 48\]"):
        write_synthetic_checkpoint(tmp_path / "b", SMALL, layout="original", shards=49)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        write_synthetic_checkpoint(tmp_path / "c", SMALL, seed=-1)
    odd = dict(SMALL, layer_types=[FULL] * 3)
    with pytest.raises(UnsupportedConfigError, match="non-alternating layer_types"):
        write_synthetic_checkpoint(tmp_path / "e", odd, layout="original")
    assert not (tmp_path / "e").exists()
    assert load_checkpoint(write_synthetic_checkpoint(tmp_path / "f", odd)).config.layer_types == (
        FULL,) * 3


# ---------------------------------------------------------------------------------------------
# values


def test_same_seed_same_weights_in_both_layouts(tmp_path):
    hf = write_synthetic_checkpoint(tmp_path / "h", SMALL, layout="hf", seed=3, shards=2)
    orig = write_synthetic_checkpoint(tmp_path / "o", SMALL, layout="original", seed=3)

    def tensors(d):
        out = {}
        for p in safetensors_files(d):
            with safe_open(p, framework="pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})
        return out

    a, b = tensors(hf), tensors(orig)
    for i in range(3):
        p = f"model.layers.{i}.self_attn."
        for s in ("weight", "bias"):
            fused = torch.cat([a[p + x + "_proj." + s] for x in "qkv"])
            assert torch.equal(fused.view(torch.int16), b[f"block.{i}.attn.qkv.{s}"].view(
                torch.int16))
        assert torch.equal(a[f"model.layers.{i}.mlp.experts.gate_up_proj_blocks"],
                           b[f"block.{i}.mlp.mlp1_weight.blocks"])
        assert torch.equal(a[f"model.layers.{i}.mlp.experts.down_proj_scales"],
                           b[f"block.{i}.mlp.mlp2_weight.scales"])
        assert torch.equal(a[f"model.layers.{i}.self_attn.sinks"].view(torch.int16),
                           b[f"block.{i}.attn.sinks"].view(torch.int16))
    assert torch.equal(a["lm_head.weight"].view(torch.int16),
                       b["unembedding.weight"].view(torch.int16))


def test_seed_determines_the_weights(tmp_path):
    def blob(name, seed):
        d = write_synthetic_checkpoint(tmp_path / name, SMALL, layout="original", seed=seed)
        with open(os.path.join(d, "model.safetensors"), "rb") as f:
            return f.read()

    a, b, c = blob("a", 5), blob("b", 5), blob("c", 6)
    assert a == b
    assert len(a) == len(c) and a != c


def test_value_distributions(tmp_path):
    """Dense ~ N(0, 1/sqrt(fan_in)), norms ~ 1, small biases, MXFP4 decoding to std 1/sqrt(K).
    Tolerances: 5% on a std estimated from >= 16k samples (sampling error ~1%)."""
    cfg = synthetic_config(SMALL)
    ck = load_checkpoint(write_synthetic_checkpoint(tmp_path / "c", SMALL, layout="hf"))
    t = {k: read(r) for k, r in ck.tensors.items()}
    H, I = cfg.hidden_size, cfg.intermediate_size
    std = {k: bf16_to_f64(t[k]).std() for k in t if ck.tensors[k].dtype == "BF16"}
    assert std["embed"] == pytest.approx(1.0, rel=0.05)
    assert std["unembed"] == pytest.approx(3.0 / math.sqrt(H), rel=0.05)
    assert std["layers.0.q_w"] == pytest.approx(1 / math.sqrt(H), rel=0.05)
    assert std["layers.1.o_w"] == pytest.approx(1 / math.sqrt(8 * 64), rel=0.05)
    assert std["layers.2.b1"] == pytest.approx(0.05, rel=0.05)
    norms = np.concatenate([bf16_to_f64(t[f"layers.{i}.{n}"]) for i in range(3)
                            for n in ("attn_norm", "mlp_norm")])
    assert abs(norms.mean() - 1) < 0.02 and 0.07 < norms.std() < 0.13
    for i in range(3):
        for w, k, rows in (("w1", H, 2 * I), ("w2", I, H)):
            blocks = np.frombuffer(t[f"layers.{i}.{w}_blocks"], np.uint8).reshape(8, rows, k // 32,
                                                                                   16)
            scales = np.frombuffer(t[f"layers.{i}.{w}_scales"], np.uint8).reshape(8, rows, k // 32)
            assert mxfp4_decode(blocks, scales).std() == pytest.approx(1 / math.sqrt(k), rel=0.05)
            assert len(np.unique(scales)) == 2  # two adjacent exponents, mixed per block
            assert np.ptp(scales) == 1
            counts = np.bincount(np.concatenate([blocks & 15, blocks >> 4]).ravel(), minlength=16)
            assert counts.min() > 0.8 * counts.mean()  # uniform FP4 codes


def test_reference_loader_reads_the_original_layout(tmp_path):
    """OpenAI's gpt_oss.torch.weights.Checkpoint finds every tensor of the sharded original
    layout, its MXFP4 dequantisation equals ours exactly (both are exact in bf16), and the
    reference Transformer loads every parameter (it checks each shape on copy)."""
    from gpt_oss.torch.model import Transformer
    from gpt_oss.torch.weights import Checkpoint

    d = write_synthetic_checkpoint(tmp_path / "o", SMALL, layout="original", shards=2)
    ck = load_checkpoint(d)
    ref = Checkpoint(d, torch.device("cpu"))
    assert set(ref.tensor_name_to_file) == {st.name for st in stored_tensors(ck.config,
                                                                            "original")}

    def ours(name):
        r = ck.tensors[name]
        return np.frombuffer(read(r), np.uint8).reshape(r.shape)

    for i in range(3):
        for w, k in (("mlp1", "w1"), ("mlp2", "w2")):
            theirs = ref.get(f"block.{i}.mlp.{w}_weight").float().numpy().astype(np.float64)
            mine = mxfp4_decode(ours(f"layers.{i}.{k}_blocks"), ours(f"layers.{i}.{k}_scales"))
            np.testing.assert_array_equal(theirs, mine)
        qkv = ref.get(f"block.{i}.attn.qkv.weight").float().numpy()
        np.testing.assert_array_equal(
            qkv[:512], bf16_to_f64(read(ck.tensors[f"layers.{i}.q_w"])).reshape(512, 128))
        np.testing.assert_array_equal(
            qkv[640:], bf16_to_f64(read(ck.tensors[f"layers.{i}.v_w"])).reshape(128, 128))

    model = Transformer.from_checkpoint(d, device="cpu")
    np.testing.assert_array_equal(model.block[1].attn.sinks.detach().float().numpy(),
                                  bf16_to_f64(read(ck.tensors["layers.1.sinks"])))


def test_reference_model_gives_sane_logits(tmp_path):
    """The synthetic weights make a well-conditioned model: finite logits with a std of a few
    units (the writer targets 3) at every position."""
    from gpt_oss.torch.model import Transformer

    d = write_synthetic_checkpoint(tmp_path / "o", {"vocab_size": 4096}, layout="original")
    model = Transformer.from_checkpoint(d, device="cpu")
    with torch.inference_mode():
        logits = model(torch.arange(100, 124, dtype=torch.int32)).float()
    assert torch.isfinite(logits).all()
    s = logits.std(dim=-1)
    assert 2.0 < s.min() and s.max() < 4.5
