"""chat() end to end on a tiny random-weight model, and `gpt-oss-c chat` driven through a pipe.

Random weights produce arbitrary tokens, so these tests check the plumbing exactly rather than the
text: chat() must equal generate_ids() + parse_completion() on the same seed, streaming must equal
non-streaming, and the REPL must answer every line and exit cleanly.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest

import gpt_oss_c
from gpt_oss_c.chat import ASSISTANT_STOP_TOKENS, ChatDelta, ChatResult, ToolCall, chat, parse_completion, render_chat
from gpt_oss_c.testing import write_synthetic_checkpoint

DATE = "2025-08-05"
MESSAGES = [{"role": "system", "content": "Answer concisely."}, {"role": "user", "content": "What is 2 + 2?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Adds.",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}}},
        },
    }
]
FINISH = {"stop", "tool_calls", "length", "malformed"}


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    return write_synthetic_checkpoint(tmp_path_factory.mktemp("chat") / "tiny", size="tiny", layout="hf")


@pytest.fixture(scope="session")
def model(ckpt):
    return gpt_oss_c.load(ckpt, device="cpu")


def comparable(r: ChatResult) -> ChatResult:
    """r without what legitimately differs between two runs of the same tokens: timings, call ids."""
    calls = [dataclasses.replace(c, id="") for c in r.tool_calls]
    usage = dataclasses.replace(r.usage, prefill_s=0.0, decode_s=0.0)
    return dataclasses.replace(r, tool_calls=calls, usage=usage)


@pytest.mark.parametrize("tools", [None, TOOLS], ids=["plain", "tools"])
def test_chat_equals_generate_ids_then_parse(model, tools):
    kw = dict(max_new_tokens=24, temperature=1.0, seed=11)
    r = chat(model, MESSAGES, "low", tools=tools, current_date=DATE, **kw)
    assert isinstance(r, ChatResult) and r.finish_reason in FINISH
    prompt = render_chat(MESSAGES, "low", tools=tools, current_date=DATE, tokenizer=model.tokenizer)
    ids = [t for t, _ in model.generate_ids(prompt, stop_token_ids=ASSISTANT_STOP_TOKENS, **kw)]
    assert comparable(r) == comparable(parse_completion(ids, model.tokenizer, prompt_tokens=len(prompt)))
    assert r.usage.prompt_tokens == len(prompt) and r.usage.completion_tokens == len(ids)
    assert 1 <= r.usage.completion_tokens <= 24
    assert r.usage.prefill_s > 0 and r.usage.decode_s >= 0


def test_stream_equals_non_stream(model):
    kw = dict(current_date=DATE, max_new_tokens=20, seed=3)
    full = chat(model, MESSAGES, **kw)
    events = list(chat(model, MESSAGES, stream=True, **kw))
    *body, last = events
    assert isinstance(last, ChatResult)
    assert all(isinstance(e, (ChatDelta, ToolCall)) for e in body)
    assert comparable(last) == comparable(full)
    deltas = [e for e in body if isinstance(e, ChatDelta)]
    assert "".join(d.text for d in deltas if d.channel == "analysis") == last.reasoning
    assert "".join(d.text for d in deltas if d.channel != "analysis") == last.content
    assert [e for e in body if isinstance(e, ToolCall)] == last.tool_calls


def test_model_chat_delegates(model):
    kw = dict(current_date=DATE, max_new_tokens=6, seed=9)
    assert comparable(model.chat(MESSAGES, **kw)) == comparable(chat(model, MESSAGES, **kw))


def test_closing_the_stream_early_leaves_the_model_usable(model):
    kw = dict(current_date=DATE, max_new_tokens=30, seed=4)
    events = chat(model, MESSAGES, stream=True, **kw)
    next(events)
    events.close()
    again = chat(model, MESSAGES, **kw)
    assert again.usage.completion_tokens >= 1


def test_multi_turn_history_from_to_message(model):
    first = chat(model, MESSAGES, current_date=DATE, max_new_tokens=8, seed=1)
    history = MESSAGES + [{"role": "assistant", "content": first.content}, {"role": "user", "content": "And 3 + 3?"}]
    second = chat(model, history, current_date=DATE, max_new_tokens=8, seed=1)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_invalid_input_raises_at_the_call_even_when_streaming(model):
    with pytest.raises(ValueError, match="unknown role"):
        chat(model, [{"role": "bot", "content": "x"}], stream=True)
    with pytest.raises(ValueError, match="top_p"):
        chat(model, MESSAGES, top_p=0.0, stream=True)
    with pytest.raises(ValueError, match="max_new_tokens"):
        chat(model, MESSAGES, max_new_tokens=0, stream=True)


def test_context_limits(ckpt):
    small = gpt_oss_c.load(ckpt, device="cpu", max_context=128)
    with pytest.raises(ValueError, match="max_context"):
        chat(small, [{"role": "user", "content": "word " * 200}])
    r = chat(small, MESSAGES, current_date=DATE, max_new_tokens=4096, seed=2)
    # The random model essentially never samples a stop token: the context end stops it.
    assert r.finish_reason in ("length", "malformed")
    assert r.usage.prompt_tokens + r.usage.completion_tokens <= 128 + 1


# ---------------------------------------------------------------------------------------------
# The REPL through a pipe
# ---------------------------------------------------------------------------------------------

STATS = re.compile(
    r"^\[(\d+) tokens \(prompt (\d+)\), [\d.]+ tok/s, prefill [\d.]+ s, (stop|tool_calls|length|malformed)", re.M
)


def run_cli(args, stdin, env=None):
    return subprocess.run(
        [sys.executable, "-m", "gpt_oss_c.cli", "chat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_cli_pipe_answers_each_line_and_exits(ckpt):
    stdin = "Hello\n/effort high\nWhat now?\n/effort extreme\n/reset\nHello\n/help\n/nope\n/exit\nnever read\n"
    r = run_cli(["--model", str(ckpt), "--device", "cpu", "--max-new-tokens", "6", "--seed", "1"], stdin)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "\x1b" not in r.stdout  # no ANSI codes without a terminal
    stats = STATS.findall(r.stdout)
    assert len(stats) == 3, r.stdout  # one answer per user line; commands are not sent to the model
    assert all(1 <= int(n) <= 6 for n, _, _ in stats)
    (_, p1, _), (_, p2, _), (_, p3, _) = stats
    assert int(p2) > int(p1)  # the second turn carries the first
    assert p3 == p1  # after /reset the same question gives the same prompt
    assert "[reasoning effort: high]" in r.stdout
    assert "[unknown effort 'extreme'; use low, medium or high]" in r.stdout
    assert "[conversation reset]" in r.stdout
    assert "[commands: " in r.stdout and "[unknown command /nope;" in r.stdout


def test_cli_pipe_exits_cleanly_at_end_of_input(ckpt):
    r = run_cli(["--model", str(ckpt), "--device", "cpu", "--max-new-tokens", "4", "--reasoning", "low"], "Hi\n\n")
    assert r.returncode == 0, r.stderr
    assert len(STATS.findall(r.stdout)) == 1


def test_cli_bad_option_is_a_clean_error(ckpt):
    r = run_cli(["--model", str(ckpt), "--device", "cpu", "--top-p", "0"], "Hi\n")
    assert r.returncode == 2
    assert "top_p" in r.stderr and "Traceback" not in r.stderr


def test_cli_without_model_uses_the_demo(tmp_path):
    r = run_cli(["--device", "cpu", "--max-new-tokens", "3"], "Hi\n", env={"XDG_CACHE_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "RANDOM weights" in r.stderr
    assert len(STATS.findall(r.stdout)) == 1
