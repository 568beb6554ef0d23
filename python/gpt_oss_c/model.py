"""The public Model: load a checkpoint onto a backend, score token sequences, generate."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Collection, Iterator, Sequence

import numpy as np

from . import generate as gen
from .config import ModelConfig
from .loader import core_tensor_list, load_checkpoint
from .tokenizer import Tokenizer, get_tokenizer

# KV-cache positions per sequence when the caller does not choose: the CPU keeps memory modest; a GPU
# gets the model's whole context for one sequence, split evenly when several are decoded together.
CPU_DEFAULT_CONTEXT = 8192
GPU_DEFAULT_CONTEXT_TOKENS = 131072


def _core():
    from . import _core

    return _core


def resolve_device(device: str) -> str:
    """"auto" picks "cuda" when this build has CUDA and a GPU is visible, else "cpu"."""
    if not isinstance(device, str):
        raise ValueError(f"device must be a string, got {device!r}")
    if device == "auto":
        return "cuda" if _core().cuda_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        core = _core()
        if not core.build_info()["cuda"]:
            raise RuntimeError(
                f"device={device!r}: this build of gpt_oss_c has no CUDA backend (nvcc was not found when "
                "it was installed); reinstall with a CUDA toolkit, or use device='cpu'"
            )
        if not core.cuda_available():
            raise RuntimeError(f"device={device!r}: no CUDA GPU is available (no device or no driver); use device='cpu'")
        return device
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


class Model:
    """A loaded gpt-oss model. Create it with :func:`gpt_oss_c.load`."""

    def __init__(self, path, device="auto", max_context=None, max_batch=1, max_step_tokens=None,
                 threads=None, use_graphs=True, vocab_file=None):
        ckpt = load_checkpoint(path)
        self.path = Path(ckpt.path)
        self.layout = ckpt.layout
        self.config: ModelConfig = ckpt.config
        self.device = resolve_device(device)
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 1 <= max_batch <= 4096:
            raise ValueError(f"max_batch must be an int in [1, 4096], got {max_batch!r}")
        if max_context is None:
            budget = CPU_DEFAULT_CONTEXT if self.device == "cpu" else GPU_DEFAULT_CONTEXT_TOKENS // max_batch
            max_context = max(1, min(self.config.max_position, budget))
        if isinstance(max_context, bool) or not isinstance(max_context, int) or not 1 <= max_context <= self.config.max_position:
            raise ValueError(f"max_context must be an int in [1, {self.config.max_position}], got {max_context!r}")
        if max_step_tokens is None:
            max_step_tokens = 512 if self.device == "cpu" else 2048
        if threads is None:
            threads = int(os.environ.get("GPT_OSS_C_THREADS", "0") or 0)
        self.max_context = max_context
        self.max_batch = max_batch
        self._vocab_file = vocab_file
        self._tokenizer: Tokenizer | None = None
        self._engine = _core().Engine(
            self.config.to_core_dict(), core_tensor_list(ckpt), self.device, max_context, max_batch,
            max_step_tokens, threads, use_graphs,
        )
        # Tokens whose keys/values each KV slot holds, for prefix reuse across calls.
        self._slot_tokens: list[list[int]] = [[] for _ in range(max_batch)]

    # -- properties -----------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The o200k_harmony tokenizer (resolved on first use; see gpt_oss_c.tokenizer)."""
        if self._tokenizer is None:
            self._tokenizer = get_tokenizer(self._vocab_file, checkpoint_dir=self.path)
        return self._tokenizer

    def info(self) -> dict:
        """Device, memory use (weights, KV cache, device total) and limits."""
        d = dict(self._engine.info())
        d.update(path=str(self.path), layout=self.layout, model=self.config.name)
        return d

    def __repr__(self) -> str:
        return f"Model({self.config.name}, layout={self.layout}, device={self.device}, max_context={self.max_context})"

    # -- scoring --------------------------------------------------------------------------------

    def _check_ids(self, token_ids, what="token_ids") -> list[int]:
        if isinstance(token_ids, (str, bytes)):
            raise ValueError(f"{what} must be a sequence of ints, not {type(token_ids).__name__}")
        try:
            ids = [int(t) for t in token_ids]
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a sequence of ints") from None
        if not ids:
            raise ValueError(f"{what} is empty")
        for t in ids:
            if not 0 <= t < self.config.vocab_size:
                raise ValueError(f"token id {t} in {what} is out of range [0, {self.config.vocab_size})")
        return ids

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Full forward over `token_ids` from position 0; returns float32 logits [T, vocab].

        Row t is the model's prediction for the token after token_ids[t]."""
        ids = self._check_ids(token_ids)
        if len(ids) > self.max_context:
            raise ValueError(f"{len(ids)} tokens exceed max_context={self.max_context}")
        _, _, logits = self._engine.step([(0, 0, np.asarray(ids, dtype=np.int64), None)], 2, False)
        self._slot_tokens[0] = ids
        return logits

    def _reuse_prefix(self, slot: int, prompt: list[int]) -> int:
        """Start position for prefilling `prompt` into `slot`: keeps the cached prefix it shares when
        the cache can continue from there (at most one token back), else 0."""
        cached = self._slot_tokens[slot]
        n = 0
        limit = min(len(cached), len(prompt) - 1)  # always feed at least one token
        while n < limit and cached[n] == prompt[n]:
            n += 1
        return n if n >= len(cached) - 1 else 0

    # -- generation -----------------------------------------------------------------------------

    def _prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            return self.tokenizer.encode(prompt)
        return self._check_ids(prompt, "prompt")

    def generate(self, prompt, max_new_tokens: int = 256, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, min_p: float = 0.0, seed: int | None = None, stop=None, stream: bool = False,
                 logprobs: bool = False, ignore_eos: bool = False):
        """Generates a continuation of `prompt` (a str, or a list of token ids).

        Prefills the prompt once, then decodes one token per step through the KV cache.
        temperature=0 is greedy. `stop` takes strings and/or token ids; generation also stops at the
        model's end-of-sequence tokens (<|return|>, <|call|>, <|endoftext|>) unless ignore_eos.
        Returns a GenerationResult; with stream=True an iterator of GenerationChunk; with a list of
        prompts, a list of GenerationResult (decoded together, max_batch at a time)."""
        batch = isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(
            isinstance(p, (str, list, tuple, np.ndarray)) for p in prompt)
        prompts = list(prompt) if batch else [prompt]
        if batch and stream:
            raise ValueError("stream=True takes a single prompt, not a list")
        sampling = gen.SamplingParams.make(temperature, top_k, top_p, min_p, seed)
        stop_strings, stop_ids = gen.parse_stop(stop, self.config.vocab_size)
        if not ignore_eos:
            stop_ids = stop_ids | frozenset(gen.DEFAULT_EOS_IDS)
        requests = []
        for i, p in enumerate(prompts):
            # Each prompt of a batch gets its own Philox stream, derived from the seed.
            s = sampling if i == 0 else gen.SamplingParams.make(temperature, top_k, top_p, min_p, (sampling.seed + i) % 2**64)
            requests.append(gen.make_request(self, self._prompt_ids(p), max_new_tokens, s, stop_ids, stop_strings, logprobs))
        if stream:
            return gen.stream_request(self, requests[0])
        for _ in gen.run_batch(self, requests):
            pass
        results = [gen.result_of(r) for r in requests]
        return results if batch else results[0]

    def generate_ids(self, prompt_ids: Sequence[int], *, max_new_tokens: int, temperature: float = 1.0,
                     top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0, seed: int | None = None,
                     stop_token_ids: Collection[int] = ()) -> Iterator[tuple[int, float]]:
        """Low-level streaming generation: yields (token_id, logprob) for each new token and ends after
        a stop token (which is yielded) or max_new_tokens. Validates its arguments eagerly."""
        sampling = gen.SamplingParams.make(temperature, top_k, top_p, min_p, seed)
        _, stop_ids = gen.parse_stop(list(stop_token_ids), self.config.vocab_size)
        r = gen.make_request(self, self._check_ids(prompt_ids, "prompt_ids"), max_new_tokens, sampling, stop_ids,
                             (), True, with_text=False)

        def tokens():
            for _, tok, lp, _ in gen.run_batch(self, [r]):
                yield tok, lp

        return tokens()

    def chat(self, messages, **kwargs):
        """Chat in the harmony format; see gpt_oss_c.chat.chat for the arguments."""
        from .chat import chat

        return chat(self, messages, **kwargs)


def load(path, device: str = "auto", max_context: int | None = None, **kwargs) -> Model:
    """Loads a gpt-oss checkpoint directory (Hugging Face or original layout) onto `device`.

    device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    max_context: KV-cache positions per sequence (default: 8192 on CPU, the model's full context on
    a GPU). Other keyword arguments: max_batch (sequences decoded together), max_step_tokens (prefill
    chunk), threads (CPU), use_graphs (CUDA graphs for decode), vocab_file."""
    return Model(path, device=device, max_context=max_context, **kwargs)
