"""Bad input raises a clear Python exception (never a crash or a hang)."""

import math
import shutil

import pytest

import gpt_oss_c
from gpt_oss_c.testing import write_synthetic_checkpoint

from helpers import HAS_CUDA


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_synthetic_checkpoint(tmp_path_factory.mktemp("err") / "tiny", size="tiny", layout="hf", seed=2)


@pytest.fixture(scope="module")
def model(ckpt):
    return gpt_oss_c.load(ckpt, device="cpu", max_context=64)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        gpt_oss_c.load(tmp_path / "does-not-exist")


def test_truncated_checkpoint(ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    shard = sorted(bad.glob("*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=shard.name):
        gpt_oss_c.load(bad, device="cpu")


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is present")
def test_cuda_without_gpu(ckpt):
    with pytest.raises(RuntimeError, match="cuda"):
        gpt_oss_c.load(ckpt, device="cuda")


@pytest.mark.parametrize("kwargs, match", [
    (dict(device="tpu"), "device"),
    (dict(device="cpu", max_context=0), "max_context"),
    (dict(device="cpu", max_context=10**9), "max_context"),
    (dict(device="cpu", max_batch=0), "max_batch"),
])
def test_bad_load_arguments(ckpt, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gpt_oss_c.load(ckpt, **kwargs)


@pytest.mark.parametrize("prompt, match", [
    ("", "empty"),
    ([], "empty"),
    ([0, 201088], "out of range"),
    ([-1], "out of range"),
    (["a", 3], "int"),
])
def test_bad_prompts(model, prompt, match):
    with pytest.raises(ValueError, match=match):
        model.generate(prompt, max_new_tokens=2)


def test_prompt_longer_than_context(model):
    with pytest.raises(ValueError, match="max_context"):
        model.generate(list(range(65)), max_new_tokens=1)
    with pytest.raises(ValueError, match="max_context"):
        model.logits(list(range(65)))


def test_prompt_filling_the_context_stops_at_length(model):
    out = model.generate(list(range(64)), max_new_tokens=5, temperature=0, ignore_eos=True)
    assert out.finish_reason == "length" and len(out.token_ids) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=math.nan), "temperature"),
    (dict(temperature="hot"), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(min_p=-0.1), "min_p"),
    (dict(min_p=2), "min_p"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(seed=-3), "seed"),
    (dict(stop=[""]), "stop"),
    (dict(stop=[1.5]), "stop"),
    (dict(stop=[10**7]), "stop"),
])
def test_bad_sampling_values(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.generate("hi", **{"max_new_tokens": 2, **kwargs})


def test_engine_rejects_bad_steps_itself(model):
    """The C++ side validates again: a direct engine call with bad values raises, never crashes."""
    eng = model._engine
    with pytest.raises(ValueError, match="slot"):
        eng.step([(5, 0, [1], None)], 0, False)
    with pytest.raises(ValueError, match="out of range"):
        eng.step([(0, 0, [10**6], None)], 0, False)
    with pytest.raises(ValueError, match="no tokens"):
        eng.step([(0, 0, [], None)], 0, False)
    with pytest.raises(ValueError, match="top_p"):
        eng.step([(0, 0, [1], (1.0, 0, 0.0, 0.0, 0))], 0, True)
    with pytest.raises(ValueError, match="exceed"):
        eng.step([(0, 60, [1] * 10, None)], 0, False)
