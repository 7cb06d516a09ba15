"""Does the model recite a text it has seen? Give it the start, let it continue, measure the verbatim overlap.

Definitions (tested on a table of synthetic pairs):
- longest run: the longest contiguous sequence shared by the reference continuation and the
  model's continuation, anywhere in either (in tokens, and separately in characters);
- reproduced: the fraction of the reference's tokens that the continuation reproduces in order,
  counting only shared runs of at least MIN_RUN tokens (shorter runs like " of the" occur by chance);
- diverged at: the index of the first reference token the model did not produce in its place,
  with the probability the model gave that reference token there (None when it never diverged).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Sequence

from basecli.errors import UsageError

MIN_RUN = 4

SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)|\n\s*\n")


def longest_run(a: Sequence, b: Sequence) -> int:
    """Length of the longest common contiguous run of a and b (lists or strings)."""
    if not a or not b:
        return 0
    return SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b)).size


def shared_runs(reference: Sequence, continuation: Sequence, min_run: int = MIN_RUN) -> list[tuple[int, int, int]]:
    """In-order shared runs (reference start, continuation start, length) of at least `min_run` items."""
    blocks = SequenceMatcher(None, reference, continuation, autojunk=False).get_matching_blocks()
    return [(b.a, b.b, b.size) for b in blocks if b.size >= min_run]


def first_divergence(reference: Sequence, continuation: Sequence) -> int | None:
    """First index where the continuation stops following the reference (it differs, or it ended); None if never."""
    for i, want in enumerate(reference):
        if i >= len(continuation) or continuation[i] != want:
            return i
    return None


@dataclass
class Overlap:
    reference_tokens: int
    continuation_tokens: int
    longest_run_tokens: int
    longest_run_chars: int
    reproduced: float  # fraction of reference tokens inside shared runs of >= min_run tokens
    diverged_at: int | None  # token index into the reference continuation
    runs: list[tuple[int, int, int]] = field(default_factory=list)  # (reference start, continuation start, length)


def overlap(ref_ids: Sequence[int], cont_ids: Sequence[int], ref_text: str, cont_text: str, min_run: int = MIN_RUN) -> Overlap:
    runs = shared_runs(ref_ids, cont_ids, min_run)
    return Overlap(
        reference_tokens=len(ref_ids),
        continuation_tokens=len(cont_ids),
        longest_run_tokens=longest_run(ref_ids, cont_ids),
        longest_run_chars=longest_run(ref_text, cont_text),
        reproduced=sum(n for _, _, n in runs) / len(ref_ids) if ref_ids else 0.0,
        diverged_at=first_divergence(ref_ids, cont_ids),
        runs=runs,
    )


# --- the experiment ---------------------------------------------------------------------------


def split_prefix(tokenizer, text: str, prefix_tokens: int | None) -> tuple[str, str]:
    """(prefix, rest): the first sentence, or the first N tokens widened to whole characters."""
    if not text.strip():
        raise UsageError("the reference text is empty; give a file with the text to recite")
    if prefix_tokens is None:
        m = SENTENCE_END.search(text)
        # after the full stop; before a paragraph break (the whitespace starts the next token, as in training)
        cut = len(text) if m is None else m.start() if m.group().startswith("\n") else m.end()
        prefix = text[:cut]
        if not text[cut:].strip():
            raise UsageError("the reference is a single sentence, so nothing is left to recite; pass --prefix-tokens N")
        return prefix, text[cut:]
    ids = tokenizer.encode(text)
    if not 1 <= prefix_tokens < len(ids):
        raise UsageError(f"--prefix-tokens must be between 1 and {len(ids) - 1} (the reference is {len(ids)} tokens), got {prefix_tokens}")
    for n in range(prefix_tokens, len(ids)):
        prefix = b"".join(tokenizer.token_bytes(i) for i in ids[:n])
        try:
            decoded = prefix.decode("utf-8")
        except UnicodeDecodeError:  # the cut falls inside a character: take its remaining bytes too
            continue
        if text.startswith(decoded):
            return decoded, text[len(decoded):]
    raise UsageError("could not cut the reference into a prefix and a rest at a character boundary; try another --prefix-tokens")


@dataclass
class Sample:
    text: str
    ids: list[int]
    logprobs: list[float]  # the model's probability of each token it wrote
    finish_reason: str | None
    overlap: Overlap
    reference_logprob_at_divergence: float | None  # log p(reference token) where it diverged
    own_token_at_divergence: int | None  # what the model wrote there instead (an end-of-text id if it stopped)
    own_logprob_at_divergence: float | None  # log p(the token the model wrote instead)


@dataclass
class Recitation:
    prefix: str
    reference: str  # the rest of the text, which the model should reproduce
    reference_ids: list[int]
    reference_logprobs: list[float]  # teacher-forced, given the prefix
    samples: list[Sample]
    truncated: bool  # the reference did not fit the context window and was cut


def recite(backend, text: str, *, prefix_tokens: int | None, params, samples: int = 1, seeds: Sequence[int] | None = None) -> Recitation:
    """Continue the start of `text` as many tokens as the rest has (greedily, or `samples` draws in one batch) and compare."""
    tok = backend.tokenizer
    prefix, rest = split_prefix(tok, text, prefix_tokens)
    # only what fits after the prefix is recited, so only that is tokenized and scored: a 2 MB
    # reference costs what its first window costs (a token is rarely longer than CHARS_PER_TOKEN)
    room = max(1, backend.context_length - len(backend.encode(prefix)))
    head = rest[: room * CHARS_PER_TOKEN]
    ref_ids = tok.encode(head)
    truncated = len(ref_ids) > room or len(head) < len(rest)
    if len(ref_ids) > room:
        ref_ids = ref_ids[:room]
        head = tok.decode(ref_ids)
    rest = head
    _note(f"reciting {len(ref_ids)} tokens" + (f" (the reference was cut to what fits the {backend.context_length}-token "
                                                f"context window)" if truncated else ""), len(ref_ids) >= LONG)
    scored = backend.score(rest, context=prefix) if len(ref_ids) >= 2 else []
    ref_lps = ([s.logprob for s in scored] + [math.nan] * len(ref_ids))[: len(ref_ids)] if scored else [math.nan] * len(ref_ids)
    params = params.with_(max_tokens=max(1, len(ref_ids)))
    rows: dict[int, list] = {i: [] for i in range(samples)}
    shown = _Progress(len(ref_ids) * samples) if len(ref_ids) >= LONG else None
    for ev in backend.stream([prefix] * samples, [params] * samples, seeds=seeds):
        rows[ev.row].append(ev)
        if shown:
            shown.tick()
    if shown:
        shown.close()
    out = []
    # a server may name generated tokens by their text only (negative ids): the reference's token with the same bytes is that token
    by_bytes = None
    for i in range(samples):
        events = rows[i]
        kept = [e for e in events if e.finish_reason != "eos"]
        ids = [e.token_id for e in kept]
        if any(t < 0 for t in ids):
            by_bytes = by_bytes or {tok.token_bytes(t): t for t in dict.fromkeys(ref_ids)}
            ids = [by_bytes.get(tok.token_bytes(t), t) if t < 0 else t for t in ids]
        cont = "".join(e.text for e in events)
        ov = overlap(ref_ids, ids, rest, cont)
        d = ov.diverged_at
        ref_lp = ref_lps[d] if d is not None else None
        own = events[d] if d is not None and d < len(events) else None  # may be the end-of-text token
        out.append(Sample(cont, ids, [e.logprob for e in kept], events[-1].finish_reason if events else None, ov, ref_lp,
                          own.token_id if own else None, own.logprob if own else None))
    return Recitation(prefix, rest, ref_ids, ref_lps, out, truncated)


CHARS_PER_TOKEN = 64
LONG = 256  # tokens to recite from which progress is shown


def _note(line: str, show: bool) -> None:
    if show:
        import sys

        print(f"basecli: {line}", file=sys.stderr, flush=True)


class _Progress:
    """'recited k/N tokens' rewritten in place on a terminal's stderr; nothing in a pipe."""

    def __init__(self, total: int):
        import sys

        self.total, self.done, self.tty = total, 0, sys.stderr.isatty()

    def tick(self) -> None:
        self.done += 1
        if self.tty and (self.done % 16 == 0 or self.done == self.total):
            import sys

            sys.stderr.write(f"\rrecited {self.done}/{self.total} tokens")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            import sys

            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# --- figures over samples, and the JSON shape -------------------------------------------------


def aggregate(samples: Sequence[Sample]) -> dict:
    """Mean, min and max of each figure over the samples; divergence counts only samples that diverged."""
    def stat(xs):
        xs = list(xs)
        return {"mean": sum(xs) / len(xs), "min": min(xs), "max": max(xs)} if xs else {"mean": None, "min": None, "max": None}

    diverged = [s.overlap.diverged_at for s in samples if s.overlap.diverged_at is not None]
    return {
        "samples": len(samples),
        "longest_run_tokens": stat(s.overlap.longest_run_tokens for s in samples),
        "longest_run_chars": stat(s.overlap.longest_run_chars for s in samples),
        "reproduced": stat(s.overlap.reproduced for s in samples),
        "diverged_at": stat(diverged),
        "never_diverged": len(samples) - len(diverged),
    }


def sample_record(tok, rec: Recitation, s: Sample) -> dict:
    text = lambda i: tok.token_bytes(i).decode("utf-8", errors="replace")  # noqa: E731
    ov = s.overlap
    d = ov.diverged_at
    div = None
    if d is not None:
        ref_lp = s.reference_logprob_at_divergence
        div = {"index": d,
               "reference_token": {"id": rec.reference_ids[d], "text": text(rec.reference_ids[d]),
                                   "logprob": None if ref_lp is None or math.isnan(ref_lp) else round(ref_lp, 5)},
               "model_token": None if s.own_token_at_divergence is None else
               {"id": s.own_token_at_divergence, "text": text(s.own_token_at_divergence), "logprob": round(s.own_logprob_at_divergence, 5)}}
    return {"completion": s.text, "finish_reason": s.finish_reason, "reference_tokens": ov.reference_tokens,
            "continuation_tokens": ov.continuation_tokens, "longest_run_tokens": ov.longest_run_tokens,
            "longest_run_chars": ov.longest_run_chars, "reproduced": round(ov.reproduced, 5), "diverged_at": d,
            "divergence": div, "runs": [{"reference": a, "continuation": b, "tokens": n} for a, b, n in ov.runs]}
