"""The JSON output: the completion record that complete, resample, sweep and fewshot print (one shape, documented
in docs/json.md; score, recite, info and bench build their own), and the one writer every --json goes through."""

from __future__ import annotations

import json
import sys
import time
from typing import Iterable


def write_json(*records) -> None:
    """Each record as one line of JSON on stdout, text as UTF-8 rather than \\u escapes."""
    sys.stdout.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


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


def token_record(tokenizer, ev) -> dict:
    return {
        "id": ev.token_id,
        "text": ev.token_text,
        "logprob": round(ev.logprob, 5),
        "alternatives": [
            {"id": i, "text": tokenizer.token_bytes(i).decode("utf-8", errors="replace"), "logprob": round(lp, 5)}
            for i, lp in ev.alternatives
        ],
    }


def completion_record(*, model: str, prompt: str, events: Iterable, params, tokenizer, timings: dict | None = None, **extra) -> dict:
    """{model, prompt, completion, finish_reason, tokens, params, timings} plus command-specific fields."""
    events = list(events)
    tokens = [token_record(tokenizer, ev) for ev in events if ev.finish_reason != "eos"]
    record = {
        "model": model,
        "prompt": prompt,
        "completion": "".join(ev.text for ev in events),
        "finish_reason": events[-1].finish_reason if events else None,
        "tokens": tokens,
        "params": params.to_dict() if hasattr(params, "to_dict") else params,
        "timings": timings or {},
    }
    record.update(extra)
    return record
