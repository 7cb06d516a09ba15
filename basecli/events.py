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


@dataclass
class ScoredToken:
    """One token of a given text, teacher-forced: how likely the model found it in its context.

    Backends expose `score(text, *, context=None, alternatives=0, stride=None) -> list[ScoredToken]`.
    """

    token_id: int
    token_text: str
    logprob: float | None  # None for a first token that nothing precedes
    rank: int | None = None  # 1 = it was the model's top choice; None where the backend cannot tell
    alternatives: list[tuple[int, float]] = field(default_factory=list)  # top (id, logprob) at this position
    context: int = 0  # how many tokens preceded it in the window that scored it
