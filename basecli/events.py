"""What backends yield, without torch: the local engine and the remote client produce the same objects."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Event:
    row: int  # which prompt/sample of the batch
    step: int  # 0 for the first generated token
    token_id: int
    token_text: str  # this token alone (may be a partial UTF-8 character, shown with U+FFFD)
    text: str  # new text that is safe to print now: whole characters, stop strings held back
    logprob: float  # log p(token) under the model's own distribution, before any processor
    alternatives: list[tuple[int, float]] = field(default_factory=list)  # top (id, logprob), same distribution
    finish_reason: str | None = None  # "stop", "eos" or "length" on a row's last event
    entropy: float | None = None  # nats, of the distribution actually sampled from (when asked)
