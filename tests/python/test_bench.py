"""The benchmark (`gpt-oss-c bench`, python -m gpt_oss_c.bench): its decode floor and its JSON.

bytes_per_token is checked against the checkpoint's own tensor list (loader.stored_tensors: every
dense tensor once, the k of E experts' blocks, scales and biases, one embedding row, the KV cache
at that context); the command runs end to end on the CPU on a tiny synthetic model, with
--compare-hf when transformers is installed, and writes the JSON keys the performance issue names.
"""

import importlib.util
import json
import subprocess
import sys

import pytest

from gpt_oss_c.bench import bytes_per_token
from gpt_oss_c.loader import stored_tensors
from gpt_oss_c.testing.synthetic import synthetic_config

@pytest.mark.parametrize("size", ["20b", "120b", "tiny"])
@pytest.mark.parametrize("context", [1, 256, 8256])
def test_bytes_per_token_from_the_tensor_list(size, context):
    from gpt_oss_c.testing.synthetic import _nbytes  # a tensor's bytes as the checkpoint stores it

    cfg = synthetic_config(size)

    total = 0.0
    for st in stored_tensors(cfg, "hf"):
        n = _nbytes(st)
        if "embed_tokens" in st.name:
            n = n / st.shape[0]  # one row per token
        elif ".mlp.experts." in st.name:
            n = n * cfg.experts_per_token / cfg.num_experts
        total += n
    for t in cfg.layer_types:
        total += (min(context, cfg.sliding_window) if t == "sliding_attention" else context) * cfg.num_key_value_heads * 64 * 2 * 2
    # The formula leaves out the norm weights and attention sinks (~1e-4 of the total at 20b).
    assert bytes_per_token(cfg, context) == pytest.approx(total, rel=1e-3)


def test_bench_command_writes_the_named_keys(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "gpt_oss_c.bench", "--size", "tiny", "--device", "cpu", "--quick",
           "--scratch", str(tmp_path), "--out", str(out)]
    hf = importlib.util.find_spec("transformers") is not None
    if hf:
        cmd.append("--compare-hf")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for key in ("card", "date", "model", "bytes_per_token", "decode_bs1_tok_s", "prefill_512_tok_s", "batch8_tok_s",
                "batch32_tok_s", "batch64_tok_s"):
        assert key in res, key
    assert res["decode_bs1_tok_s"] > 0 and res["batch64_tok_s"] > 0 and res["decode_bs1_wall_tok_s"] > 0
    if hf:
        assert res["hf_decode_tok_s"] > 0 and res["hf_prefill_2048_tok_s"] > 0
        assert res["ratio_decode_vs_hf"] == pytest.approx(res["decode_bs1_tok_s"] / res["hf_decode_tok_s"])
