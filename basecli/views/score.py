"""Terminal view of `basecli score`: the text coloured by surprisal, the surprising spots, the bits it costs."""

from __future__ import annotations

import math
import sys

from basecli.analyses.compression import LN2
from basecli.views.facts import grid, pieces, print_facts

# surprisal bands in bits (-log2 p), least surprising first
BANDS = [(1.0, "bright_green"), (3.0, "green"), (6.0, "yellow"), (10.0, "dark_orange"), (math.inf, "red")]


def bits(logprob: float | None) -> float | None:
    return None if logprob is None else -logprob / LN2


def band(b: float | None) -> str:
    return "dim" if b is None else next(style for bound, style in BANDS if b < bound)


def legend() -> str:
    lows = [0.0] + [bound for bound, _ in BANDS[:-1]]
    parts = [f"[{style}]■ {lo:g}-{hi:g}[/]" for lo, (hi, style) in zip(lows, BANDS[:-1])]
    return "surprisal in bits: " + "  ".join(parts + [f"[{BANDS[-1][1]}]■ ≥{BANDS[-2][0]:g}[/]"])


def coloured_text(tokenizer, scored, context: str | None) -> None:
    """The text, each token in the colour of its surprisal (terminal only)."""
    from basecli.views.render import console

    con = console()
    if context:
        con.print(context, style="dim", end="", markup=False)
    for tok, piece in zip(scored, pieces(tokenizer.token_bytes(t.token_id) for t in scored)):
        con.print(piece, style=band(bits(tok.logprob)), end="", markup=False)
    con.print()
    console(stderr=True).print(legend())


def show(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def alternatives(tokenizer, scored, positions: list[int], k: int, title: str) -> None:
    from basecli.views.render import visible

    rows, styles = [], []
    for i in positions:
        t = scored[i]
        b = bits(t.logprob)
        alts = "  ".join(
            f"{visible(tokenizer.token_bytes(a).decode('utf-8', 'replace'))} {show(math.exp(lp))}" for a, lp in t.alternatives[:k]
        )
        p = "-" if t.logprob is None else show(math.exp(t.logprob))
        rows.append([str(i), visible(t.token_text), p, "-" if b is None else f"{b:.1f}", str(t.rank or "-"), alts])
        styles.append(band(b) if sys.stdout.isatty() else None)
    grid(title, ["#", "token", "p", "bits", "rank", "the model expected"], rows, styles=styles)


def summary(model: str, s, compression: dict, windows: dict) -> None:
    rows = [
        ("model", model),
        ("tokens", f"{s.tokens:,}" + (f" ({s.tokens - s.scored} with nothing before them, not scored)" if s.scored < s.tokens else "")),
        ("bytes / characters", f"{s.bytes:,} / {s.chars:,}"),
        ("total", f"{s.bits:,.1f} bits"),
        ("bits per token", f"{s.bits_per_token:.3f}"),
        ("bits per byte", f"{s.bits_per_byte:.3f}"),
        ("bits per character", f"{s.bits_per_char:.3f}"),
        ("perplexity", f"{s.perplexity:.2f}"),
    ]
    if windows["passes"] > 1:
        rows.append(("context", f"{windows['passes']} windows of {windows['size']} tokens, stride {windows['stride']}: tokens "
                                f"{windows['first_with_less_context']} onwards saw only {windows['min_context']}-{windows['size'] - 1} tokens before them"))
    print_facts("score", rows)
    model_bpb = compression["model"]["bits_per_byte"]
    comp_rows = [(name, f"{c['bits_per_byte']:.3f} bits/byte  ({c['bytes']:,} bytes{', ' + format(c['bits_per_byte'] / model_bpb, '.1f') + 'x the model' if name != 'model' else ''})")
                 for name, c in compression.items()]
    print_facts("the same bytes compressed", comp_rows)
