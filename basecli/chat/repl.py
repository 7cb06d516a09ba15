"""The interactive chat loop: prompt_toolkit input (history, multi-line), streamed answers, slash commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from basecli.config import home
from basecli.errors import BasecliError, UsageError

HELP = """\
Enter sends; Alt-Enter (or Esc then Enter) starts a new line; a line ending in \\ continues.
Ctrl-C stops an answer (or clears the line); Ctrl-D leaves.
  /temp T      temperature (0 = greedy)        /top-k K   keep the K most likely tokens (0 = off)
  /top-p P     nucleus sampling (1 = off)      /max N     longest answer, in tokens
  /seed N      fixed randomness (/seed off)    /retry     resample the last answer
  /undo        drop the last turn              /reset     drop all turns (the preamble stays)
  /show        the raw text the model sees     /save FILE write the conversation as a template
  /help        this list                       /quit      leave"""

SETTINGS = {  # slash command -> (SamplingParams field, parser)
    "/temp": ("temperature", float),
    "/top-k": ("top_k", int),
    "/top-p": ("top_p", float),
    "/max": ("max_tokens", int),
    "/seed": ("seed", lambda s: None if s in ("off", "none", "random") else int(s)),
}


def history_path() -> Path:
    return home() / "chat_history"


def make_session(input=None, output=None):
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings

    from basecli.chat.transcripts import private_file

    private_file(history_path())  # what was typed is the user's alone: mode 600 before the first line
    keys = KeyBindings()

    @keys.add("enter")
    def _(event):
        buf = event.current_buffer
        if buf.text.endswith("\\"):  # a trailing backslash continues the message on the next line
            buf.delete_before_cursor(1)
            buf.insert_text("\n")
        else:
            buf.validate_and_handle()

    @keys.add("escape", "enter")
    def _(event):
        event.current_buffer.insert_text("\n")

    return PromptSession(history=FileHistory(str(history_path())), key_bindings=keys, multiline=True,
                         input=input, output=output, prompt_continuation=lambda width, n, soft: "." * (width - 1) + " ")


class Repl:
    def __init__(self, chat, *, session=None, out=None, human: str = "Human", assistant: str = "Assistant"):
        self.chat = chat
        self.session = session or make_session()
        self.out = out or sys.stdout
        self.human, self.assistant = human, assistant
        self.running = True
        # colour only on a real terminal, and never with NO_COLOR (https://no-color.org)
        self.color = out is None and sys.stdout.isatty() and not os.environ.get("NO_COLOR")

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def run(self) -> None:
        from prompt_toolkit.formatted_text import ANSI

        self.say(self.paint(f"Chatting with {self.chat.backend.name} ({len(self.chat.turns)} earlier turns). "
                            "/help lists commands; Ctrl-D leaves.", "2"))
        while self.running:
            try:
                line = self.session.prompt(ANSI(self.paint(f"{self.human}:", "1;32") + " "))
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            self.handle(line)

    def handle(self, line: str) -> None:
        text = line.strip()
        if not text:
            self.say("(empty message; type something, or /help)")
            return
        try:
            if text.startswith("/"):
                self.command(text)
            else:
                self.chat.fit(text)  # notes about dropped turns come before the answer, not inside it
                self.answer(lambda on_text: self.chat.ask(text, on_text))
        except BasecliError as e:  # bad values and full context windows are messages here, never an exit
            self.say(self.paint(f"error: {e}", "31"))
        except OSError as e:  # /save to a missing folder, a directory, a read-only file
            self.say(self.paint(f"error: cannot write {e.filename or 'the file'}: {e.strerror or e}", "31"))

    def answer(self, call) -> None:
        """Stream an answer after the assistant label; a note (interrupted) gets its own line."""
        self.out.write(self.paint(f"{self.assistant}:", "1;36") + " ")
        self.out.flush()
        self.line_open = True

        def on_text(piece: str) -> None:
            self.out.write(piece)
            self.out.flush()

        try:
            call(on_text)
        finally:
            if self.line_open:
                self.say()
            self.line_open = False

    def note(self, text: str) -> None:
        if getattr(self, "line_open", False):
            self.say()
            self.line_open = False
        self.say(self.paint(text, "2"))

    def command(self, text: str) -> None:
        name, _, arg = text.partition(" ")
        arg = arg.strip()
        if name in SETTINGS:
            field, parse = SETTINGS[name]
            if not arg:
                self.say(f"{name} is {getattr(self.chat.params, field)}")
                return
            try:
                value = parse(arg)
            except (ValueError, OverflowError):
                raise UsageError(f"{name} needs a number, got {arg!r}") from None
            self.chat.params = self.chat.params.with_(**{field: value})  # SamplingParams validates the range
            self.say(f"{field.replace('_', '-')} = {value}")
        elif name == "/retry":
            self.answer(self.chat.retry)
        elif name == "/undo":
            user, _ = self.chat.undo()
            self.say(f"(dropped the last turn: {user[:60]!r})")
        elif name == "/reset":
            self.chat.reset()
            self.say("(conversation cleared; the preamble stays)")
        elif name == "/show":
            raw = self.chat.prompt()
            self.say(raw.rstrip("\n"))
            self.say(self.paint(f"--- {self.chat.count(raw)} / {self.chat.backend.context_length} tokens of context window", "2"))
        elif name == "/save":
            if not arg:
                raise UsageError("/save needs a file name: /save chat.txt")
            target = Path(arg).expanduser()
            if target.is_dir():
                raise UsageError(f"/save {arg}: that is a directory; give a file name, e.g. /save {target / 'chat.txt'}")
            target.write_text(save_text(self.chat), encoding="utf-8")
            self.say(f"(saved to {arg}; `basecli chat {arg}` continues from it)")
        elif name == "/help":
            self.say(HELP)
        elif name in ("/quit", "/exit"):
            self.running = False
        else:
            self.say(f"unknown command {name}; /help lists them")


def save_text(chat) -> str:
    """The conversation as a chat template of its own: the original front matter settings, then the text."""
    from basecli.text.templates import LIST_KEYS

    lines = ["---"]
    for key, value in chat.template.settings.items():
        for v in (value if key in LIST_KEYS else [value]):
            lines.append(f"{key}: " + '"' + str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') + '"')
    lines.append("---")
    return "\n".join(lines) + "\n" + chat.prompt()
