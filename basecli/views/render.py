"""Terminal views. Colour only on a terminal; NO_COLOR respected (rich does it); plain text in pipes."""

from __future__ import annotations

import math
import sys
from functools import lru_cache

# probability bands for --show-probs, most likely first
BANDS = [(0.9, "bright_green"), (0.5, "green"), (0.1, "yellow"), (0.01, "dark_orange"), (0.0, "red")]


@lru_cache(maxsize=2)
def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True, highlight=False)


def is_tty() -> bool:
    return sys.stdout.isatty()


def prob_style(logprob: float) -> str:
    p = math.exp(logprob)
    return next(style for bound, style in BANDS if p >= bound)


def legend() -> str:
    parts = [f"[{style}]■ p≥{bound:g}[/]" for bound, style in BANDS[:-1]] + [f"[{BANDS[-1][1]}]■ p<{BANDS[-2][0]:g}[/]"]
    return "  ".join(parts)


def visible(text: str) -> str:
    """A token's text with whitespace made visible, for tables."""
    return text.replace(" ", "·").replace("\n", "↵").replace("\t", "→")


def stream_completion(prompt: str, events, *, show_probs: bool = False, out=None) -> list:
    """Print the prompt dimmed, then each piece of the continuation as it arrives. Returns the events."""
    seen = []
    tty = is_tty()
    con = console() if tty else None  # a pipe gets plain writes: rich is not even imported
    if tty:
        con.print(prompt, style="dim", end="", markup=False)
    try:
        for ev in events:
            seen.append(ev)
            if not ev.text:
                continue
            if tty:
                con.print(ev.text, style=prob_style(ev.logprob) if show_probs else "bold", end="", markup=False)
                con.file.flush()
            else:
                sys.stdout.write(ev.text)
                sys.stdout.flush()
    finally:
        if tty:
            con.print()
        elif seen:
            sys.stdout.write("\n")
            sys.stdout.flush()
    if show_probs and tty:
        console(stderr=True).print(legend())
    return seen


def alternatives_table(tokenizer, events, k: int) -> None:
    """Per generated token: its probability and the top-k alternatives the model weighed."""
    from rich.table import Table

    table = Table(title=f"top {k} alternatives per token", show_lines=False, box=None if not is_tty() else None)
    table.add_column("#", justify="right")
    table.add_column("token")
    table.add_column("p", justify="right")
    table.add_column("alternatives")
    for ev in events:
        if ev.finish_reason == "eos":
            continue
        alts = "  ".join(
            f"{visible(tokenizer.token_bytes(i).decode('utf-8', 'replace'))} {math.exp(lp):.2f}" for i, lp in ev.alternatives
        )
        table.add_row(str(ev.step), visible(ev.token_text), f"{math.exp(ev.logprob):.3f}", alts, style=prob_style(ev.logprob) if is_tty() else None)
    console().print(table)
