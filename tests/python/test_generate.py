"""generate(): stop strings and ids, streaming, batches, logprobs, UTF-8-safe detokenisation."""

import numpy as np
import pytest

import gpt_oss_c
from gpt_oss_c.generate import TextStream
from gpt_oss_c.testing import write_synthetic_checkpoint

from helpers import DEVICES


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_synthetic_checkpoint(tmp_path_factory.mktemp("gen") / "tiny", size="tiny", layout="original", seed=5)


@pytest.fixture(scope="module")
def model(ckpt):
    return gpt_oss_c.load(ckpt, device="cpu")


PROMPT = "The quick brown fox"


def test_greedy_text_prompt_and_lengths(model):
    out = model.generate(PROMPT, max_new_tokens=10, temperature=0, ignore_eos=True)
    assert isinstance(out, gpt_oss_c.GenerationResult)
    assert len(out.token_ids) == 10 and out.finish_reason == "length"
    assert out.text == model.tokenizer.decode(out.token_ids)
    assert out.prompt_tokens == len(model.tokenizer.encode(PROMPT))
    again = model.generate(model.tokenizer.encode(PROMPT), max_new_tokens=10, temperature=0, ignore_eos=True)
    assert again.token_ids == out.token_ids


def test_stop_token_id(model):
    ref = model.generate(PROMPT, max_new_tokens=8, temperature=0, ignore_eos=True)
    stop_id = ref.token_ids[3]
    first = ref.token_ids.index(stop_id)
    out = model.generate(PROMPT, max_new_tokens=8, temperature=0, stop=[stop_id], ignore_eos=True)
    assert out.finish_reason == "stop"
    assert out.token_ids == ref.token_ids[: first + 1]  # the stop token is reported ...
    assert out.text == model.tokenizer.decode(ref.token_ids[:first])  # ... but not shown


def test_stop_string(model):
    ref = model.generate(PROMPT, max_new_tokens=12, temperature=0, ignore_eos=True)
    text = ref.text
    assert len(text) >= 4, "the random model produced too little text for this test"
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    out = model.generate(PROMPT, max_new_tokens=12, temperature=0, stop=stop, ignore_eos=True)
    assert out.finish_reason == "stop"
    assert out.text == text[: text.find(stop)]


def test_stream_equals_non_stream(model):
    full = model.generate(PROMPT, max_new_tokens=9, temperature=0.8, seed=3, ignore_eos=True, logprobs=True)
    chunks = list(model.generate(PROMPT, max_new_tokens=9, temperature=0.8, seed=3, ignore_eos=True,
                                 logprobs=True, stream=True))
    assert all(isinstance(c, gpt_oss_c.GenerationChunk) for c in chunks)
    assert "".join(c.text for c in chunks) == full.text
    assert [t for c in chunks for t in c.token_ids] == full.token_ids
    assert [lp for c in chunks for lp in c.logprobs] == pytest.approx(full.logprobs)
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == "length"


@pytest.mark.parametrize("device", DEVICES)
def test_logprobs_are_the_models(ckpt, device):
    model = gpt_oss_c.load(ckpt, device=device)
    prompt = model.tokenizer.encode(PROMPT)
    out = model.generate(prompt, max_new_tokens=5, temperature=1.0, seed=9, logprobs=True, ignore_eos=True)
    logits = model.logits(prompt + out.token_ids[:-1]).astype(np.float64)[len(prompt) - 1 :]
    m = logits.max(axis=1, keepdims=True)
    logsm = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    expected = [logsm[i, t] for i, t in enumerate(out.token_ids)]
    # f32 log-softmax over 201088 logits on the CPU; bf16-level logits on CUDA.
    assert out.logprobs == pytest.approx(expected, abs=1e-3 if device == "cpu" else 5e-2)


def test_batch_of_prompts_matches_single_runs(ckpt):
    single = gpt_oss_c.load(ckpt, device="cpu")
    batched = gpt_oss_c.load(ckpt, device="cpu", max_batch=2)  # 3 prompts, 2 slots: continuous batching
    prompts = ["Hello", "A much longer prompt than the others, to stagger the sequences", [1, 2, 3]]
    lengths = [5, 9, 3]
    expected = [single.generate(p, max_new_tokens=n, temperature=0, ignore_eos=True).token_ids
                for p, n in zip(prompts, lengths)]
    got = [r.token_ids for r in batched.generate(prompts, max_new_tokens=9, temperature=0, ignore_eos=True)]
    assert [g[: len(e)] for g, e in zip(got, expected)] == expected


def test_text_stream_never_splits_a_character(model):
    tok = model.tokenizer
    text = "naïve 日本語 🙂🎉 done"
    ids = tok.encode(text)
    s = TextStream(tok)
    pieces = [s.push(t) for t in ids] + [s.finish()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # Byte-level tokens of one emoji: nothing shows until the character is complete.
    emoji_ids = [i for i in ids if tok.decode_bytes([i]) and not tok.decode_bytes([i]).decode("utf-8", "ignore")]
    if emoji_ids:
        s2 = TextStream(tok)
        assert s2.push(emoji_ids[0]) == ""


def test_text_stream_holds_back_a_possible_stop_string(model):
    tok = model.tokenizer
    s = TextStream(tok, ["END"])
    out = "".join(s.push(t) for t in tok.encode("abc EN"))
    assert "EN" not in out  # could still become "END"
    out += "".join(s.push(t) for t in tok.encode("D tail"))
    assert s.stopped and out + s.finish() == "abc "
