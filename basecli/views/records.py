"""The JSON output: the completion record that complete, resample, sweep and fewshot print (one shape, documented
in docs/json.md; score, recite, info and bench build their own), and the one writer every --json goes through."""

from __future__ import annotations

import json
import sys
import time
from typing import Iterable


def write_json(*records) -> None:
    """Each record as one line of strict JSON on stdout (NaN and infinities as null), text as UTF-8
    rather than \\u escapes."""
    sys.stdout.write("".join(json.dumps(finite(r), ensure_ascii=False, allow_nan=False) + "\n" for r in records))


class Timer:
    """Wall-clock figures of one generation: load, time to first token, decode speed."""

    def __init__(self, load_s: float | None = None):
        self.load_s = load_s
        self.start = time.perf_counter()
        self.first: float | None = None
        self.tokens = 0

    def tick(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        self.tokens += 1

    def timed(self, events):
        """The events, each counted as it arrives."""
        for ev in events:
            self.tick()
            yield ev

    def as_dict(self) -> dict:
        end = time.perf_counter()
        first = self.first or end
        decode_s = end - first
        out = {
            "load_s": round(self.load_s, 3) if self.load_s is not None else None,
            "first_token_s": round(first - self.start, 3),
            "total_s": round(end - self.start, 3),
            "tokens": self.tokens,
            "decode_tokens_per_s": round((self.tokens - 1) / decode_s, 2) if self.tokens > 1 and decode_s > 0 else None,
        }
        return out


def gather(events) -> list:
    """The events as a list; Ctrl-C ends the list, not the command: the last event is marked
    finish_reason "interrupted" and main() exits 130 once the records are printed."""
    from basecli.errors import interrupted

    got: list = []
    try:
        for ev in events:
            got.append(ev)
    except KeyboardInterrupt:
        interrupted()
        last = {}
        for ev in got:
            last[ev.row] = ev
        for ev in last.values():
            if ev.finish_reason is None:
                ev.finish_reason = "interrupted"
    return got


def finite(obj):
    """`obj` with every NaN and infinity replaced by None: what JSON can carry (json.dumps would write NaN)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def number(x: float | None, digits: int = 5) -> float | None:
    """A float for JSON: rounded; NaN and infinities (not JSON) become null."""
    if x is None or x != x or x in (float("inf"), float("-inf")):
        return None
    return round(x, digits)


def token_record(tokenizer, ev) -> dict:
    return {
        "id": ev.token_id,
        "text": ev.token_text,
        "logprob": number(ev.logprob),
        "alternatives": [
            {"id": i, "text": tokenizer.token_bytes(i).decode("utf-8", errors="replace"), "logprob": number(lp)}
            for i, lp in ev.alternatives
        ],
    }


def _interrupted() -> str:
    from basecli.errors import was_interrupted

    return "interrupted" if was_interrupted() else ""


def completion_record(*, model: str, prompt: str, events: Iterable, params, tokenizer, timings: dict | None = None, **extra) -> dict:
    """{model, prompt, completion, finish_reason, tokens, params, timings} plus command-specific fields."""
    events = list(events)
    tokens = [token_record(tokenizer, ev) for ev in events if ev.finish_reason != "eos"]
    record = {
        "model": model,
        "prompt": prompt,
        "completion": "".join(ev.text for ev in events),
        "finish_reason": (events[-1].finish_reason if events else None) or (_interrupted() or None),
        "tokens": tokens,
        "params": params.to_dict() if hasattr(params, "to_dict") else params,
        "timings": timings or {},
    }
    record.update(extra)
    return record
