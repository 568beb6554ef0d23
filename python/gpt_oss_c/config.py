"""The gpt-oss model configuration, parsed from either checkpoint layout's config.json.

Two config.json dialects exist (GPT_OSS_FORMAT.md section 1):
  * original (`original/config.json`, read by OpenAI's reference): a flat object with 16 keys,
    e.g. `num_experts`, `experts_per_token`, `rope_scaling_factor`, `rope_ntk_alpha/beta`;
  * Hugging Face (repo root): `model_type: "gpt_oss"`, `num_local_experts`,
    `num_experts_per_tok`, `rope_scaling{factor, beta_fast, beta_slow,
    original_max_position_embeddings}`, `layer_types`, `rms_norm_eps`, ...
A dict with `num_local_experts` is read as HF, one with `num_experts` as original. Both parse to
the same frozen `ModelConfig`, which validates what the engine supports and can write both files
back byte for byte as the real checkpoints have them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

from .errors import CheckpointError, UnsupportedConfigError

SLIDING = "sliding_attention"
FULL = "full_attention"

# The original config.json's keys, in the order the real files list them.
ORIGINAL_KEYS = (
    "num_hidden_layers", "num_experts", "experts_per_token", "vocab_size", "hidden_size",
    "intermediate_size", "swiglu_limit", "head_dim", "num_attention_heads", "num_key_value_heads",
    "sliding_window", "initial_context_length", "rope_theta", "rope_scaling_factor",
    "rope_ntk_alpha", "rope_ntk_beta",
)

# HF config keys that have no counterpart in ModelConfig but that the real file carries.
_HF_EOS_TOKEN_ID = 200002  # <|return|>
_HF_PAD_TOKEN_ID = 199999  # <|endoftext|>
_HF_TRANSFORMERS_VERSION = "4.55.0.dev0"

_INT_FIELDS = (
    "num_hidden_layers", "num_experts", "experts_per_token", "vocab_size", "hidden_size",
    "intermediate_size", "head_dim", "num_attention_heads", "num_key_value_heads",
    "sliding_window", "initial_context_length",
)
_FLOAT_FIELDS = (
    "rope_theta", "rope_scaling_factor", "rope_ntk_alpha", "rope_ntk_beta", "swiglu_limit",
    "rms_norm_eps",
)


def alternating_layer_types(n_layers: int) -> tuple[str, ...]:
    """The gpt-oss pattern: even layers (0, 2, ...) use the sliding window, odd layers are full."""
    return tuple(SLIDING if i % 2 == 0 else FULL for i in range(n_layers))


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a gpt-oss model. Constructing one validates it.

    Every field but the last two appears in the original config.json under the same name. The
    original format hard-codes `rms_norm_eps` = 1e-5 and the alternating `layer_types`; HF files
    state them. `layer_types=None` means alternating, starting with a sliding layer 0.
    Raises UnsupportedConfigError for anything the engine cannot run.
    """

    num_hidden_layers: int
    num_experts: int
    experts_per_token: int
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    head_dim: int
    num_attention_heads: int
    num_key_value_heads: int
    sliding_window: int
    initial_context_length: int
    rope_theta: float
    rope_scaling_factor: float
    rope_ntk_alpha: float
    rope_ntk_beta: float
    swiglu_limit: float
    rms_norm_eps: float = 1e-5
    layer_types: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for f in _INT_FIELDS:
            object.__setattr__(self, f, _as_int(getattr(self, f), f, "ModelConfig"))
        for f in _FLOAT_FIELDS:
            object.__setattr__(self, f, _as_float(getattr(self, f), f, "ModelConfig"))
        lt = self.layer_types
        if lt is None:
            lt = alternating_layer_types(self.num_hidden_layers)
        elif isinstance(lt, (str, bytes)) or not hasattr(lt, "__iter__"):
            raise UnsupportedConfigError(f"layer_types must be a list of strings, got {lt!r}")
        object.__setattr__(self, "layer_types", tuple(lt))
        self._validate()

    # ----------------------------------------------------------------------------------------
    # validation

    def _validate(self) -> None:
        def bad(msg: str) -> None:
            raise UnsupportedConfigError(f"unsupported gpt-oss config: {msg}")

        for f in _INT_FIELDS:
            if getattr(self, f) < 1:
                bad(f"{f} = {getattr(self, f)} must be >= 1")
        if self.head_dim != 64:
            bad(f"head_dim = {self.head_dim}; the attention and RoPE kernels support only 64")
        for f in ("hidden_size", "intermediate_size"):
            if getattr(self, f) % 32:
                bad(f"{f} = {getattr(self, f)} is not a multiple of 32 (the MXFP4 block size, "
                    f"along which the expert weights are quantised)")
        if self.num_attention_heads % self.num_key_value_heads:
            bad(f"num_attention_heads = {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads = {self.num_key_value_heads} (grouped-query attention)")
        if not 1 <= self.experts_per_token <= self.num_experts:
            bad(f"experts_per_token = {self.experts_per_token} must be in [1, num_experts = "
                f"{self.num_experts}]")
        for f in _FLOAT_FIELDS:
            v = getattr(self, f)
            if not (math.isfinite(v) and v > 0):
                bad(f"{f} = {v} must be finite and > 0")
        if self.rope_theta <= 1:
            bad(f"rope_theta = {self.rope_theta} must be > 1")
        if self.rope_scaling_factor < 1:
            bad(f"rope_scaling_factor = {self.rope_scaling_factor} must be >= 1 (YaRN extends "
                f"the context, it never shrinks it)")
        if self.rope_scaling_factor > 1:
            # The reference asserts this ordering of the YaRN correction range (in rotations).
            low, high = self.yarn_low_high()
            if not 0 < low < high < self.head_dim / 2 - 1:
                bad(f"YaRN correction range low = {low:.4f}, high = {high:.4f} (from "
                    f"initial_context_length = {self.initial_context_length}, rope_theta = "
                    f"{self.rope_theta}, rope_ntk_alpha = {self.rope_ntk_alpha}, rope_ntk_beta = "
                    f"{self.rope_ntk_beta}) must satisfy 0 < low < high < {self.head_dim // 2 - 1}")
        if self.max_position > 2**31 - 1:
            bad(f"initial_context_length * rope_scaling_factor = {self.max_position} does not "
                f"fit in int32")
        if len(self.layer_types) != self.num_hidden_layers:
            bad(f"layer_types has {len(self.layer_types)} entries but num_hidden_layers = "
                f"{self.num_hidden_layers}")
        for i, t in enumerate(self.layer_types):
            if t not in (SLIDING, FULL):
                bad(f"layer_types[{i}] = {t!r}; expected {SLIDING!r} or {FULL!r}")

    # ----------------------------------------------------------------------------------------
    # derived values

    @property
    def max_position(self) -> int:
        """The longest context the RoPE tables cover:
        initial_context_length * rope_scaling_factor."""
        return int(self.initial_context_length * self.rope_scaling_factor)

    @property
    def name(self) -> str:
        """"gpt-oss-20b" or "gpt-oss-120b" when every field matches that model, else "custom"."""
        if self == GPT_OSS_20B:
            return "gpt-oss-20b"
        if self == GPT_OSS_120B:
            return "gpt-oss-120b"
        return "custom"

    def yarn_low_high(self) -> tuple[float, float]:
        """YaRN's correction range in dimension pairs, unrounded (HF `truncate: false`)."""
        d_half = self.head_dim / 2
        base = math.log(self.rope_theta)
        two_pi_ctx = self.initial_context_length / (2 * math.pi)
        low = d_half * math.log(two_pi_ctx / self.rope_ntk_beta) / base
        high = d_half * math.log(two_pi_ctx / self.rope_ntk_alpha) / base
        return low, high

    def is_alternating(self) -> bool:
        return self.layer_types == alternating_layer_types(self.num_hidden_layers)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed. Changing num_hidden_layers without giving layer_types
        re-derives an alternating pattern when the current one is alternating."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if ("num_hidden_layers" in changes and "layer_types" not in changes
                and self.is_alternating()):
            d["layer_types"] = None
        d.update(changes)
        return ModelConfig(**d)

    # ----------------------------------------------------------------------------------------
    # conversions

    def to_core_dict(self) -> dict:
        """The dict the C++ engine's ModelConfig is built from (csrc/engine.h): exactly these
        keys."""
        return {
            "n_layers": self.num_hidden_layers,
            "n_experts": self.num_experts,
            "top_k": self.experts_per_token,
            "vocab": self.vocab_size,
            "hidden": self.hidden_size,
            "intermediate": self.intermediate_size,
            "head_dim": self.head_dim,
            "n_q": self.num_attention_heads,
            "n_kv": self.num_key_value_heads,
            "sliding_window": self.sliding_window,
            "initial_context": self.initial_context_length,
            "rope_theta": self.rope_theta,
            "rope_factor": self.rope_scaling_factor,
            "ntk_alpha": self.rope_ntk_alpha,
            "ntk_beta": self.rope_ntk_beta,
            "swiglu_limit": self.swiglu_limit,
            "rms_eps": self.rms_norm_eps,
            "sliding": [1 if t == SLIDING else 0 for t in self.layer_types],
            "max_position": self.max_position,
        }

    def to_original_json(self) -> str:
        """The text of `original/config.json` as OpenAI ships it: the 16 keys in their order, one
        line, no trailing newline; rope_theta and the ntk values are integers when integral.

        Raises UnsupportedConfigError when the config cannot be expressed there (the original format
        hard-codes rms_norm_eps = 1e-5 and alternating layers)."""
        if self.rms_norm_eps != 1e-5:
            raise UnsupportedConfigError(
                f"rms_norm_eps = {self.rms_norm_eps} cannot be written to an original-layout "
                f"config.json, which hard-codes 1e-5")
        if not self.is_alternating():
            raise UnsupportedConfigError(
                "non-alternating layer_types cannot be written to an original-layout config.json, "
                "which hard-codes sliding attention on even layers")
        d = {k: getattr(self, k) for k in ORIGINAL_KEYS}
        for k in ("rope_theta", "rope_ntk_alpha", "rope_ntk_beta"):
            d[k] = _int_if_integral(d[k])
        return json.dumps(d)

    def to_hf_json(self) -> str:
        """The text of the Hugging Face `config.json` as the converter writes it: every field of
        GPT_OSS_FORMAT.md section 1.2, keys sorted, 2-space indent, trailing newline."""
        d = {
            "architectures": ["GptOssForCausalLM"],
            "attention_bias": True,
            "attention_dropout": 0.0,
            "eos_token_id": _HF_EOS_TOKEN_ID,
            "experts_per_token": self.experts_per_token,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initial_context_length": self.initial_context_length,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_types": list(self.layer_types),
            "max_position_embeddings": self.max_position,
            "model_type": "gpt_oss",
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.experts_per_token,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "num_local_experts": self.num_experts,
            "output_router_logits": False,
            "pad_token_id": _HF_PAD_TOKEN_ID,
            "quantization_config": {
                "modules_to_not_convert": [
                    "model.layers.*.self_attn",
                    "model.layers.*.mlp.router",
                    "model.embed_tokens",
                    "lm_head",
                ],
                "quant_method": "mxfp4",
            },
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": {
                "beta_fast": self.rope_ntk_beta,
                "beta_slow": self.rope_ntk_alpha,
                "factor": self.rope_scaling_factor,
                "original_max_position_embeddings": self.initial_context_length,
                "rope_type": "yarn",
                "truncate": False,
            },
            "rope_theta": _int_if_integral(self.rope_theta),
            "router_aux_loss_coef": 0.9,
            "sliding_window": self.sliding_window,
            "swiglu_limit": self.swiglu_limit,
            "tie_word_embeddings": False,
            "transformers_version": _HF_TRANSFORMERS_VERSION,
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    # ----------------------------------------------------------------------------------------
    # parsing

    @staticmethod
    def from_dict(d: Mapping[str, Any], source: str = "config") -> "ModelConfig":
        """Parses either dialect (see the module docstring). `source` names the file in errors."""
        if not isinstance(d, Mapping):
            raise UnsupportedConfigError(
                f"{source}: expected a JSON object, got {type(d).__name__}")
        if "model_type" in d and d["model_type"] != "gpt_oss":
            raise UnsupportedConfigError(
                f"{source}: model_type is {d['model_type']!r}; gpt_oss_c runs only 'gpt_oss' "
                f"models")
        if "num_local_experts" in d:
            return _from_hf(d, source)
        if "num_experts" in d:
            return _from_original(d, source)
        if d.get("model_type") == "gpt_oss":
            return _from_hf(d, source)  # reports the missing keys
        raise UnsupportedConfigError(
            f"{source}: not a gpt-oss config: it has neither 'num_local_experts' (Hugging Face "
            f"layout) nor 'num_experts' (original layout); keys found: {sorted(d)[:12]}")

    @staticmethod
    def from_file(path: str | os.PathLike) -> "ModelConfig":
        """Reads a config.json of either dialect.

        Raises FileNotFoundError if it does not exist, CheckpointError if it is not valid JSON,
        UnsupportedConfigError if it is not a config the engine can run."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            with open(path, "rb") as f:
                d = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} is not valid JSON: {e}", file=path) from None
        return ModelConfig.from_dict(d, source=path)


# ---------------------------------------------------------------------------------------------
# dialect parsers


def _require(d: Mapping[str, Any], keys: tuple[str, ...], source: str, dialect: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise UnsupportedConfigError(
            f"{source}: {dialect} config.json is missing required key(s) {missing}")


def _from_original(d: Mapping[str, Any], source: str) -> ModelConfig:
    _require(d, ORIGINAL_KEYS, source, "original-layout")
    kw = {}
    for k in ORIGINAL_KEYS:
        kw[k] = (_as_int if k in _INT_FIELDS else _as_float)(d[k], k, source)
    return ModelConfig(**kw)


_HF_REQUIRED = (
    "num_hidden_layers", "num_local_experts", "vocab_size", "hidden_size", "intermediate_size",
    "head_dim", "num_attention_heads", "num_key_value_heads", "sliding_window", "rope_theta",
    "rope_scaling",
)


def _from_hf(d: Mapping[str, Any], source: str) -> ModelConfig:
    _require(d, _HF_REQUIRED, source, "Hugging Face")
    if "num_experts_per_tok" not in d and "experts_per_token" not in d:
        raise UnsupportedConfigError(
            f"{source}: Hugging Face config.json is missing required key 'num_experts_per_tok'")
    top_k = _as_int(d.get("num_experts_per_tok", d.get("experts_per_token")),
                    "num_experts_per_tok", source)
    if "experts_per_token" in d and _as_int(d["experts_per_token"], "experts_per_token",
                                            source) != top_k:
        raise UnsupportedConfigError(
            f"{source}: num_experts_per_tok = {top_k} disagrees with experts_per_token = "
            f"{d['experts_per_token']}")

    rs = d["rope_scaling"]
    if not isinstance(rs, Mapping):
        raise UnsupportedConfigError(
            f"{source}: rope_scaling must be an object with rope_type 'yarn', got {rs!r}")
    rope_type = rs.get("rope_type", rs.get("type"))
    if rope_type != "yarn":
        raise UnsupportedConfigError(
            f"{source}: rope_scaling.rope_type is {rope_type!r}; gpt-oss uses 'yarn'")
    _require(rs, ("factor", "beta_fast", "beta_slow", "original_max_position_embeddings"),
             f"{source} rope_scaling", "Hugging Face")
    if rs.get("truncate", False) is not False:
        raise UnsupportedConfigError(
            f"{source}: rope_scaling.truncate = {rs['truncate']!r}; the engine implements the "
            f"reference's unrounded YaRN correction range (truncate: false)")
    initial = _as_int(rs["original_max_position_embeddings"],
                      "rope_scaling.original_max_position_embeddings", source)
    if "initial_context_length" in d and _as_int(d["initial_context_length"],
                                                 "initial_context_length", source) != initial:
        raise UnsupportedConfigError(
            f"{source}: initial_context_length = {d['initial_context_length']} disagrees with "
            f"rope_scaling.original_max_position_embeddings = {initial}")

    if d.get("attention_bias", True) is not True:
        raise UnsupportedConfigError(
            f"{source}: attention_bias = {d['attention_bias']!r}; gpt-oss attention has q/k/v/o "
            f"biases")
    if d.get("tie_word_embeddings", False) is not False:
        raise UnsupportedConfigError(
            f"{source}: tie_word_embeddings = {d['tie_word_embeddings']!r}; gpt-oss has separate "
            f"embedding and unembedding matrices")
    qc = d.get("quantization_config")
    if qc is not None and (not isinstance(qc, Mapping) or qc.get("quant_method") != "mxfp4"):
        raise UnsupportedConfigError(
            f"{source}: quantization_config {qc!r} is not MXFP4; gpt_oss_c needs the MXFP4 expert "
            f"weights that OpenAI ships")

    layer_types = d.get("layer_types")
    if layer_types is not None and not isinstance(layer_types, list):
        raise UnsupportedConfigError(f"{source}: layer_types must be a list, got {layer_types!r}")
    return ModelConfig(
        num_hidden_layers=_as_int(d["num_hidden_layers"], "num_hidden_layers", source),
        num_experts=_as_int(d["num_local_experts"], "num_local_experts", source),
        experts_per_token=top_k,
        vocab_size=_as_int(d["vocab_size"], "vocab_size", source),
        hidden_size=_as_int(d["hidden_size"], "hidden_size", source),
        intermediate_size=_as_int(d["intermediate_size"], "intermediate_size", source),
        head_dim=_as_int(d["head_dim"], "head_dim", source),
        num_attention_heads=_as_int(d["num_attention_heads"], "num_attention_heads", source),
        num_key_value_heads=_as_int(d["num_key_value_heads"], "num_key_value_heads", source),
        sliding_window=_as_int(d["sliding_window"], "sliding_window", source),
        initial_context_length=initial,
        rope_theta=_as_float(d["rope_theta"], "rope_theta", source),
        rope_scaling_factor=_as_float(rs["factor"], "rope_scaling.factor", source),
        rope_ntk_alpha=_as_float(rs["beta_slow"], "rope_scaling.beta_slow", source),
        rope_ntk_beta=_as_float(rs["beta_fast"], "rope_scaling.beta_fast", source),
        # transformers' GptOssConfig defaults for these two (the real files state them).
        swiglu_limit=_as_float(d.get("swiglu_limit", 7.0), "swiglu_limit", source),
        rms_norm_eps=_as_float(d.get("rms_norm_eps", 1e-5), "rms_norm_eps", source),
        layer_types=None if layer_types is None else tuple(layer_types),
    )


# ---------------------------------------------------------------------------------------------
# value helpers


def _as_int(v: Any, key: str, source: str) -> int:
    # bool is an int subclass; `true` for a size is a broken file, not 1.
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (
            isinstance(v, float) and not v.is_integer()):
        raise UnsupportedConfigError(f"{source}: {key} must be an integer, got {v!r}")
    return int(v)


def _as_float(v: Any, key: str, source: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UnsupportedConfigError(f"{source}: {key} must be a number, got {v!r}")
    return float(v)


def _int_if_integral(v: float) -> int | float:
    return int(v) if float(v).is_integer() else v


def _real(n_layers: int, n_experts: int) -> ModelConfig:
    return ModelConfig(
        num_hidden_layers=n_layers, num_experts=n_experts, experts_per_token=4,
        vocab_size=201088, hidden_size=2880, intermediate_size=2880, head_dim=64,
        num_attention_heads=64, num_key_value_heads=8, sliding_window=128,
        initial_context_length=4096, rope_theta=150000.0, rope_scaling_factor=32.0,
        rope_ntk_alpha=1.0, rope_ntk_beta=32.0, swiglu_limit=7.0)


GPT_OSS_20B = _real(24, 32)
GPT_OSS_120B = _real(36, 128)
