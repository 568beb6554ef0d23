"""End to end against the official reference model, gpt_oss.torch.model (PyPI gpt-oss 0.0.9).

Small random checkpoints are written in both layouts from one seed (identical weights). The reference
loads the original layout; our engine loads each layout. The reference runs in float32 (the oracle)
and in bfloat16 (its native precision): our logits must be no further from the f32 oracle than twice
the bf16 reference's own error, and greedy decoding through our KV cache (3x the window) must pick
the oracle's argmax at every step.
"""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ref_model = pytest.importorskip("gpt_oss.torch.model")

import gpt_oss_c
from gpt_oss_c.testing import write_synthetic_checkpoint

from helpers import DEVICES


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    base = tmp_path_factory.mktemp("oracle")
    return {
        layout: write_synthetic_checkpoint(base / layout, size="tiny", layout=layout, seed=1234)
        for layout in ("original", "hf")
    }


@pytest.fixture(scope="module")
def reference(checkpoints):
    with torch.inference_mode():
        ref16 = ref_model.Transformer.from_checkpoint(str(checkpoints["original"]), device="cpu")
        ref32 = copy.deepcopy(ref16).float()

    def run(model, ids):
        with torch.inference_mode():
            return model(torch.as_tensor(ids, dtype=torch.int32)).float().numpy().astype(np.float64)

    return lambda ids: run(ref32, ids), lambda ids: run(ref16, ids)


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("layout", ["original", "hf"])
@pytest.mark.parametrize("device", DEVICES)
def test_logits_match_reference(checkpoints, reference, layout, device):
    ref32, ref16 = reference
    model = gpt_oss_c.load(checkpoints[layout], device=device)
    window = model.config.sliding_window
    rng = np.random.default_rng(5)
    ids = rng.integers(0, model.config.vocab_size, size=5 * window + 3).tolist()  # crosses the window
    oracle = ref32(ids)
    ours = model.logits(ids).astype(np.float64)
    assert ours.shape == oracle.shape
    assert np.isfinite(ours).all()
    bf16_err = rel_err(ref16(ids), oracle)
    our_err = rel_err(ours, oracle)
    # Tolerance: the task's bound, "no worse than 2x the error of the bf16 reference".
    assert our_err <= 2 * bf16_err, f"our error {our_err:.3e} vs bf16 reference error {bf16_err:.3e}"
    if device == "cpu":
        # The CPU path is f32 end to end (f32 KV cache too): it must be far closer than bf16.
        assert our_err < 1e-4, our_err


@pytest.mark.parametrize("layout", ["original", "hf"])
@pytest.mark.parametrize("device", DEVICES)
def test_greedy_decode_matches_reference_argmax(checkpoints, reference, layout, device):
    ref32, ref16 = reference
    model = gpt_oss_c.load(checkpoints[layout], device=device)
    window = model.config.sliding_window
    rng = np.random.default_rng(11)
    prompt = rng.integers(0, model.config.vocab_size, size=window + 3).tolist()
    steps = 3 * window
    out = model.generate(prompt, max_new_tokens=steps, temperature=0, ignore_eos=True)
    assert len(out.token_ids) == steps and out.finish_reason == "length"
    # One oracle pass over prompt + our tokens gives the oracle's prediction at every step.
    oracle = ref32(prompt + out.token_ids[:-1])[len(prompt) - 1 :]
    picks = oracle.argmax(axis=1)
    mismatches = [i for i in range(steps) if picks[i] != out.token_ids[i]]
    if device == "cpu":
        assert not mismatches, f"steps {mismatches} differ from the reference argmax"
    else:
        # bf16 activations on the GPU: a different pick is allowed only at a near-tie, i.e. when the
        # oracle ranks our token within the bf16 reference's own logit error of its best one.
        tol = 2 * np.abs(ref16(prompt + out.token_ids[:-1])[len(prompt) - 1 :] - oracle).max()
        for i in mismatches:
            gap = oracle[i, picks[i]] - oracle[i, out.token_ids[i]]
            assert gap <= tol, f"step {i}: picked a token {gap:.4f} below the argmax (tolerance {tol:.4f})"
        assert len(mismatches) <= steps // 8
