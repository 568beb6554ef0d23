"""Parsing hand-built completion token lists (CompletionParser / parse_completion).

Completions are written as harmony text and encoded with specials allowed, so each list is exactly
what a model would have sampled. Every case is run through the streaming CompletionParser, and the
streamed events must add up to the ChatResult (exact string equality: no tolerance applies to text).
"""

from __future__ import annotations

import random

import pytest

from gpt_oss_c.chat import (
    MAX_HEADER_TOKENS,
    ChatDelta,
    ChatResult,
    CompletionParser,
    ToolCall,
    parse_completion,
    render_chat,
)
from gpt_oss_c.tokenizer import CALL, CHANNEL, END, MESSAGE, N_VOCAB, RETURN, START, get_tokenizer


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


def ids_of(tok, text):
    return tok.encode(text, allowed_special="all")


def stream(tok, ids):
    """Runs ids through CompletionParser as chat() does (a last <|return|> or <|call|> is the stop
    token, else generation ran out). Returns (events, result) and checks that the events add up to
    the result, and that parse_completion gives the same result."""
    stopped = bool(ids) and ids[-1] in (RETURN, CALL)
    body, stop = (ids[:-1], ids[-1]) if stopped else (ids, None)
    p = CompletionParser(tok)
    events = []
    for t in body:
        events += p.feed(t)
    events += p.finish(stop)
    result = p.result()
    deltas = [e for e in events if isinstance(e, ChatDelta)]
    assert all(d.text for d in deltas), "no empty deltas"
    assert "".join(d.text for d in deltas if d.channel == "analysis") == result.reasoning
    assert "".join(d.text for d in deltas if d.channel != "analysis") == result.content
    assert [e for e in events if isinstance(e, ToolCall)] == result.tool_calls
    assert result.usage.completion_tokens == len(ids)
    assert _with_ids_of(parse_completion(ids, tok), result) == result
    return events, result


def _with_ids_of(a: ChatResult, b: ChatResult) -> ChatResult:
    """a with b's tool call ids (ids are random), for comparing two parses of the same tokens."""
    calls = [ToolCall(cb.id, ca.name, ca.arguments) for ca, cb in zip(a.tool_calls, b.tool_calls)]
    return ChatResult(
        a.reasoning, a.content, calls + a.tool_calls[len(calls) :], a.finish_reason, a.usage, a.parse_error
    )


def test_analysis_then_final(tok):
    ids = [200005, 35644, 200008, 17958, 81645, 13, 200007, 200006, 173781, 200005, 17196, 200008, 19, 200002]
    events, r = stream(tok, ids)
    assert (r.reasoning, r.content, r.tool_calls, r.finish_reason, r.parse_error) == (
        "Simple arithmetic.",
        "4",
        [],
        "stop",
        None,
    )
    assert [(e.channel, e.text) for e in events] == [
        ("analysis", "Simple"),
        ("analysis", " arithmetic"),
        ("analysis", "."),
        ("final", "4"),
    ]
    assert r.to_message() == {"role": "assistant", "content": "4", "reasoning": "Simple arithmetic."}


def test_commentary_tool_call_with_constrain_json(tok):
    ids = ids_of(
        tok,
        "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary"
        ' to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}<|call|>',
    )
    events, r = stream(tok, ids)
    assert r.finish_reason == "tool_calls" and r.reasoning == "Need weather." and r.content == ""
    (call,) = r.tool_calls
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Oslo"}')
    assert call.id.startswith("call_") and len(call.id) == 29
    # Arguments are not streamed as text; the call arrives once, when its message completes.
    assert isinstance(events[-1], ToolCall) and all(e.channel == "analysis" for e in events[:-1])
    assert call.to_openai() == {
        "id": call.id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    msg = r.to_message()
    assert msg == {"role": "assistant", "content": None, "tool_calls": [call.to_openai()], "reasoning": "Need weather."}


def test_recipient_in_role_part_of_first_header(tok):
    # The prompt ends with "<|start|>assistant", so the model may continue with " to=...".
    ids = ids_of(tok, ' to=functions.lookup<|channel|>commentary json<|message|>{"q": 1}<|call|>')
    _, r = stream(tok, ids)
    assert [(c.name, c.arguments) for c in r.tool_calls] == [("lookup", '{"q": 1}')]
    assert r.finish_reason == "tool_calls"


def test_recipient_in_role_part_after_start(tok):
    ids = ids_of(
        tok,
        "<|channel|>analysis<|message|>Look it up.<|end|><|start|>assistant to=functions.lookup<|channel|>commentary"
        ' <|constrain|>json<|message|>{"q": 2}<|call|>',
    )
    _, r = stream(tok, ids)
    assert r.reasoning == "Look it up."
    assert [(c.name, c.arguments) for c in r.tool_calls] == [("lookup", '{"q": 2}')]


def test_bare_function_name_recipient(tok):
    ids = ids_of(tok, "<|channel|>commentary to=lookup json<|message|>{}<|call|>")
    _, r = stream(tok, ids)
    assert [(c.name, c.arguments) for c in r.tool_calls] == [("lookup", "{}")]


def test_preamble_then_call(tok):
    ids = ids_of(
        tok,
        "<|channel|>commentary<|message|>Checking now.<|end|><|start|>assistant<|channel|>commentary"
        " to=functions.f <|constrain|>json<|message|>{}<|call|>",
    )
    events, r = stream(tok, ids)
    assert r.content == "Checking now." and r.finish_reason == "tool_calls"
    assert {e.channel for e in events if isinstance(e, ChatDelta)} == {"commentary"}
    assert r.to_message()["content"] == "Checking now."


def test_parsed_tool_call_renders_back(tok):
    ids = ids_of(tok, "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}<|call|>")
    r = parse_completion(ids, tok)
    c = r.tool_calls[0]
    msgs = [
        {"role": "user", "content": "go"},
        r.to_message(),
        {"role": "tool", "tool_call_id": c.id, "name": "f", "content": "ok"},
    ]
    text = tok.decode(render_chat(msgs, current_date="2025-01-01"))
    assert text.endswith(
        "<|start|>assistant to=functions.f<|channel|>commentary <|constrain|>json<|message|>{}<|call|>"
        "<|start|>functions.f to=assistant<|channel|>commentary<|message|>ok<|end|><|start|>assistant"
    )


def test_cut_off_mid_final(tok):
    ids = ids_of(
        tok, "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>The answer is"
    )
    _, r = stream(tok, ids)
    assert (r.reasoning, r.content, r.finish_reason, r.parse_error) == ("Think.", "The answer is", "length", None)


def test_cut_off_mid_analysis(tok):
    ids = ids_of(tok, "<|channel|>analysis<|message|>Let me think about")
    _, r = stream(tok, ids)
    assert (r.reasoning, r.content, r.finish_reason) == ("Let me think about", "", "length")


def test_cut_off_mid_header_is_dropped(tok):
    ids = ids_of(tok, "<|channel|>analysis<|message|>Done.<|end|><|start|>assistant<|channel|>fin")
    events, r = stream(tok, ids)
    assert (r.reasoning, r.content, r.finish_reason, r.parse_error) == ("Done.", "", "length", None)


def test_cut_off_mid_tool_arguments(tok):
    ids = ids_of(tok, '<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a": ')
    _, r = stream(tok, ids)
    assert r.finish_reason == "length"
    assert [(c.name, c.arguments) for c in r.tool_calls] == [("f", '{"a": ')]


def test_empty_completion(tok):
    _, r = stream(tok, [])
    assert (r.reasoning, r.content, r.tool_calls, r.finish_reason) == ("", "", [], "length")


def test_stop_token_between_messages_ends_cleanly(tok):
    ids = ids_of(tok, "<|channel|>final<|message|>Hi.<|end|><|return|>")
    _, r = stream(tok, ids)
    assert (r.content, r.finish_reason, r.parse_error) == ("Hi.", "stop", None)


def test_unknown_channel_is_content(tok):
    _, r = stream(tok, ids_of(tok, "<|channel|>notes<|message|>hello<|return|>"))
    assert (r.content, r.finish_reason) == ("hello", "stop")


def test_split_utf8_character_streams_whole(tok):
    emoji = ids_of(tok, "😀🎉")
    assert len(emoji) > 2  # 🎉 is split over byte tokens
    ids = [CHANNEL] + ids_of(tok, "final") + [MESSAGE] + emoji + [RETURN]
    events, r = stream(tok, ids)
    assert r.content == "😀🎉"
    assert [e.text for e in events] == ["😀", "🎉"]


def test_dangling_partial_utf8_becomes_replacement_char(tok):
    partial = ids_of(tok, "🎉")[:1]
    ids = [CHANNEL] + ids_of(tok, "final") + [MESSAGE] + ids_of(tok, "a") + partial + [RETURN]
    _, r = stream(tok, ids)
    assert r.content == "a\ufffd" and r.finish_reason == "stop"


# ---------------------------------------------------------------------------------------------
# Malformed output: never raises, comes back as content, finish_reason "malformed"
# ---------------------------------------------------------------------------------------------


def test_garbage_after_end(tok):
    ids = ids_of(tok, "<|channel|>analysis<|message|>ok<|end|>commentary stuff<|return|>")
    events, r = stream(tok, ids)
    assert r.finish_reason == "malformed" and "expecting start token" in r.parse_error
    assert r.reasoning == "ok"
    assert r.content == "commentary stuff"  # the stop token that ended generation is not text
    assert events[-1].channel is None


def test_header_with_extra_words(tok):
    ids = ids_of(
        tok,
        "<|channel|>final<|message|>A<|end|><|start|>assistant to=x json extra<|channel|>final<|message|>B<|return|>",
    )
    _, r = stream(tok, ids)
    assert r.finish_reason == "malformed" and "unexpected tokens remaining" in r.parse_error
    # The broken message passes through verbatim, specials as their text.
    assert r.content == "A<|start|>assistant to=x json extra<|channel|>final<|message|>B"


def test_message_from_another_role(tok):
    ids = ids_of(tok, "<|channel|>final<|message|>A<|end|><|start|>user<|message|>I am the user now<|return|>")
    _, r = stream(tok, ids)
    assert r.finish_reason == "malformed" and "from user" in r.parse_error
    assert r.content == "A<|start|>user<|message|>I am the user now"


def test_stop_token_inside_header(tok):
    _, r = stream(tok, ids_of(tok, "<|channel|>final<|return|>"))
    assert r.finish_reason == "malformed" and "inside a message header" in r.parse_error
    assert r.content == "<|channel|>final"


def test_header_that_never_ends_streams_as_text(tok):
    words = ids_of(tok, " word" * (MAX_HEADER_TOKENS + 10))
    assert len(words) == MAX_HEADER_TOKENS + 10
    p = CompletionParser(tok)
    held = [p.feed(t) for t in words[:MAX_HEADER_TOKENS]]
    assert all(e == [] for e in held)  # still a plausible header
    (first,) = p.feed(words[MAX_HEADER_TOKENS])  # one past the limit: everything so far comes out
    assert first == ChatDelta(None, " word" * (MAX_HEADER_TOKENS + 1))
    assert p.feed(words[MAX_HEADER_TOKENS + 1]) == [ChatDelta(None, " word")]
    _, r = stream(tok, words)
    assert (r.content, r.finish_reason) == (" word" * (MAX_HEADER_TOKENS + 10), "malformed")


def test_undecodable_header(tok):
    partial = ids_of(tok, "🎉")[:1]
    _, r = stream(tok, [CHANNEL] + partial + [MESSAGE] + ids_of(tok, "x") + [RETURN])
    assert r.finish_reason == "malformed" and r.content.endswith("<|message|>x")


SPECIALS = [RETURN, CALL, END, START, CHANNEL, MESSAGE, 200003, 199999, 200013, N_VOCAB - 1]


@pytest.mark.parametrize("seed", range(40))
def test_random_tokens_never_raise(tok, seed):
    rng = random.Random(seed)
    n = rng.choice([1, 5, 30, 120])
    # Half the draws from the specials, so every parser state and transition is hit.
    ids = [rng.choice(SPECIALS) if rng.random() < 0.5 else rng.randrange(N_VOCAB) for _ in range(n)]
    for variant in (ids, ids + [RETURN], ids + [CALL]):
        _, r = stream(tok, variant)
        assert r.finish_reason in ("stop", "tool_calls", "length", "malformed")
        assert (r.finish_reason == "malformed") == (r.parse_error is not None)


def test_random_harmony_shaped_tokens_never_raise(tok):
    # Well-formed fragments shuffled: closer to what a half-trained model emits.
    pieces = [
        [START],
        ids_of(tok, "assistant"),
        [CHANNEL],
        ids_of(tok, "analysis"),
        ids_of(tok, "final"),
        ids_of(tok, " to=functions.f"),
        [200003],
        ids_of(tok, "json"),
        [MESSAGE],
        ids_of(tok, "text"),
        [END],
    ]
    rng = random.Random(7)
    for _ in range(300):
        ids = [t for _ in range(rng.randint(1, 14)) for t in rng.choice(pieces)]
        _, r = stream(tok, ids + rng.choice([[], [RETURN], [CALL]]))
        assert (r.finish_reason == "malformed") == (r.parse_error is not None)


# ---------------------------------------------------------------------------------------------
# Misuse (programming errors, not model output) does raise
# ---------------------------------------------------------------------------------------------


def test_token_out_of_vocab_raises(tok):
    p = CompletionParser(tok)
    for bad in (-1, N_VOCAB, 1.5, "5", True):
        with pytest.raises(ValueError, match="token id"):
            p.feed(bad)
    with pytest.raises(ValueError, match="token id"):
        parse_completion([N_VOCAB + 5], tok)


def test_finish_protocol(tok):
    p = CompletionParser(tok)
    with pytest.raises(ValueError, match="before finish"):
        p.result()
    p.finish(None)
    with pytest.raises(ValueError, match="after finish"):
        p.feed(5)
    with pytest.raises(ValueError, match="called twice"):
        p.finish(None)
