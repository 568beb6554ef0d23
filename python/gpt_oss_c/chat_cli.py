"""`gpt-oss-c chat`: an interactive chat REPL over gpt_oss_c.chat.chat().

Each answer streams as it is sampled: the reasoning (analysis channel) first, dimmed on a terminal,
then the answer plainly, then a line with the token count, decode speed and finish reason. Lines
starting with "/" are commands: /reset (forget the conversation), /effort [low|medium|high],
/help, /exit. Without a terminal (stdin or stdout piped) there is no prompt, banner or ANSI code,
lines are read from stdin, and end of input exits with status 0, so scripts and tests can drive it.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TextIO

from .chat import ChatDelta, ChatResult, ToolCall, chat

EFFORTS = ("low", "medium", "high")
COMMANDS = "/reset, /effort low|medium|high, /help, /exit"
_DIM, _RESET = "\x1b[2m", "\x1b[0m"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the chat options to parser. The model options (--model, --device, --max-context) are
    the ones every sub-command shares; cli.py adds them."""
    parser.add_argument("--reasoning", choices=EFFORTS, default="medium", help="reasoning effort (default: medium)")
    parser.add_argument("--system", metavar="TEXT", default=None, help="instructions for the model (a system message)")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=4096, help="per answer (default: 4096)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default: 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None, help="sampling seed, for reproducible answers")


class _Printer:
    """Writes one streamed answer: reasoning and answer as separate blocks, then the stats line."""

    def __init__(self, out: TextIO, color: bool):
        self.out = out
        self.color = color
        self.section: str | None = None  # "reasoning" or "answer"
        self.at_line_start = True

    def _write(self, text: str) -> None:
        if self.color:  # model text must not drive the terminal (escape sequences, carriage returns)
            text = _CONTROL.sub("\ufffd", text)
        if text:
            self.out.write(text)
            self.at_line_start = text.endswith("\n")
            self.out.flush()

    def _enter(self, section: str) -> None:
        if section == self.section:
            return
        self.close_block()
        if section == "reasoning" and self.color:
            self.out.write(_DIM)
        self.section = section

    def close_block(self) -> None:
        if self.section == "reasoning" and self.color:
            self.out.write(_RESET)
        if not self.at_line_start:
            self._write("\n")
        self.section = None

    def note(self, text: str) -> None:
        """A line of our own (not model text), dimmed on a terminal."""
        self.close_block()
        if self.color:
            self.out.write(_DIM)
        self._write(text)
        if self.color:
            self.out.write(_RESET)
        self._write("\n")

    def event(self, ev: ChatDelta | ToolCall) -> None:
        if isinstance(ev, ToolCall):
            self.note(f"[tool call {ev.name}({ev.arguments}) - this chat has no tools to run it]")
        else:
            self._enter("reasoning" if ev.channel == "analysis" else "answer")
            self._write(ev.text)

    def finish(self, r: ChatResult) -> None:
        u = r.usage
        reason = f"malformed output: {r.parse_error}" if r.finish_reason == "malformed" else r.finish_reason
        self.note(
            f"[{u.completion_tokens} tokens (prompt {u.prompt_tokens}), {u.decode_tokens_per_s:.1f} tok/s, "
            f"prefill {u.prefill_s:.2f} s, {reason}]"
        )


class _Session:
    def __init__(self, model, args: argparse.Namespace, out: TextIO, color: bool):
        self.model = model
        self.args = args
        self.effort = args.reasoning
        self.out = out
        self.color = color
        self.history: list[dict] = []
        self.reset()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.args.system}] if self.args.system else []

    def command(self, line: str) -> bool:
        """Runs a /command; returns False when the session should end."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        printer = _Printer(self.out, self.color)
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.reset()
            printer.note("[conversation reset]")
        elif name == "/effort":
            if arg in EFFORTS:
                self.effort = arg
                printer.note(f"[reasoning effort: {arg}]")
            elif not arg:
                printer.note(f"[reasoning effort: {self.effort}; change it with /effort low|medium|high]")
            else:
                printer.note(f"[unknown effort {arg!r}; use low, medium or high]")
        elif name == "/help":
            printer.note(f"[commands: {COMMANDS}]")
        else:
            printer.note(f"[unknown command {name}; commands: {COMMANDS}]")
        return True

    def ask(self, text: str) -> None:
        """One user turn: streams the answer and, unless it fails, adds the turn to the history."""
        messages = self.history + [{"role": "user", "content": text}]
        printer = _Printer(self.out, self.color)
        a = self.args
        try:
            events = chat(
                self.model,
                messages,
                reasoning_effort=self.effort,
                max_new_tokens=a.max_new_tokens,
                temperature=a.temperature,
                top_p=a.top_p,
                top_k=a.top_k,
                min_p=a.min_p,
                seed=a.seed,
                stream=True,
            )
            result = None
            try:
                for ev in events:
                    if isinstance(ev, ChatResult):
                        result = ev
                    else:
                        printer.event(ev)
            except KeyboardInterrupt:
                events.close()
                printer.note("[interrupted; this turn is forgotten]")
                return
        except ValueError as e:  # e.g. the conversation no longer fits the context
            printer.close_block()
            print(f"error: {e} (/reset starts over)", file=sys.stderr)
            return
        printer.finish(result)
        # This chat offers no tools, so a tool call (which no result can answer) stays out of the
        # history; the text of the turn is kept.
        reply = {"role": "assistant", "content": result.content}
        if result.reasoning:
            reply["reasoning"] = result.reasoning
        self.history = messages + [reply]


def _read_line(interactive: bool, prompt: str) -> str | None:
    """The next input line without its newline; None at end of input."""
    if interactive:
        try:
            return input(prompt)
        except EOFError:
            print()
            return None
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\r\n")


def run_chat(args: argparse.Namespace) -> int:
    """Runs the REPL until /exit or end of input; returns the exit status (0, or 130 on Ctrl-C at
    the prompt). args: add_chat_arguments' options plus --model, --device and --max-context. A
    model that cannot be loaded or invalid sampling options raise (cli.main reports them)."""
    import gpt_oss_c

    # Fail before the first prompt rather than on every turn.
    gpt_oss_c.SamplingParams.make(args.temperature, args.top_k, args.top_p, args.min_p, args.seed)
    path = args.model
    if path is None:
        from .cli import demo_model_path  # imported here: cli imports this module

        print(
            "note: no --model given; using a tiny demo model with RANDOM weights, so its answers are "
            "gibberish (and rarely valid harmony). Pass --model DIR for a real gpt-oss checkpoint.",
            file=sys.stderr,
        )
        path = demo_model_path()
    model = gpt_oss_c.load(path, device=args.device, max_context=args.max_context)

    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    color = sys.stdout.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        print(f"gpt-oss-c chat: {path}, reasoning {args.reasoning}. Commands: {COMMANDS}.")
    session = _Session(model, args, sys.stdout, color)
    while True:
        try:
            line = _read_line(interactive, "> ")
        except KeyboardInterrupt:
            print()
            return 130
        if line is None:
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if not session.command(text):
                return 0
            continue
        session.ask(line)
