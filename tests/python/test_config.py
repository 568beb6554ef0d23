"""ModelConfig: both config.json dialects, the real 20b/120b files, validation, conversions."""

import dataclasses
import json

import pytest

from gpt_oss_c.config import (FULL, GPT_OSS_20B, GPT_OSS_120B, SLIDING, ModelConfig,
                              alternating_layer_types)
from gpt_oss_c.errors import CheckpointError, UnsupportedConfigError

# The real files (GPT_OSS_FORMAT.md section 1). The HF texts are 1806 and 2089 bytes, the
# published 1.81 kB / 2.09 kB; the original 120b text is the published 377 bytes.
REAL_HF_20B = """{
  "architectures": [
    "GptOssForCausalLM"
  ],
  "attention_bias": true,
  "attention_dropout": 0.0,
  "eos_token_id": 200002,
  "experts_per_token": 4,
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2880,
  "initial_context_length": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 2880,
  "layer_types": [
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention"
  ],
  "max_position_embeddings": 131072,
  "model_type": "gpt_oss",
  "num_attention_heads": 64,
  "num_experts_per_tok": 4,
  "num_hidden_layers": 24,
  "num_key_value_heads": 8,
  "num_local_experts": 32,
  "output_router_logits": false,
  "pad_token_id": 199999,
  "quantization_config": {
    "modules_to_not_convert": [
      "model.layers.*.self_attn",
      "model.layers.*.mlp.router",
      "model.embed_tokens",
      "lm_head"
    ],
    "quant_method": "mxfp4"
  },
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "factor": 32.0,
    "original_max_position_embeddings": 4096,
    "rope_type": "yarn",
    "truncate": false
  },
  "rope_theta": 150000,
  "router_aux_loss_coef": 0.9,
  "sliding_window": 128,
  "swiglu_limit": 7.0,
  "tie_word_embeddings": false,
  "transformers_version": "4.55.0.dev0",
  "use_cache": true,
  "vocab_size": 201088
}
"""

REAL_HF_120B = """{
  "architectures": [
    "GptOssForCausalLM"
  ],
  "attention_bias": true,
  "attention_dropout": 0.0,
  "eos_token_id": 200002,
  "experts_per_token": 4,
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2880,
  "initial_context_length": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 2880,
  "layer_types": [
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "full_attention"
  ],
  "max_position_embeddings": 131072,
  "model_type": "gpt_oss",
  "num_attention_heads": 64,
  "num_experts_per_tok": 4,
  "num_hidden_layers": 36,
  "num_key_value_heads": 8,
  "num_local_experts": 128,
  "output_router_logits": false,
  "pad_token_id": 199999,
  "quantization_config": {
    "modules_to_not_convert": [
      "model.layers.*.self_attn",
      "model.layers.*.mlp.router",
      "model.embed_tokens",
      "lm_head"
    ],
    "quant_method": "mxfp4"
  },
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "factor": 32.0,
    "original_max_position_embeddings": 4096,
    "rope_type": "yarn",
    "truncate": false
  },
  "rope_theta": 150000,
  "router_aux_loss_coef": 0.9,
  "sliding_window": 128,
  "swiglu_limit": 7.0,
  "tie_word_embeddings": false,
  "transformers_version": "4.55.0.dev0",
  "use_cache": true,
  "vocab_size": 201088
}
"""

REAL_ORIGINAL_20B = '{"num_hidden_layers": 24, "num_experts": 32, "experts_per_token": 4, "vocab_size": 201088, "hidden_size": 2880, "intermediate_size": 2880, "swiglu_limit": 7.0, "head_dim": 64, "num_attention_heads": 64, "num_key_value_heads": 8, "sliding_window": 128, "initial_context_length": 4096, "rope_theta": 150000, "rope_scaling_factor": 32.0, "rope_ntk_alpha": 1, "rope_ntk_beta": 32}'

REAL_ORIGINAL_120B = '{"num_hidden_layers": 36, "num_experts": 128, "experts_per_token": 4, "vocab_size": 201088, "hidden_size": 2880, "intermediate_size": 2880, "swiglu_limit": 7.0, "head_dim": 64, "num_attention_heads": 64, "num_key_value_heads": 8, "sliding_window": 128, "initial_context_length": 4096, "rope_theta": 150000, "rope_scaling_factor": 32.0, "rope_ntk_alpha": 1, "rope_ntk_beta": 32}'


def test_real_fixture_sizes_match_the_published_files():
    assert len(REAL_HF_20B.encode()) == 1806
    assert len(REAL_HF_120B.encode()) == 2089
    assert len(REAL_ORIGINAL_120B.encode()) == 377


@pytest.mark.parametrize("text,expected,name", [
    (REAL_HF_20B, GPT_OSS_20B, "gpt-oss-20b"),
    (REAL_HF_120B, GPT_OSS_120B, "gpt-oss-120b"),
    (REAL_ORIGINAL_20B, GPT_OSS_20B, "gpt-oss-20b"),
    (REAL_ORIGINAL_120B, GPT_OSS_120B, "gpt-oss-120b"),
])
def test_real_configs_parse(text, expected, name):
    cfg = ModelConfig.from_dict(json.loads(text))
    assert cfg == expected
    assert cfg.name == name
    assert cfg.max_position == 131072
    assert cfg.rms_norm_eps == 1e-5
    assert cfg.layer_types[:3] == (SLIDING, FULL, SLIDING)


def test_real_configs_round_trip_byte_for_byte():
    assert GPT_OSS_20B.to_hf_json() == REAL_HF_20B
    assert GPT_OSS_120B.to_hf_json() == REAL_HF_120B
    assert GPT_OSS_20B.to_original_json() == REAL_ORIGINAL_20B
    assert GPT_OSS_120B.to_original_json() == REAL_ORIGINAL_120B


def test_original_json_types_are_the_real_ones():
    d = json.loads(GPT_OSS_20B.to_original_json())
    assert len(d) == 16
    for k in ("rope_theta", "rope_ntk_alpha", "rope_ntk_beta", "num_hidden_layers"):
        assert type(d[k]) is int, k
    for k in ("swiglu_limit", "rope_scaling_factor"):
        assert type(d[k]) is float, k


def test_yarn_range_is_unrounded():
    low, high = GPT_OSS_20B.yarn_low_high()
    assert low == pytest.approx(8.092779115512402, rel=1e-14)
    assert high == pytest.approx(17.39802450158856, rel=1e-14)


def test_core_dict_has_exactly_the_engine_keys():
    d = GPT_OSS_120B.to_core_dict()
    assert list(d) == ["n_layers", "n_experts", "top_k", "vocab", "hidden", "intermediate",
                       "head_dim", "n_q", "n_kv", "sliding_window", "initial_context", "rope_theta",
                       "rope_factor", "ntk_alpha", "ntk_beta", "swiglu_limit", "rms_eps", "sliding",
                       "max_position"]
    assert (d["n_layers"], d["n_experts"], d["top_k"], d["n_q"], d["n_kv"]) == (36, 128, 4, 64, 8)
    assert d["sliding"] == [1, 0] * 18
    assert d["max_position"] == 131072
    assert (d["rope_theta"], d["rope_factor"], d["ntk_alpha"], d["ntk_beta"]) == (
        150000.0, 32.0, 1.0, 32.0)
    assert d["rms_eps"] == 1e-5 and d["swiglu_limit"] == 7.0


def test_hf_without_layer_types_defaults_to_alternating():
    d = json.loads(REAL_HF_20B)
    del d["layer_types"]
    assert ModelConfig.from_dict(d).layer_types == alternating_layer_types(24)


def test_hf_custom_layer_types_and_eps_are_kept_but_not_original_expressible():
    d = json.loads(REAL_HF_20B)
    d["layer_types"] = [FULL] * 24
    d["rms_norm_eps"] = 1e-6
    cfg = ModelConfig.from_dict(d)
    assert cfg.to_core_dict()["sliding"] == [0] * 24
    assert cfg.rms_norm_eps == 1e-6 and cfg.name == "custom"
    with pytest.raises(UnsupportedConfigError, match="rms_norm_eps"):
        cfg.to_original_json()
    with pytest.raises(UnsupportedConfigError, match="layer_types"):
        cfg.replace(rms_norm_eps=1e-5).to_original_json()
    assert json.loads(cfg.to_hf_json())["layer_types"] == [FULL] * 24


def test_hf_rope_scaling_maps_to_ntk_fields():
    d = json.loads(REAL_HF_20B)
    d["rope_scaling"].update(beta_fast=16.0, beta_slow=2.0, factor=8.0,
                             original_max_position_embeddings=2048)
    d["initial_context_length"] = 2048
    cfg = ModelConfig.from_dict(d)
    assert (cfg.rope_ntk_beta, cfg.rope_ntk_alpha, cfg.rope_scaling_factor) == (16.0, 2.0, 8.0)
    assert cfg.initial_context_length == 2048 and cfg.max_position == 16384
    assert ModelConfig.from_dict(json.loads(cfg.to_hf_json())) == cfg
    assert ModelConfig.from_dict(json.loads(cfg.to_original_json())) == cfg


def test_config_is_frozen_and_replace_rederives_layer_types():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GPT_OSS_20B.hidden_size = 64
    small = GPT_OSS_20B.replace(num_hidden_layers=3)
    assert small.layer_types == (SLIDING, FULL, SLIDING) and small.name == "custom"


def test_unsupported_error_is_both_builtins():
    assert issubclass(UnsupportedConfigError, NotImplementedError)
    assert issubclass(UnsupportedConfigError, ValueError)
    assert issubclass(CheckpointError, ValueError)


def _orig(**changes):
    d = json.loads(REAL_ORIGINAL_20B)
    d.update(changes)
    return d


def _hf(**changes):
    d = json.loads(REAL_HF_20B)
    d.update(changes)
    return d


def _hf_without(*keys):
    d = json.loads(REAL_HF_20B)
    for k in keys:
        del d[k]
    return d


def _orig_without(key):
    d = json.loads(REAL_ORIGINAL_20B)
    del d[key]
    return d


def _hf_rope(**changes):
    d = json.loads(REAL_HF_20B)
    d["rope_scaling"].update(changes)
    return d


@pytest.mark.parametrize("d,needle", [
    (_orig(head_dim=128), "head_dim = 128"),
    (_hf(head_dim=128), "head_dim = 128"),
    (_orig(hidden_size=100), "hidden_size = 100 is not a multiple of 32"),
    (_orig(intermediate_size=2890), "intermediate_size = 2890 is not a multiple of 32"),
    (_orig(num_key_value_heads=7), "not a multiple of num_key_value_heads = 7"),
    (_orig(experts_per_token=0), "experts_per_token = 0"),
    (_orig(experts_per_token=33), "experts_per_token = 33 must be in [1, num_experts = 32]"),
    (_orig(num_hidden_layers=0), "num_hidden_layers = 0"),
    (_orig(vocab_size=-5), "vocab_size = -5"),
    (_orig(sliding_window=0), "sliding_window = 0"),
    (_orig(swiglu_limit=0.0), "swiglu_limit"),
    (_orig(rope_scaling_factor=0.5), "rope_scaling_factor = 0.5"),
    (_orig(rope_ntk_alpha=64), "YaRN correction range"),
    (_orig(num_hidden_layers=True), "num_hidden_layers must be an integer"),
    (_orig(hidden_size=2880.5), "hidden_size must be an integer"),
    (_orig(rope_theta="150000"), "rope_theta must be a number"),
    (_orig_without("rope_theta"), "missing required key(s) ['rope_theta']"),
    (_orig_without("num_experts") | {"vocab_size": 5}, "not a gpt-oss config"),
    (_hf_without("num_local_experts"), "missing required key(s) ['num_local_experts']"),
    (_hf_without("num_experts_per_tok", "experts_per_token"),
     "missing required key 'num_experts_per_tok'"),
    (_hf(model_type="llama"), "model_type is 'llama'"),
    (_orig(model_type="mixtral"), "model_type is 'mixtral'"),
    (_hf(num_experts_per_tok=2), "disagrees with experts_per_token"),
    (_hf(initial_context_length=8192), "disagrees with rope_scaling.original_max_position"),
    (_hf(layer_types=["sliding_attention"] * 23), "layer_types has 23 entries"),
    (_hf(layer_types=["sliding_attention"] * 23 + ["chunked_attention"]),
     "layer_types[23] = 'chunked_attention'"),
    (_hf(layer_types="sliding_attention"), "layer_types must be a list"),
    (_hf(rope_scaling=None), "rope_scaling must be an object"),
    (_hf_rope(rope_type="linear"), "rope_type is 'linear'"),
    (_hf_rope(truncate=True), "truncate = True"),
    (_hf(attention_bias=False), "attention_bias"),
    (_hf(tie_word_embeddings=True), "tie_word_embeddings"),
    (_hf(quantization_config={"quant_method": "fp8"}), "not MXFP4"),
    ([1, 2], "expected a JSON object"),
])
def test_invalid_configs_raise_unsupported_with_the_reason(d, needle):
    with pytest.raises(UnsupportedConfigError) as e:
        ModelConfig.from_dict(d, source="cfg.json")
    assert needle in str(e.value)


def test_hf_rope_scaling_missing_subkey():
    d = json.loads(REAL_HF_20B)
    del d["rope_scaling"]["beta_fast"]
    with pytest.raises(UnsupportedConfigError, match=r"rope_scaling.*\['beta_fast'\]"):
        ModelConfig.from_dict(d)


def test_hf_rope_scaling_without_truncate_is_the_reference_math():
    d = json.loads(REAL_HF_20B)
    del d["rope_scaling"]["truncate"]
    assert ModelConfig.from_dict(d) == GPT_OSS_20B


def test_from_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ModelConfig.from_file(tmp_path / "nope.json")
    bad = tmp_path / "config.json"
    bad.write_text('{"num_hidden_layers": 24,')
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON") as e:
        ModelConfig.from_file(bad)
    assert e.value.file == str(bad)
    bad.write_text(REAL_HF_20B)
    assert ModelConfig.from_file(bad) == GPT_OSS_20B
