"""Terminal view of `basecli recite`: the continuation with verbatim runs highlighted, and the overlap figures."""

from __future__ import annotations

import math
import sys

from basecli.views.facts import grid, pieces, print_facts

MATCH = "bold green"


def _text(tok, token_id: int | None) -> str:
    if token_id is None:
        return "-"
    if token_id in tok.eos_ids:
        return "(end of text)"
    return repr(tok.token_bytes(token_id).decode("utf-8", errors="replace"))


def _p(logprob: float) -> str:
    p = math.exp(logprob)
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def divergence(tok, rec, sample) -> str:
    d = sample.overlap.diverged_at
    if d is None:
        return "never: the continuation is the reference, token for token"
    ref_id = rec.reference_ids[d]
    ref_lp = sample.reference_logprob_at_divergence
    ref_p = f" (p={_p(ref_lp)})" if ref_lp is not None and not math.isnan(ref_lp) else ""
    own = ""
    if sample.own_token_at_divergence is not None:
        own = f"; the model wrote {_text(tok, sample.own_token_at_divergence)} (p={_p(sample.own_logprob_at_divergence)})"
    return f"token {d}: the reference has {_text(tok, ref_id)}{ref_p}{own}"


def continuation(tok, rec, sample, label: str | None = None) -> None:
    """Prefix dimmed, then the continuation; tokens inside verbatim runs in green (terminal), plain text in a pipe."""
    if not sys.stdout.isatty():
        sys.stdout.write((f"{label}\n" if label else "") + sample.text + "\n")
        return
    from basecli.views.render import console

    con = console()
    if label:
        con.print(label, style="bold")
    con.print(rec.prefix, style="dim", end="", markup=False)
    inside = set()
    for _, start, n in sample.overlap.runs:
        inside.update(range(start, start + n))
    for i, piece in enumerate(pieces(tok.token_bytes(t) for t in sample.ids)):
        con.print(piece, style=MATCH if i in inside else None, end="", markup=False)
    con.print()


def figures(tok, rec, sample, min_run: int) -> None:
    ov = sample.overlap
    print_facts("recitation", [
        ("prefix", f"{len(tok.encode(rec.prefix))} tokens: {rec.prefix!r}" if len(rec.prefix) < 120 else f"{len(rec.prefix)} characters"),
        ("reference continues", f"{ov.reference_tokens} tokens" + (" (cut to fit the context window)" if rec.truncated else "")),
        ("model wrote", f"{ov.continuation_tokens} tokens" + (" before ending the text" if sample.finish_reason == "eos" else "")),
        ("longest verbatim run", f"{ov.longest_run_tokens} tokens, {ov.longest_run_chars} characters"),
        ("reproduced", f"{ov.reproduced:.1%} of the reference (in-order runs of >= {min_run} tokens)"),
        ("first divergence", divergence(tok, rec, sample)),
    ])


def sample_table(tok, rec) -> None:
    rows = []
    for i, s in enumerate(rec.samples):
        ov = s.overlap
        ref_lp = s.reference_logprob_at_divergence
        rows.append([str(i), str(ov.longest_run_tokens), str(ov.longest_run_chars), f"{ov.reproduced:.1%}",
                     "-" if ov.diverged_at is None else str(ov.diverged_at),
                     "-" if ref_lp is None or math.isnan(ref_lp) else _p(ref_lp)])
    grid("per sample", ["#", "longest run (tokens)", "(chars)", "reproduced", "diverged at", "p(reference token)"], rows)


def aggregate(stats: dict) -> None:
    print_facts(f"over {stats['samples']} samples (mean, min-max)", [
        (name.replace("_", " "), "-" if v["mean"] is None else f"{v['mean']:.3g}  ({v['min']:.3g}-{v['max']:.3g})")
        for name, v in stats.items() if isinstance(v, dict)
    ] + [("never diverged", f"{stats['never_diverged']} of {stats['samples']}")])
