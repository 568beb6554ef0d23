"""Checkpoint loader: both layouts, shards, original/ subdirs, and every kind of bad input."""

import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

from gpt_oss_c.config import GPT_OSS_20B, GPT_OSS_120B
from gpt_oss_c.errors import CheckpointError, UnsupportedConfigError
from gpt_oss_c.loader import (Checkpoint, TensorRef, canonical_tensors, core_tensor_list,
                              load_checkpoint, stored_tensors)
from gpt_oss_c.testing import synthetic_config, write_synthetic_checkpoint

# Tiny model with a small vocabulary: about 3 MB, written in ~0.1 s.
SMALL = {"vocab_size": 1000, "num_hidden_layers": 3}


def read_ref(ref: TensorRef) -> bytes:
    with open(ref.file, "rb") as f:
        f.seek(ref.offset)
        return f.read(ref.nbytes)


def write_header(path, hdr, data):
    """Writes a safetensors file from a header dict and the data bytes (offsets are relative to
    the data, so any header length works)."""
    h = json.dumps(hdr).encode()
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + data)


def rewrite_safetensors(path, edit):
    """Rebuilds a safetensors file after `edit(entries)` mutated {name: [dtype, shape, bytes]}."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    hdr = json.loads(raw[8:8 + n])
    meta = hdr.pop("__metadata__", None)
    data = raw[8 + n:]
    entries = {k: [v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]]
               for k, v in hdr.items()}
    edit(entries)
    out, blobs, pos = ({"__metadata__": meta} if meta else {}), [], 0
    for k, (dtype, shape, blob) in entries.items():
        out[k] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + len(blob)]}
        blobs.append(blob)
        pos += len(blob)
    write_header(path, out, b"".join(blobs))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same SMALL weights in both layouts, single file."""
    root = tmp_path_factory.mktemp("pair")
    hf = write_synthetic_checkpoint(root / "hf", SMALL, layout="hf", seed=7)
    orig = write_synthetic_checkpoint(root / "orig", SMALL, layout="original", seed=7)
    return load_checkpoint(hf), load_checkpoint(orig)


@pytest.fixture
def hf_dir(tmp_path):
    return write_synthetic_checkpoint(tmp_path / "ckpt", SMALL, layout="hf")


# ---------------------------------------------------------------------------------------------
# happy paths


def test_both_layouts_load_to_identical_weights(pair):
    hf, orig = pair
    assert (hf.layout, orig.layout) == ("hf", "original")
    assert hf.config == orig.config == synthetic_config(SMALL)
    assert list(hf.tensors) == list(orig.tensors) == list(canonical_tensors(hf.config))
    for name, a in hf.tensors.items():
        b = orig.tensors[name]
        assert (a.name, a.dtype, a.shape, a.nbytes) == (b.name, b.dtype, b.shape, b.nbytes)
        assert read_ref(a) == read_ref(b), name


def test_canonical_shapes_and_dtypes(pair):
    hf, _ = pair
    c = hf.config
    t = hf.tensors
    assert t["embed"].shape == t["unembed"].shape == (1000, 128)
    assert t["layers.2.q_w"].shape == (8 * 64, 128) and t["layers.2.k_w"].shape == (2 * 64, 128)
    assert t["layers.0.o_w"].shape == (128, 512)
    assert t["layers.1.w1_blocks"].shape == (c.num_experts, 2 * 160, 128 // 32, 16)
    assert t["layers.1.w2_scales"].shape == (c.num_experts, 128, 160 // 32)
    assert t["layers.1.w1_blocks"].dtype == "U8" and t["layers.1.b1"].dtype == "BF16"
    assert len(t) == 3 + 19 * 3
    for r in t.values():
        assert os.path.isabs(r.file)
        assert r.nbytes == math.prod(r.shape) * (1 if r.dtype == "U8" else 2)


def test_original_qkv_refs_are_contiguous_row_slices(pair):
    _, orig = pair
    for i in range(orig.config.num_hidden_layers):
        for s in ("w", "b"):
            q, k, v = (orig.tensors[f"layers.{i}.{x}_{s}"] for x in "qkv")
            assert q.file == k.file == v.file
            assert q.offset + q.nbytes == k.offset and k.offset + k.nbytes == v.offset


def test_offsets_agree_with_the_safetensors_package(pair):
    """Our absolute offsets point at exactly the bytes safetensors returns for each name (for the
    fused qkv: the q, k and v refs together)."""
    for ckpt in pair:
        with safe_open(ckpt.tensors["embed"].file, framework="pt") as f:
            for st in stored_tensors(ckpt.config, ckpt.layout):
                expect = f.get_tensor(st.name).contiguous().view(torch.uint8).numpy().tobytes()
                got = b"".join(read_ref(ckpt.tensors[c]) for c, _ in st.parts)
                assert got == expect, st.name


def test_sharded_hf_loads_through_its_index(tmp_path, pair):
    d = write_synthetic_checkpoint(tmp_path / "s", SMALL, layout="hf", seed=7, shards=3)
    assert os.path.isfile(os.path.join(d, "model.safetensors.index.json"))
    ck = load_checkpoint(d)
    assert len({r.file for r in ck.tensors.values()}) == 3
    for name, r in ck.tensors.items():
        assert read_ref(r) == read_ref(pair[0].tensors[name]), name


def test_sharded_original_with_double_dash_names(tmp_path, pair):
    d = write_synthetic_checkpoint(tmp_path / "s", SMALL, layout="original", seed=7, shards=2)
    ck = load_checkpoint(d)
    assert {os.path.basename(r.file) for r in ck.tensors.values()} == {
        "model--00001-of-00002.safetensors", "model--00002-of-00002.safetensors"}
    for name, r in ck.tensors.items():
        assert read_ref(r) == read_ref(pair[1].tensors[name]), name


def test_sharded_without_index_reads_every_file(tmp_path):
    d = write_synthetic_checkpoint(tmp_path / "s", SMALL, layout="original", shards=3)
    os.remove(os.path.join(d, "model.safetensors.index.json"))  # the reference ignores it too
    assert len({r.file for r in load_checkpoint(d).tensors.values()}) == 3


def test_original_subdir_is_accepted(tmp_path):
    write_synthetic_checkpoint(tmp_path / "repo" / "original", SMALL, layout="original")
    ck = load_checkpoint(tmp_path / "repo")
    assert ck.layout == "original" and ck.path == str(tmp_path / "repo" / "original")


def test_root_layout_is_preferred_over_original_subdir(tmp_path):
    repo = write_synthetic_checkpoint(tmp_path / "repo", SMALL, layout="hf")
    write_synthetic_checkpoint(tmp_path / "repo" / "original", SMALL, layout="original")
    assert load_checkpoint(repo).layout == "hf"
    assert load_checkpoint(os.path.join(repo, "original")).layout == "original"


def test_hf_config_with_original_tensors_is_fine(tmp_path):
    """The layout comes from the tensor names; either config dialect describes the same model."""
    d = write_synthetic_checkpoint(tmp_path / "o", SMALL, layout="original")
    cfg = synthetic_config(SMALL)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(cfg.to_hf_json())
    ck = load_checkpoint(d)
    assert ck.layout == "original" and ck.config == cfg


def test_f16_and_f32_dense_tensors_are_accepted(hf_dir):
    st = os.path.join(hf_dir, "model.safetensors")

    def edit(e):
        e["model.norm.weight"][0] = "F16"  # same byte count, just relabelled
        e["model.layers.0.self_attn.sinks"] = ["F32", [8], np.ones(8, np.float32).tobytes()]

    rewrite_safetensors(st, edit)
    ck = load_checkpoint(hf_dir)
    assert ck.tensors["norm"].dtype == "F16"
    sinks = ck.tensors["layers.0.sinks"]
    assert (sinks.dtype, sinks.nbytes) == ("F32", 32)
    assert np.frombuffer(read_ref(sinks), np.float32).tolist() == [1.0] * 8


def test_core_tensor_list(pair):
    hf, _ = pair
    lst = core_tensor_list(hf)
    assert len(lst) == len(hf.tensors)
    name, file, offset, nbytes, dtype, shape = lst[0]
    r = hf.tensors["embed"]
    assert (name, file, offset, nbytes, dtype, shape) == (
        "embed", r.file, r.offset, r.nbytes, "BF16", [1000, 128])
    assert [x[0] for x in lst][-2:] == ["norm", "unembed"]


def test_checkpoint_is_a_plain_record(pair):
    assert isinstance(pair[0], Checkpoint) and isinstance(pair[0].tensors["norm"], TensorRef)


@pytest.mark.parametrize("cfg,n_orig,n_hf,nbytes", [
    (GPT_OSS_20B, 363, 459, 13_761_264_768),
    (GPT_OSS_120B, 543, 687, 65_248_815_744),
])
def test_real_tensor_sets(cfg, n_orig, n_hf, nbytes):
    """Tensor counts and total bytes match the published checkpoints (GPT_OSS_FORMAT.md 2.1/2.2)."""
    orig, hf = stored_tensors(cfg, "original"), stored_tensors(cfg, "hf")
    assert (len(orig), len(hf)) == (n_orig, n_hf)
    for tensors in (orig, hf):
        total = sum(math.prod(st.shape) * (1 if st.kind != "dense" else 2) for st in tensors)
        assert total == nbytes


# ---------------------------------------------------------------------------------------------
# bad input


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint directory .*nope does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_file_instead_of_directory(hf_dir):
    with pytest.raises(NotADirectoryError, match="pass the checkpoint directory"):
        load_checkpoint(os.path.join(hf_dir, "model.safetensors"))


def test_missing_config_json(hf_dir):
    os.remove(os.path.join(hf_dir, "config.json"))
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        load_checkpoint(hf_dir)


def test_bad_config_json(hf_dir):
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        load_checkpoint(hf_dir)


def test_no_weight_files(hf_dir):
    os.remove(os.path.join(hf_dir, "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"has a config.json but no \*\.safetensors"):
        load_checkpoint(hf_dir)


def test_truncated_data(hf_dir):
    st = os.path.join(hf_dir, "model.safetensors")
    size = os.path.getsize(st)
    with open(st, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(hf_dir)
    msg = str(e.value)
    assert st in msg and "truncated" in msg and f"only {size - 100} bytes" in msg
    assert e.value.tensor is not None and e.value.tensor in msg


def test_truncated_header(hf_dir):
    st = os.path.join(hf_dir, "model.safetensors")
    with open(st, "r+b") as f:
        f.truncate(200)
    with pytest.raises(CheckpointError, match=r"truncated: the header length field says \d+ bytes "
                                              r"but only 192 bytes follow"):
        load_checkpoint(hf_dir)


def test_file_too_short(hf_dir):
    st = os.path.join(hf_dir, "model.safetensors")
    with open(st, "wb") as f:
        f.write(b"\x01\x02\x03")
    with pytest.raises(CheckpointError, match="file is 3 bytes, too short"):
        load_checkpoint(hf_dir)


def test_garbage_bytes(hf_dir):
    st = os.path.join(hf_dir, "model.safetensors")
    with open(st, "wb") as f:
        f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match=r"model\.safetensors: the header length field says "
                                              r"\d+ bytes, which is not plausible"):
        load_checkpoint(hf_dir)


def test_absurd_header_length(hf_dir):
    st = os.path.join(hf_dir, "model.safetensors")
    with open(st, "r+b") as f:
        f.write((1 << 60).to_bytes(8, "little"))
    with pytest.raises(CheckpointError, match=f"says {1 << 60} bytes, which is not plausible"):
        load_checkpoint(hf_dir)


def test_header_not_json(hf_dir):
    st = os.path.join(hf_dir, "model.safetensors")
    with open(st, "r+b") as f:
        f.seek(8)
        f.write(b"\xff\xfe garbage")
    with pytest.raises(CheckpointError, match="header is not valid JSON"):
        load_checkpoint(hf_dir)


def test_header_not_an_object(hf_dir):
    st = os.path.join(hf_dir, "model.safetensors")
    with open(st, "wb") as f:
        f.write((8).to_bytes(8, "little") + b"[1,2]   ")
    with pytest.raises(CheckpointError, match="header is a JSON list"):
        load_checkpoint(hf_dir)


@pytest.mark.parametrize("mutate,needle", [
    (lambda e: e.update(dtype="Q4"), "unknown dtype 'Q4'"),
    (lambda e: e.update(shape=[8, -1]), "is not a list of non-negative integers"),
    (lambda e: e.pop("shape"), "lacks dtype/shape/data_offsets"),
    (lambda e: e.update(data_offsets=[10, 2]), "is not [begin, end]"),
    (lambda e: e.update(data_offsets=[e["data_offsets"][0], e["data_offsets"][1] + 2]),
     "needs 16"),
    (lambda e: e.update(shape=[4]), "span 16 bytes but dtype BF16 with shape (4,) needs 8"),
])
def test_bad_header_entries(hf_dir, mutate, needle):
    st = os.path.join(hf_dir, "model.safetensors")
    with open(st, "rb") as f:
        raw = bytearray(f.read())
    n = int.from_bytes(raw[:8], "little")
    hdr = json.loads(raw[8:8 + n])
    mutate(hdr["model.layers.0.self_attn.sinks"])
    write_header(st, hdr, raw[8 + n:])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(hf_dir)
    assert needle in str(e.value) and "model.layers.0.self_attn.sinks" in str(e.value)


def test_overlapping_tensors(hf_dir):
    st = os.path.join(hf_dir, "model.safetensors")
    with open(st, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    hdr = json.loads(raw[8:8 + n])
    a, b = "model.layers.0.self_attn.sinks", "model.layers.1.self_attn.sinks"
    hdr[b]["data_offsets"] = hdr[a]["data_offsets"]
    write_header(st, hdr, raw[8 + n:])
    with pytest.raises(CheckpointError, match="overlaps tensor model.layers.[01].self_attn.sinks"):
        load_checkpoint(hf_dir)


def test_missing_tensor(hf_dir):
    rewrite_safetensors(os.path.join(hf_dir, "model.safetensors"),
                        lambda e: e.pop("model.layers.2.mlp.experts.down_proj_scales"))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(hf_dir)
    assert "1 tensor(s) the config needs are missing from model.safetensors: " \
           "model.layers.2.mlp.experts.down_proj_scales" in str(e.value)
    assert e.value.tensor == "model.layers.2.mlp.experts.down_proj_scales"


def test_wrong_shape(hf_dir):
    def edit(e):
        e["model.layers.1.self_attn.sinks"][1] = [4, 2]
    rewrite_safetensors(os.path.join(hf_dir, "model.safetensors"), edit)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(hf_dir)
    msg = str(e.value)
    assert "model.safetensors: tensor model.layers.1.self_attn.sinks has shape (4, 2), " \
           "expected (8,)" in msg and "config.json" in msg


def test_wrong_shape_from_a_config_mismatch(tmp_path):
    d = write_synthetic_checkpoint(tmp_path / "c", SMALL, layout="original")
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["num_experts"] = 16
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(CheckpointError, match=r"tensor block.0.mlp.gate.weight has shape "
                                              r"\(8, 128\), expected \(16, 128\)"):
        load_checkpoint(d)


def test_mxfp4_blocks_stored_as_bf16(hf_dir):
    name = "model.layers.0.mlp.experts.gate_up_proj_blocks"

    def edit(e):
        e[name][0] = "BF16"
        e[name][1] = e[name][1][:-1] + [8]  # same bytes, so only the dtype is wrong
    rewrite_safetensors(os.path.join(hf_dir, "model.safetensors"), edit)
    with pytest.raises(CheckpointError, match=f"tensor {name} has dtype BF16, expected U8 for "
                                              f"MXFP4 blocks"):
        load_checkpoint(hf_dir)


def test_dense_tensor_stored_as_u8(hf_dir):
    name = "model.layers.0.self_attn.sinks"

    def edit(e):
        e[name][0], e[name][1] = "U8", [16]
    rewrite_safetensors(os.path.join(hf_dir, "model.safetensors"), edit)
    with pytest.raises(CheckpointError, match=f"tensor {name} has dtype U8, expected BF16 or F16 "
                                              f"or F32 for a dense tensor"):
        load_checkpoint(hf_dir)


@pytest.mark.parametrize("key,value,needle", [
    ("head_dim", 128, "head_dim = 128"),
    ("hidden_size", 100, "hidden_size = 100 is not a multiple of 32"),
    ("model_type", "llama", "model_type is 'llama'"),
])
def test_unsupported_config(hf_dir, key, value, needle):
    p = os.path.join(hf_dir, "config.json")
    cfg = json.load(open(p))
    cfg[key] = value
    json.dump(cfg, open(p, "w"))
    with pytest.raises(UnsupportedConfigError, match=needle):
        load_checkpoint(hf_dir)


def test_index_naming_a_missing_shard(tmp_path):
    d = write_synthetic_checkpoint(tmp_path / "s", SMALL, layout="hf", shards=3)
    os.remove(os.path.join(d, "model-00001-of-00002.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json maps tensor \S+ "
                                              r"\(and others\) to shard 'model-00001-of-00002\."
                                              r"safetensors', which is not a file in"):
        load_checkpoint(d)


def test_index_disagreeing_with_the_shards(tmp_path):
    d = write_synthetic_checkpoint(tmp_path / "s", SMALL, layout="hf", shards=2)
    p = os.path.join(d, "model.safetensors.index.json")
    idx = json.load(open(p))
    idx["weight_map"]["lm_head.weight"] = "model-00000-of-00001.safetensors"
    json.dump(idx, open(p, "w"))
    with pytest.raises(CheckpointError, match="says tensor lm_head.weight is in .*00000-of-00001"
                                              ".* but it is in .*00001-of-00001"):
        load_checkpoint(d)


def test_index_not_json(tmp_path):
    d = write_synthetic_checkpoint(tmp_path / "s", SMALL, layout="hf", shards=2)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        f.write("{")
    with pytest.raises(CheckpointError, match="index.json is not valid JSON"):
        load_checkpoint(d)


def test_index_without_weight_map(tmp_path):
    d = write_synthetic_checkpoint(tmp_path / "s", SMALL, layout="hf", shards=2)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        f.write('{"metadata": {}}')
    with pytest.raises(CheckpointError, match="has no weight_map"):
        load_checkpoint(d)


def test_dequantized_checkpoint_is_rejected(hf_dir):
    def edit(e):
        for i in range(3):
            for w in ("gate_up_proj", "down_proj"):
                e.pop(f"model.layers.{i}.mlp.experts.{w}_blocks")
                e.pop(f"model.layers.{i}.mlp.experts.{w}_scales")
        e["model.layers.0.mlp.experts.gate_up_proj"] = ["BF16", [8, 128, 320],
                                                        bytes(8 * 128 * 320 * 2)]
    rewrite_safetensors(os.path.join(hf_dir, "model.safetensors"), edit)
    with pytest.raises(UnsupportedConfigError, match="dequantised checkpoint .* requires the "
                                                     "MXFP4 expert weights"):
        load_checkpoint(hf_dir)


def test_tensors_beyond_the_config(hf_dir):
    p = os.path.join(hf_dir, "config.json")
    cfg = json.load(open(p))
    cfg["num_hidden_layers"] = 2
    cfg["layer_types"] = cfg["layer_types"][:2]
    json.dump(cfg, open(p, "w"))
    with pytest.raises(CheckpointError, match=r"19 tensor\(s\) that a 2-layer, 8-expert hf "
                                              r"checkpoint does not have: model.layers.2.*does "
                                              r"config.json match the weights"):
        load_checkpoint(hf_dir)


def test_duplicate_tensor_across_files(tmp_path):
    d = write_synthetic_checkpoint(tmp_path / "s", SMALL, layout="original", shards=2)
    os.remove(os.path.join(d, "model.safetensors.index.json"))
    a, b = (os.path.join(d, f"model--0000{i}-of-00002.safetensors") for i in (1, 2))
    rewrite_safetensors(b, lambda e: e.update({"embedding.weight": ["U8", [1], b"\0"]}))
    with pytest.raises(CheckpointError, match="tensor embedding.weight appears in both"):
        load_checkpoint(d)


def test_mixed_layout_names(hf_dir):
    rewrite_safetensors(os.path.join(hf_dir, "model.safetensors"),
                        lambda e: e.update({"block.0.attn.sinks": ["BF16", [8], bytes(16)]}))
    with pytest.raises(CheckpointError, match="mixes Hugging Face tensor names"):
        load_checkpoint(hf_dir)


def test_no_gpt_oss_tensors(hf_dir):
    st = os.path.join(hf_dir, "model.safetensors")
    rewrite_safetensors(st, lambda e: [e.clear(), e.update({"foo": ["U8", [1], b"\0"]})])
    with pytest.raises(CheckpointError, match=r"holds no gpt-oss tensors .*\['foo'\]"):
        load_checkpoint(hf_dir)


def test_the_error_names_the_shard(tmp_path):
    d = write_synthetic_checkpoint(tmp_path / "s", SMALL, layout="hf", shards=3)
    shard = os.path.join(d, "model-00002-of-00002.safetensors")
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 1)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(d)
    assert e.value.file == shard and shard in str(e.value)
