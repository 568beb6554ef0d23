"""Chat in OpenAI's harmony format, on top of token generation.

gpt-oss only behaves when prompted in harmony (GPT_OSS_FORMAT.md §6). This module turns OpenAI-shaped
chat messages into harmony prompt tokens with the official ``openai-harmony`` renderer, and turns the
sampled completion tokens back into reasoning, answer text and tool calls with harmony's
``StreamableParser``. No harmony text is rendered or parsed by hand here.

Public API:

* :func:`render_chat` -- messages -> prompt token ids ending with ``<|start|>assistant``.
* :func:`chat` -- render, generate until ``<|return|>`` or ``<|call|>``, parse. Returns a
  :class:`ChatResult`, or with ``stream=True`` an iterator of :class:`ChatDelta` /
  :class:`ToolCall` events whose last item is the :class:`ChatResult`.
* :func:`parse_completion` / :class:`CompletionParser` -- the parsing half alone, for token lists.
* :func:`harmony_messages` -- the validated harmony Messages that render_chat renders.

A tool loop::

    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    while True:
        r = model.chat(messages, tools=TOOLS)
        messages.append(r.to_message())
        if r.finish_reason != "tool_calls":
            break
        for call in r.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call.id, "name": call.name,
                             "content": run_tool(call.name, call.arguments)})
    print(r.content)

Streaming::

    for ev in model.chat(messages, stream=True):
        if isinstance(ev, ChatDelta):      # ev.channel: "analysis" | "final" | "commentary" | None
            print(ev.text, end="")
        elif isinstance(ev, ToolCall): ...
        else: result = ev                  # the ChatResult, always last

Messages use the OpenAI chat shape (dicts)::

    {"role": "system" | "developer", "content": str}     -> harmony developer "# Instructions"
    {"role": "user", "content": str}
    {"role": "assistant", "content": str | None, "reasoning": str (optional),
     "tool_calls": [{"id": str, "type": "function",
                     "function": {"name": str, "arguments": str (JSON text)}}] (optional)}
    {"role": "tool", "tool_call_id": str, "name": str, "content": str}   (the tool's result)

``content`` may also be a list of ``{"type": "text", "text": str}`` parts (concatenated). A key whose
value is None counts as absent. System and developer messages must come before all others; their
contents, joined by a blank line, become the harmony developer message's instructions. The harmony
system message carries the model identity, knowledge cutoff, the date and ``Reasoning: <effort>``.

History rule for reasoning (harmony's documented rule, GPT_OSS_FORMAT.md §6.5): the reasoning of an
assistant message is dropped once the conversation holds a final answer at or after it (its turn is
finished), and kept while its turn is still waiting on tool calls. openai-harmony 0.0.8's own
``auto_drop_analysis`` only drops analysis before the *first* final answer, so the policy is applied
here and harmony renders with ``auto_drop_analysis=False``.
"""

from __future__ import annotations

import codecs
import datetime as _dt
import operator
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal, Mapping, Sequence, Union

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    HarmonyEncoding,
    HarmonyEncodingName,
    HarmonyError,
    Message,
    ReasoningEffort,
    RenderConversationConfig,
    Role,
    StreamableParser,
    SystemContent,
    TextContent,
    ToolDescription,
    load_harmony_encoding,
)

from .tokenizer import CALL, END, MESSAGE, N_VOCAB, RETURN, Tokenizer, get_tokenizer

if TYPE_CHECKING:
    from .model import Model

__all__ = [
    "ASSISTANT_STOP_TOKENS",
    "ChatDelta",
    "ChatEvent",
    "ChatResult",
    "CompletionParser",
    "ToolCall",
    "Usage",
    "chat",
    "harmony_encoding",
    "harmony_messages",
    "parse_completion",
    "render_chat",
]

# Sampling stops on these (harmony's stop_tokens_for_assistant_actions). Never on <|end|>: the model
# ends an analysis message with <|end|> and goes on with <|start|>assistant... (§6.6).
ASSISTANT_STOP_TOKENS = (RETURN, CALL)
# Tokens that end a message inside the completion (harmony's stop_tokens()).
_MESSAGE_ENDS = frozenset((RETURN, END, CALL))

# No well-formed header is this long: role, " to=functions." + a function name (OpenAI allows 64
# chars of [A-Za-z0-9_-], a few dozen tokens at worst), "<|channel|>" + channel, and a content type.
# Past it the output is treated as malformed, so that garbage streams as text instead of being held
# back as a header that never ends (random-weight models do this).
MAX_HEADER_TOKENS = 64

ReasoningLevel = Literal["low", "medium", "high"]
FinishReason = Literal["stop", "tool_calls", "length", "malformed"]

_EFFORTS = {"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM, "high": ReasoningEffort.HIGH}
_ROLES = ("system", "developer", "user", "assistant", "tool")
_KEYS = {
    "system": {"role", "content"},
    "developer": {"role", "content"},
    "user": {"role", "content"},
    "assistant": {"role", "content", "reasoning", "tool_calls"},
    "tool": {"role", "content", "tool_call_id", "name"},
}
# OpenAI's rule for function names; they go into harmony headers, which split on whitespace.
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FUNCTIONS_PREFIX = "functions."


# ------------------------------------------------------------------------------------------------
# Results and stream events
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatDelta:
    """A piece of streamed text.

    channel: "analysis" (reasoning), "final" (the answer), "commentary" (a user-visible preamble
    before tool calls), another name if the model used one, or None for text that is not valid
    harmony (malformed output, passed through verbatim with special tokens as their text).
    Joining the texts of the "analysis" deltas gives ChatResult.reasoning; joining all the others
    gives ChatResult.content."""

    channel: str | None
    text: str


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made, emitted once its message is complete.

    name is the harmony recipient without its "functions." prefix; arguments is the message text,
    normally JSON (not validated: the model may produce anything). id is generated here."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict:
        """The OpenAI chat shape: {"id", "type": "function", "function": {"name", "arguments"}}."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class Usage:
    """Token counts and timings of one chat() call.

    prefill_s: seconds from the call to the first completion token (prompt prefill + first step).
    decode_s: seconds from the first to the last completion token. When streaming, this includes
    the time the consumer spends between events. Both are 0.0 for parse_completion()."""

    prompt_tokens: int
    completion_tokens: int
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def decode_tokens_per_s(self) -> float:
        """Completion tokens after the first, per second of decode_s (0.0 when not measured)."""
        n = max(self.completion_tokens - 1, 0)
        return n / self.decode_s if self.decode_s > 0 else 0.0


@dataclass(frozen=True)
class ChatResult:
    """The parsed assistant turn.

    reasoning: the analysis-channel text (chain of thought; not for end users).
    content: the answer: final-channel text, commentary preambles, and for malformed output the
        unparsable text verbatim.
    tool_calls: function calls, in order.
    finish_reason: "stop" (ended by <|return|> or <|call|>), "tool_calls" (as "stop", with tool
        calls to run), "length" (max_new_tokens or the context ran out; a message header cut off by
        it is dropped), or "malformed" (not valid harmony; parse_error says why).
    """

    reasoning: str
    content: str
    tool_calls: list[ToolCall]
    finish_reason: FinishReason
    usage: Usage
    parse_error: str | None = None

    def to_message(self) -> dict:
        """This turn as an OpenAI-shaped assistant message, to append to the history."""
        msg: dict[str, Any] = {"role": "assistant"}
        if self.tool_calls:
            msg["content"] = self.content or None
            msg["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        else:
            msg["content"] = self.content
        if self.reasoning:
            msg["reasoning"] = self.reasoning
        return msg


ChatEvent = Union[ChatDelta, ToolCall, ChatResult]


# ------------------------------------------------------------------------------------------------
# The harmony encoding
# ------------------------------------------------------------------------------------------------

_ENCODINGS: dict[str, HarmonyEncoding] = {}
_ENCODINGS_LOCK = threading.Lock()


def harmony_encoding(tokenizer: Tokenizer | None = None) -> HarmonyEncoding:
    """openai-harmony's HarmonyGptOss encoding, reading the tokenizer's verified vocabulary.

    Harmony reads o200k_base.tiktoken from $TIKTOKEN_ENCODINGS_BASE; the variable is set only while
    loading (then restored) and the encoding is cached per vocabulary directory."""
    tok = tokenizer if tokenizer is not None else get_tokenizer()
    vocab_dir = str(tok.harmony_vocab_dir())
    with _ENCODINGS_LOCK:
        enc = _ENCODINGS.get(vocab_dir)
        if enc is None:
            old = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
            os.environ["TIKTOKEN_ENCODINGS_BASE"] = vocab_dir
            try:
                enc = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
            finally:
                if old is None:
                    del os.environ["TIKTOKEN_ENCODINGS_BASE"]
                else:
                    os.environ["TIKTOKEN_ENCODINGS_BASE"] = old
            _ENCODINGS[vocab_dir] = enc
    return enc


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def _present(msg: Mapping, key: str) -> bool:
    return msg.get(key) is not None


def _text(where: str, content: Any) -> str:
    """A message content: a str, or a list of {"type": "text", "text": str} parts (concatenated)."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(
                    f"{where}.content[{j}] must be {{'type': 'text', 'text': str}} (only text parts are "
                    f"supported), got {part!r}"
                )
            parts.append(part["text"])
        return "".join(parts)
    raise ValueError(f"{where}.content must be a str or a list of text parts, got {type(content).__name__}")


def _history_name(where: str, name: Any) -> str:
    """A function name in the history; it becomes part of a harmony header, so no whitespace."""
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"{where} must be a non-empty str without whitespace, got {name!r}")
    return name


def _tool_calls(where: str, calls: Any) -> list[tuple[str, str, str]]:
    """Validates an assistant message's tool_calls; returns (id, name, arguments) triples."""
    if not isinstance(calls, (list, tuple)) or not calls:
        raise ValueError(f"{where}.tool_calls must be a non-empty list, got {calls!r}")
    out = []
    for j, call in enumerate(calls):
        w = f"{where}.tool_calls[{j}]"
        if not isinstance(call, Mapping):
            raise ValueError(f"{w} must be a dict, got {type(call).__name__}")
        if call.get("type", "function") != "function":
            raise ValueError(f"{w}.type must be 'function', got {call.get('type')!r}")
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise ValueError(f"{w}.id must be a non-empty str, got {call.get('id')!r}")
        fn = call.get("function")
        if not isinstance(fn, Mapping):
            raise ValueError(f"{w}.function must be a dict with 'name' and 'arguments', got {fn!r}")
        name = _history_name(f"{w}.function.name", fn.get("name"))
        args = fn.get("arguments")
        if not isinstance(args, str):
            raise ValueError(f"{w}.function.arguments must be a str of JSON text, got {type(args).__name__}")
        out.append((call["id"], name, args))
    return out


def _tool_descriptions(tools: Any) -> list[ToolDescription]:
    """OpenAI function definitions -> harmony ToolDescriptions, in order."""
    if not isinstance(tools, (list, tuple)):
        raise ValueError(f"tools must be a list of OpenAI function definitions, got {type(tools).__name__}")
    out, seen = [], set()
    for i, tool in enumerate(tools):
        w = f"tools[{i}]"
        if (
            not isinstance(tool, Mapping)
            or tool.get("type") != "function"
            or not isinstance(tool.get("function"), Mapping)
        ):
            raise ValueError(
                f"{w} must be {{'type': 'function', 'function': {{'name', 'description', 'parameters'}}}}, got {tool!r}"
            )
        fn = tool["function"]
        extra = set(fn) - {"name", "description", "parameters", "strict"}
        if extra:
            raise ValueError(
                f"{w}.function has unsupported keys {sorted(extra)}; expected name, description, parameters"
            )
        name = fn.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
            raise ValueError(f"{w}.function.name must be 1-64 characters of A-Z a-z 0-9 _ -, got {name!r}")
        if name in seen:
            raise ValueError(f"{w}: duplicate function name {name!r}")
        seen.add(name)
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise ValueError(f"{w}.function.description must be a str, got {type(desc).__name__}")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, Mapping):
            raise ValueError(f"{w}.function.parameters must be a JSON-schema dict, got {type(params).__name__}")
        out.append(ToolDescription.new(name, desc or "", None if params is None else dict(params)))
    return out


def _date(current_date: Any) -> str:
    if current_date is None:
        return _dt.date.today().isoformat()
    if isinstance(current_date, _dt.datetime):
        return current_date.date().isoformat()
    if isinstance(current_date, _dt.date):
        return current_date.isoformat()
    if isinstance(current_date, str):
        try:
            return _dt.date.fromisoformat(current_date).isoformat()
        except ValueError:
            pass
    raise ValueError(f"current_date must be a datetime.date or a 'YYYY-MM-DD' str, got {current_date!r}")


def _effort(reasoning_effort: Any) -> ReasoningEffort:
    if not isinstance(reasoning_effort, str) or reasoning_effort not in _EFFORTS:
        raise ValueError(f"reasoning_effort must be one of 'low', 'medium', 'high', got {reasoning_effort!r}")
    return _EFFORTS[reasoning_effort]


def _assistant(text: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text)


def harmony_messages(
    messages: Sequence[Mapping],
    reasoning_effort: str = "medium",
    tools: Sequence[Mapping] | None = None,
    current_date: str | _dt.date | None = None,
) -> list[Message]:
    """Validates OpenAI-shaped messages and converts them to harmony Messages (see the module doc).

    Raises ValueError naming the offending message and field."""
    effort = _effort(reasoning_effort)
    date = _date(current_date)
    descriptions = _tool_descriptions(tools) if tools is not None else []
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: give at least one message")

    # Pass 1: validate each message on its own.
    parsed = []  # (role, text or None, reasoning or None, [(call id, name, arguments)])
    for i, msg in enumerate(messages):
        w = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise ValueError(f"{w} must be a dict, got {type(msg).__name__}")
        role = msg.get("role")
        if role not in _ROLES:
            raise ValueError(f"{w} has unknown role {role!r}; expected one of {', '.join(_ROLES)}")
        extra = sorted(k for k in msg if k not in _KEYS[role] and msg[k] is not None)
        if extra:
            raise ValueError(f"{w} ({role}) has unsupported keys {extra}; expected {sorted(_KEYS[role])}")
        calls = _tool_calls(w, msg["tool_calls"]) if role == "assistant" and _present(msg, "tool_calls") else []
        if _present(msg, "content"):
            text = _text(w, msg["content"])
        elif role == "assistant" and calls:
            text = None
        else:
            need = "content (or tool_calls)" if role == "assistant" else "content"
            raise ValueError(f"{w} ({role}) is missing {need}")
        reasoning = msg.get("reasoning")
        if reasoning is not None and not isinstance(reasoning, str):
            raise ValueError(f"{w}.reasoning must be a str, got {type(reasoning).__name__}")
        if role == "tool":
            if not _present(msg, "name"):
                raise ValueError(f"{w} (tool) is missing name (the function that produced this result)")
            _history_name(f"{w}.name", msg["name"])
            if not isinstance(msg.get("tool_call_id"), str) or not msg["tool_call_id"]:
                raise ValueError(f"{w} (tool) is missing tool_call_id (the id of the call it answers)")
        parsed.append((role, text, reasoning, calls))

    # Pass 2: conversation structure. System/developer first; every tool call is answered by tool
    # messages right after it (as the OpenAI API requires) and nothing answers an unknown call.
    instructions = []
    body_start = 0
    while body_start < len(parsed) and parsed[body_start][0] in ("system", "developer"):
        instructions.append(parsed[body_start][1])
        body_start += 1
    pending: dict[str, str] = {}  # call id -> function name, for calls not answered yet
    last_final = -1
    for i in range(body_start, len(parsed)):
        role, text, _, calls = parsed[i]
        w = f"messages[{i}]"
        if role in ("system", "developer"):
            raise ValueError(f"{w}: {role} messages must come before all user, assistant and tool messages")
        if role == "tool":
            call_id, name = messages[i]["tool_call_id"], messages[i]["name"]
            if call_id not in pending:
                raise ValueError(
                    f"{w} answers tool_call_id {call_id!r}, which is no unanswered tool call of the "
                    "assistant message before it"
                )
            if pending[call_id] != name:
                raise ValueError(f"{w} has name {name!r} but tool call {call_id!r} called {pending[call_id]!r}")
            del pending[call_id]
            continue
        if pending:
            raise ValueError(
                f"{w}: tool calls {sorted(pending)} have no tool result (add role 'tool' messages after the call)"
            )
        if role == "assistant":
            for call_id, name, _ in calls:
                if call_id in pending:
                    raise ValueError(f"{w}: duplicate tool call id {call_id!r}")
                pending[call_id] = name
            if not calls:
                last_final = i
    if pending:
        raise ValueError(f"tool calls {sorted(pending)} have no tool result (add role 'tool' messages after the call)")

    # Pass 3: build the harmony conversation.
    system = SystemContent.new().with_reasoning_effort(effort).with_conversation_start_date(date)
    out = [Message.from_role_and_content(Role.SYSTEM, system)]
    joined = "\n\n".join(instructions)
    if joined or descriptions:
        dev = DeveloperContent.new()
        if joined:
            dev = dev.with_instructions(joined)
        if descriptions:
            dev = dev.with_function_tools(descriptions)
        out.append(Message.from_role_and_content(Role.DEVELOPER, dev))
    for i in range(body_start, len(parsed)):
        role, text, reasoning, calls = parsed[i]
        if role == "user":
            out.append(Message.from_role_and_content(Role.USER, text))
        elif role == "tool":
            author = Author.new(Role.TOOL, _FUNCTIONS_PREFIX + messages[i]["name"])
            out.append(
                Message.from_author_and_content(author, text).with_channel("commentary").with_recipient("assistant")
            )
        else:
            if reasoning and i > last_final:
                out.append(_assistant(reasoning).with_channel("analysis"))
            if calls:
                if text:
                    out.append(_assistant(text).with_channel("commentary"))
                for _, name, args in calls:
                    out.append(
                        _assistant(args)
                        .with_channel("commentary")
                        .with_recipient(_FUNCTIONS_PREFIX + name)
                        .with_content_type("<|constrain|>json")
                    )
            else:
                out.append(_assistant(text).with_channel("final"))
    return out


def render_chat(
    messages: Sequence[Mapping],
    reasoning_effort: str = "medium",
    tools: Sequence[Mapping] | None = None,
    current_date: str | _dt.date | None = None,
    tokenizer: Tokenizer | None = None,
) -> list[int]:
    """The harmony prompt for the assistant's next turn: token ids ending with <|start|>assistant.

    messages: OpenAI-shaped chat messages (see the module doc). reasoning_effort: "low", "medium" or
    "high". tools: OpenAI function definitions ({"type": "function", "function": {"name",
    "description", "parameters"}}), rendered into the developer message's functions namespace.
    current_date: "YYYY-MM-DD" or a date; today when None. tokenizer: whose vocabulary harmony
    uses (the default resolver's when None). Raises ValueError for invalid input."""
    msgs = harmony_messages(messages, reasoning_effort, tools, current_date)
    enc = harmony_encoding(tokenizer)
    return list(
        enc.render_conversation_for_completion(
            Conversation.from_messages(msgs), Role.ASSISTANT, RenderConversationConfig(auto_drop_analysis=False)
        )
    )


# ------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------


@dataclass
class _Open:
    """The message whose content is streaming: its channel, recipient and the text emitted so far."""

    channel: str | None
    recipient: str | None
    streamed: str = ""


class CompletionParser:
    """Completion tokens -> chat events, with harmony's StreamableParser (role assistant, strict).

    Feed every sampled token except a final stop token to feed(); then call finish() with that stop
    token (None when generation ran out of tokens). Each returns the events the tokens completed.
    Malformed output never raises: at the first token harmony rejects (or a header past
    MAX_HEADER_TOKENS, or a message not from the assistant), the parser switches to passing the
    text through verbatim (ChatDelta channel None), starting with the tokens of the broken message.
    """

    def __init__(self, tokenizer: Tokenizer | None = None):
        self._tok = tokenizer if tokenizer is not None else get_tokenizer()
        self._parser = StreamableParser(harmony_encoding(self._tok), Role.ASSISTANT, strict=True)
        self._pending: list[int] = []  # tokens since the last complete message (header included)
        self._open: _Open | None = None
        self._n_messages = 0
        self._raw: Any = None  # an incremental UTF-8 decoder once the output is malformed
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._tool_calls: list[ToolCall] = []
        self.error: str | None = None
        self._n_tokens = 0
        self._stop_token: int | None = None
        self.finished = False

    def feed(self, token: int) -> list[ChatDelta | ToolCall]:
        """Consumes one completion token. Raises ValueError only for an id outside the vocabulary."""
        if self.finished:
            raise ValueError("CompletionParser.feed() after finish()")
        token = self._check(token)
        self._n_tokens += 1
        if self.error is not None:
            return self._raw_text([token])
        self._pending.append(token)
        try:
            self._parser.process(token)
        except HarmonyError as e:
            return self._fail(f"harmony: {e}")
        if self._open is None:
            if token == MESSAGE:  # the header just parsed; its content starts
                role = self._parser.current_role
                if role != Role.ASSISTANT:
                    who = role.value if role is not None else "no role"
                    return self._fail(f"a message from {who} inside the assistant's completion")
                self._open = _Open(self._parser.current_channel, self._parser.current_recipient)
            elif len(self._pending) > MAX_HEADER_TOKENS:
                return self._fail(f"a message header longer than {MAX_HEADER_TOKENS} tokens")
            return []
        events: list[ChatDelta | ToolCall] = []
        delta = self._parser.last_content_delta
        if delta and not self._is_call(self._open):
            events += self._emit(delta)
        if token in _MESSAGE_ENDS:
            events += self._close()
        return events

    def finish(self, stop_token: int | None = None) -> list[ChatDelta | ToolCall]:
        """Ends the completion. stop_token: the <|return|>/<|call|> that ended it (not fed), or None
        if generation stopped for length. A message cut off in its content is kept; one cut off in
        its header is dropped (length) or makes the output malformed (a stop token). A stop token
        between messages simply ends the completion."""
        if self.finished:
            raise ValueError("CompletionParser.finish() called twice")
        events: list[ChatDelta | ToolCall] = []
        if stop_token is not None:
            stop_token = self._check(stop_token)
        if self.error is None and self._open is not None and stop_token is not None:
            events += self.feed(stop_token)  # ends the open message (and counts the token)
        else:
            self._n_tokens += stop_token is not None
            if self.error is None and self._open is not None:
                try:
                    self._parser.process_eos()  # emits the message cut off by length
                    events += self._close()
                except HarmonyError as e:  # not expected in content; stay total anyway
                    events += self._fail(f"harmony: {e}")
            elif self.error is None and self._pending and stop_token is not None:
                events += self._fail(f"the completion stopped (token {stop_token}) inside a message header")
        if self._raw is not None:
            tail = self._raw.decode(b"", final=True)
            if tail:
                self._content.append(tail)
                events.append(ChatDelta(None, tail))
        self._stop_token = stop_token
        self.finished = True
        return events

    def result(self, prompt_tokens: int = 0, prefill_s: float = 0.0, decode_s: float = 0.0) -> ChatResult:
        """The ChatResult, after finish()."""
        if not self.finished:
            raise ValueError("CompletionParser.result() before finish()")
        if self.error is not None:
            reason: FinishReason = "malformed"
        elif self._stop_token is None:
            reason = "length"
        elif self._tool_calls:
            reason = "tool_calls"
        else:
            reason = "stop"
        return ChatResult(
            reasoning="".join(self._reasoning),
            content="".join(self._content),
            tool_calls=list(self._tool_calls),
            finish_reason=reason,
            usage=Usage(prompt_tokens, self._n_tokens, prefill_s, decode_s),
            parse_error=self.error,
        )

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _check(token: Any) -> int:
        try:
            t = operator.index(token)  # accepts numpy integers
        except TypeError:
            t = -1
        if isinstance(token, bool) or not 0 <= t < N_VOCAB:
            raise ValueError(f"token id {token!r} is not an int in [0, {N_VOCAB})")
        return t

    @staticmethod
    def _is_call(m: _Open) -> bool:
        return m.recipient not in (None, "all")

    def _emit(self, text: str) -> list[ChatDelta]:
        assert self._open is not None
        self._open.streamed += text
        (self._reasoning if self._open.channel == "analysis" else self._content).append(text)
        return [ChatDelta(self._open.channel, text)]

    def _close(self) -> list[ChatDelta | ToolCall]:
        """The open message ended: emit its tool call, or the text harmony had not yet released (it
        holds back a partial UTF-8 character, which becomes U+FFFD at the end)."""
        assert self._open is not None
        messages = self._parser.messages
        events: list[ChatDelta | ToolCall] = []
        if len(messages) > self._n_messages:
            msg = messages[-1]
            text = "".join(c.text for c in msg.content if isinstance(c, TextContent))
            if self._is_call(self._open):
                name = self._open.recipient or ""
                if name.startswith(_FUNCTIONS_PREFIX):
                    name = name[len(_FUNCTIONS_PREFIX) :]
                call = ToolCall(f"call_{uuid.uuid4().hex[:24]}", name, text)
                self._tool_calls.append(call)
                events.append(call)
            elif text.startswith(self._open.streamed) and len(text) > len(self._open.streamed):
                events += self._emit(text[len(self._open.streamed) :])
        self._n_messages = len(messages)
        self._open = None
        self._pending = []
        return events

    def _fail(self, reason: str) -> list[ChatDelta]:
        """Switches to verbatim mode, starting with the tokens of the message that broke."""
        self.error = reason
        self._open = None
        self._raw = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tokens, self._pending = self._pending, []
        return self._raw_text(tokens)

    def _raw_text(self, tokens: list[int]) -> list[ChatDelta]:
        text = self._raw.decode(self._tok.decode_bytes(tokens))
        if not text:
            return []
        self._content.append(text)
        return [ChatDelta(None, text)]


def parse_completion(
    token_ids: Iterable[int], tokenizer: Tokenizer | None = None, prompt_tokens: int = 0
) -> ChatResult:
    """Parses a whole completion (the sampled tokens only, never the prompt). If the last token is
    <|return|> or <|call|> it is the stop token; otherwise generation is taken to have stopped for
    length. Never raises for malformed output; raises ValueError for ids outside the vocabulary."""
    ids = list(token_ids)
    stop = ids[-1] if ids and ids[-1] in ASSISTANT_STOP_TOKENS else None
    parser = CompletionParser(tokenizer)
    for t in ids[: len(ids) - (stop is not None)]:
        parser.feed(t)
    parser.finish(stop)
    return parser.result(prompt_tokens)


# ------------------------------------------------------------------------------------------------
# Chat
# ------------------------------------------------------------------------------------------------


def chat(
    model: "Model",
    messages: Sequence[Mapping],
    reasoning_effort: str = "medium",
    tools: Sequence[Mapping] | None = None,
    current_date: str | _dt.date | None = None,
    max_new_tokens: int = 4096,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    seed: int | None = None,
    stream: bool = False,
) -> ChatResult | Iterator[ChatEvent]:
    """Generates the assistant's next turn for an OpenAI-shaped conversation.

    The prompt is render_chat(messages, reasoning_effort, tools, current_date, model.tokenizer);
    sampling (see Model.generate_ids) stops on <|return|> or <|call|>, after max_new_tokens, or at
    the end of the context. Returns a ChatResult; with stream=True, an iterator of ChatDelta (text
    as it is sampled, tagged with its channel) and ToolCall (as each call completes) events whose
    last item is the ChatResult. Closing the iterator early stops generation.

    Invalid messages or sampling arguments, and a prompt longer than the model's context, raise
    ValueError at the call, also when streaming. Malformed model output never raises
    (finish_reason "malformed")."""
    prompt = render_chat(messages, reasoning_effort, tools, current_date, model.tokenizer)
    # generate_ids validates its arguments when called; generation itself starts on the first next().
    tokens = model.generate_ids(
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        seed=seed,
        stop_token_ids=ASSISTANT_STOP_TOKENS,
    )
    events = _chat_events(model.tokenizer, len(prompt), tokens)
    if stream:
        return events
    result = None
    for result in events:
        pass
    assert isinstance(result, ChatResult)
    return result


def _chat_events(tokenizer: Tokenizer, prompt_tokens: int, tokens: Iterator[tuple[int, float]]) -> Iterator[ChatEvent]:
    parser = CompletionParser(tokenizer)
    t0 = time.perf_counter()
    t_first = t_last = None
    stop = None
    try:
        for token, _logprob in tokens:
            token = int(token)
            t_last = time.perf_counter()
            if t_first is None:
                t_first = t_last
            if token in ASSISTANT_STOP_TOKENS:
                stop = token
                break
            yield from parser.feed(token)
    finally:
        close = getattr(tokens, "close", None)
        if close is not None:
            close()  # frees the model's sequence slot when the consumer stops early
    yield from parser.finish(stop)
    prefill = (t_first - t0) if t_first is not None else 0.0
    decode = (t_last - t_first) if t_first is not None else 0.0
    yield parser.result(prompt_tokens, prefill, decode)
