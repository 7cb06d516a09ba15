"""A chat with a base model: a conversation-shaped prompt that grows by one Human/Assistant turn at a time.

The model continues after the assistant label and stops where it starts the human's next
turn. Shared by the REPL and the non-interactive modes of `basecli chat`.
"""

from __future__ import annotations

from typing import Callable

from basecli.config import SamplingParams, fresh_seed
from basecli.errors import UsageError
from basecli.text.templates import Template, chat_prompt, chat_stops


class Chat:
    def __init__(self, backend, template: Template, params: SamplingParams, transcript=None,
                 turns: list[tuple[str, str]] | None = None, notify: Callable[[str], None] = print):
        self.backend = backend
        self.template = template
        self.params = params.with_(stop=tuple(dict.fromkeys(chat_stops(template) + tuple(params.stop))))
        self.turns: list[tuple[str, str]] = list(turns or [])
        self.transcript = transcript
        self.notify = notify  # where "dropped 2 turns" and similar notes go
        self.last_seed: int | None = None
        self.retries = 0  # of the last answer: a fixed seed is shifted by this, so /retry really resamples

    # --- the text the model sees ---------------------------------------------------------

    def prompt(self, message: str | None = None) -> str:
        return chat_prompt(self.template, self.turns, message)

    def count(self, text: str) -> int:
        tok = self.backend.tokenizer
        return len(tok.prefix_ids) + len(tok.encode(text))

    def fit(self, message: str) -> str:
        """The prompt for `message`, dropping the oldest turns (never the preamble) until the answer has room."""
        room = self.backend.context_length - self.params.max_tokens
        dropped = 0
        while self.count(self.prompt(message)) > room and self.turns:
            self.turns.pop(0)
            dropped += 1
        if dropped:
            self.notify(f"(the conversation outgrew the {self.backend.context_length}-token context window: "
                        f"dropped the oldest {dropped} turn{'s' if dropped > 1 else ''}; the preamble stays)")
        text = self.prompt(message)
        if self.count(text) > room:
            raise UsageError(f"the preamble and this message take {self.count(text)} tokens, more than the "
                             f"{self.backend.context_length}-token context window leaves with {self.params.max_tokens} "
                             f"for the answer; shorten the message or lower --max-tokens")
        return text

    # --- turns ---------------------------------------------------------------------------

    def ask(self, message: str, on_text: Callable[[str], None] | None = None, _retries: int = 0) -> str:
        """Answer `message`, streaming pieces to on_text; the turn is kept (and saved) even if interrupted."""
        message = message.strip()
        if not message:
            raise UsageError("empty message: type something to say to the model")
        text = self.fit(message)
        self.retries = _retries
        self._save({"type": "user", "text": message})
        answer, finish = self._generate(text, on_text)
        self.turns.append((message, answer))
        self._save({"type": "assistant", "text": answer, "finish_reason": finish, "seed": self.last_seed})
        return answer

    def retry(self, on_text: Callable[[str], None] | None = None) -> str:
        if not self.turns:
            raise UsageError("nothing to retry yet")
        message, _ = self.turns.pop()
        self._save({"type": "undo"})
        retries = self.retries + 1
        answer = self.ask(message, on_text, _retries=retries)
        return answer

    def undo(self) -> tuple[str, str]:
        if not self.turns:
            raise UsageError("nothing to undo")
        self._save({"type": "undo"})
        return self.turns.pop()

    def reset(self) -> None:
        self.turns.clear()
        self._save({"type": "reset"})

    def _generate(self, text: str, on_text) -> tuple[str, str]:
        # a fixed /seed gives every answer the same randomness; otherwise a fresh recorded seed per answer
        seed = self.params.seed + self.retries if self.params.seed is not None else fresh_seed()
        self.last_seed = seed
        pieces: list[str] = []
        finish = "interrupted"
        started = False
        try:
            for ev in self.backend.stream([text], [self.params], seeds=[seed]):
                piece = ev.text
                if not started:  # the answer's leading space belongs to the "Assistant:" seam, not the answer
                    piece = piece.lstrip()
                    started = bool(piece)
                if piece:
                    pieces.append(piece)
                    if on_text:
                        on_text(piece)
                if ev.finish_reason:
                    finish = ev.finish_reason
        except KeyboardInterrupt:
            pieces.append("")
            self.notify("(interrupted; the partial answer is kept: /retry resamples it, /undo drops it)")
        return "".join(pieces).rstrip(), finish

    def _save(self, record: dict) -> None:
        if self.transcript is not None:
            self.transcript.write(record)
