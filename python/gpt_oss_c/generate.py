"""The generation loop: sampling settings, prefill + one-token decode steps through the KV cache,
stop handling and UTF-8-safe incremental detokenisation.

Only token ids (and their log-probabilities) cross from the engine to Python during decoding.
"""

from __future__ import annotations

import codecs
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Collection, Iterator, Sequence

if TYPE_CHECKING:
    from .model import Model

# <|return|>, <|call|>, <|endoftext|>: the end-of-sequence ids of generation_config.json.
DEFAULT_EOS_IDS = (200002, 200012, 199999)


@dataclass(frozen=True)
class SamplingParams:
    """Validated sampling settings (see csrc/ops.h SamplingConfig for the exact semantics).

    temperature 0 is greedy. top_k 0, top_p 1 and min_p 0 disable their filters. The seed keys the
    Philox stream; the counter is the token's absolute position, so a seed reproduces the same tokens
    on CPU and GPU and whatever else shares the batch."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int = 0

    @staticmethod
    def make(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=None) -> "SamplingParams":
        def number(name, v):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name} must be a number, got {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v!r}")
            return float(v)

        temperature = number("temperature", temperature)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {top_k!r}")
        top_p = number("top_p", top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        min_p = number("min_p", min_p)
        if not 0.0 <= min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {min_p}")
        if seed is None:
            seed = secrets.randbits(63)
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64) or None, got {seed!r}")
        return SamplingParams(temperature, top_k, top_p, min_p, seed)

    def core(self) -> tuple:
        return (self.temperature, self.top_k, self.top_p, self.min_p, self.seed)


@dataclass
class GenerationResult:
    """One finished generation.

    text: the decoded new text (stop strings and stop tokens excluded).
    token_ids: the new tokens only, including a stop token if one ended the generation.
    finish_reason: "stop" (a stop token or string) or "length" (max_new_tokens or the context end).
    logprobs: log-probability of each new token under the model (raw logits), if asked for.
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[float] | None = None
    prompt_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        n = max(len(self.token_ids) - 1, 0)
        return n / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class GenerationChunk:
    """One streamed piece: new text (possibly empty while a character or stop string is pending),
    the tokens that produced it, their logprobs if asked for, and finish_reason on the last piece."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    finish_reason: str | None = None


def parse_stop(stop, vocab: int) -> tuple[tuple[str, ...], frozenset[int]]:
    """Splits `stop` (None, a str, an int, or a list of them) into stop strings and stop token ids."""
    if stop is None:
        return (), frozenset()
    items = [stop] if isinstance(stop, (str, int)) else stop
    strings, ids = [], set()
    try:
        items = list(items)
    except TypeError:
        raise ValueError(f"stop must be a str, a token id, or a list of them; got {stop!r}") from None
    for s in items:
        if isinstance(s, bool):
            raise ValueError(f"stop entries must be str or int, got {s!r}")
        if isinstance(s, str):
            if not s:
                raise ValueError("stop strings must not be empty")
            strings.append(s)
        elif isinstance(s, int):
            if not 0 <= s < vocab:
                raise ValueError(f"stop token id {s} is out of range [0, {vocab})")
            ids.add(s)
        else:
            raise ValueError(f"stop entries must be str or int, got {type(s).__name__}")
    return tuple(strings), frozenset(ids)


class TextStream:
    """Incremental detokeniser: turns a stream of token ids into text pieces that never split a UTF-8
    character and never show a stop string (text that might still become one is held back)."""

    def __init__(self, tokenizer, stop_strings: Sequence[str] = ()):
        self._tok = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(stop_strings)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self.text = ""  # decoded so far (complete characters only)
        self.emitted = 0  # chars of self.text already handed out
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Adds one token; returns the text that is now safe to show ("" once a stop string appeared)."""
        if self.stopped:
            return ""
        self.text += self._decoder.decode(self._tok.decode_bytes([token_id]))
        if self._stops:
            cut = min((i for i in (self.text.find(s) for s in self._stops) if i >= 0), default=-1)
            if cut >= 0:
                self.text = self.text[:cut]
                self.stopped = True
                return self._take(len(self.text))
            return self._take(max(len(self.text) - self._hold, self.emitted))
        return self._take(len(self.text))

    def finish(self) -> str:
        """Flushes held-back text (and a dangling partial character as U+FFFD)."""
        if not self.stopped:
            self.text += self._decoder.decode(b"", final=True)
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        piece = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return piece


@dataclass
class _Request:
    prompt: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    stop_ids: frozenset[int]
    stream: TextStream | None
    want_logprobs: bool
    slot: int = -1
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    prefill_s: float = 0.0
    decode_s: float = 0.0


def run_batch(model: "Model", requests: list[_Request]) -> Iterator[tuple[_Request, int, float, str]]:
    """Continuous batching over the model's KV slots: prefill waiting requests into free slots (one
    engine step for all of them; the engine chunks long prompts), then decode one token per active
    request per step. Yields (request, token, logprob, text_piece) for every new token; a request is
    finished once its finish_reason is set."""
    eng = model._engine
    free = list(range(model.max_batch))
    waiting = list(requests)
    active: list[_Request] = []
    while waiting or active:
        admit = []
        while waiting and free:
            r = waiting.pop(0)
            r.slot = free.pop(0)
            admit.append(r)
        if admit:
            seqs = []
            for r in admit:
                start = model._reuse_prefix(r.slot, r.prompt)
                seqs.append((r.slot, start, r.prompt[start:], r.sampling.core()))
            t0 = time.perf_counter()
            toks, lps, _ = eng.step(seqs, 0, True)
            dt = time.perf_counter() - t0
            for i, r in enumerate(admit):
                model._slot_tokens[r.slot] = list(r.prompt)
                r.prefill_s = dt
                active.append(r)
                yield r, int(toks[i]), float(lps[i]), _accept(r, int(toks[i]), float(lps[i]), model.max_context)
        else:
            seqs = [(r.slot, len(r.prompt) + len(r.tokens) - 1, [r.tokens[-1]], r.sampling.core()) for r in active]
            t0 = time.perf_counter()
            toks, lps, _ = eng.step(seqs, 0, True)
            dt = time.perf_counter() - t0
            for i, r in enumerate(active):
                model._slot_tokens[r.slot].append(r.tokens[-1])
                r.decode_s += dt
                yield r, int(toks[i]), float(lps[i]), _accept(r, int(toks[i]), float(lps[i]), model.max_context)
        for r in [r for r in active if r.finish_reason is not None]:
            active.remove(r)
            free.append(r.slot)
        free.sort()


def _accept(r: _Request, tok: int, lp: float, max_ctx: int) -> str:
    """Records one sampled token; returns the text it makes safe to show. Sets finish_reason when a
    stop token or string appears, max_new_tokens is reached, or the next token could not be fed
    (its position would be max_context)."""
    r.tokens.append(tok)
    if r.want_logprobs:
        r.logprobs.append(lp)
    piece = ""
    if tok in r.stop_ids:
        r.finish_reason = "stop"
    else:
        if r.stream is not None:
            piece = r.stream.push(tok)
            if r.stream.stopped:
                r.finish_reason = "stop"
        if r.finish_reason is None and (len(r.tokens) >= r.max_new_tokens or len(r.prompt) + len(r.tokens) > max_ctx):
            r.finish_reason = "length"
    if r.finish_reason is not None and r.stream is not None:
        piece += r.stream.finish()
    return piece


def make_request(model: "Model", prompt_ids: list[int], max_new_tokens: int, sampling: SamplingParams,
                 stop_ids: Collection[int], stop_strings: Sequence[str], want_logprobs: bool,
                 with_text: bool = True) -> _Request:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if len(prompt_ids) > model.max_context:
        raise ValueError(
            f"prompt has {len(prompt_ids)} tokens, more than max_context={model.max_context}; shorten "
            f"it or load with a larger max_context (the model supports up to {model.config.max_position})"
        )
    stream = TextStream(model.tokenizer, stop_strings) if with_text else None
    return _Request(list(prompt_ids), max_new_tokens, sampling, frozenset(stop_ids), stream, want_logprobs)


def stream_request(model: "Model", r: _Request) -> Iterator[GenerationChunk]:
    """Runs one request, yielding a GenerationChunk per new token (the last one has finish_reason)."""
    for _, tok, lp, piece in run_batch(model, [r]):
        yield GenerationChunk(piece, [tok], [lp] if r.want_logprobs else None, r.finish_reason)


def result_of(r: _Request) -> GenerationResult:
    return GenerationResult(
        text=r.stream.text if r.stream else "",
        token_ids=list(r.tokens),
        finish_reason=r.finish_reason or "length",
        logprobs=list(r.logprobs) if r.want_logprobs else None,
        prompt_tokens=len(r.prompt),
        prefill_s=r.prefill_s,
        decode_s=r.decode_s,
    )
