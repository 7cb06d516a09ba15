"""Terminal views of `resample`: numbered panels (live while they grow), the divergence tree, a summary."""

from __future__ import annotations

import math
import sys
import time

from basecli.analyses import samples as analysis
from basecli.views.render import visible

PANEL_MIN_WIDTH = 60  # a panel narrower than this wraps too often to read; wide terminals get several per row
CHARS_PER_TOKEN = 5  # a generous guess for English text, to judge whether live panels fit the terminal
EOS_LABEL = "⟨end of text⟩"


def console():
    """A console that wraps long lines itself, so panels and tree guides stay intact (render's console soft-wraps)."""
    from rich.console import Console

    return Console(highlight=False)


def fmt_logprob(lp: float | None) -> str:
    return "n/a" if lp is None else f"{lp:.2f}".replace("-", "−")


def pct(p: float) -> str:
    """A probability as a short percentage that never rounds a real chance to 0% or 100%."""
    if p >= 0.995:
        return ">99%" if p < 1 else "100%"
    if p >= 0.095:
        return f"{p:.0%}"
    if p >= 0.001:
        return f"{p:.1%}"
    return "<0.1%"


def panel(sample, *, running: bool = False):
    from rich.panel import Panel
    from rich.text import Text

    body = Text(clean(sample.text), style="bold")
    if running:
        body.append("▌", style="dim")
    title = f"[bold]#{sample.index + 1}[/] [dim]seed {sample.params.seed}[/]"
    if sample.done:
        subtitle = f"{sample.finish_reason} · mean logprob {fmt_logprob(sample.mean_logprob)}"
        style = "green" if sample.finish_reason in ("eos", "stop") else "blue"
    else:
        subtitle, style = f"{len(sample.events)} tokens…", "dim"
    return Panel(body, title=title, title_align="left", subtitle=f"[dim]{subtitle}[/]", subtitle_align="right",
                 border_style=style, padding=(0, 1))


def columns_for(width: int) -> int:
    return max(1, width // PANEL_MIN_WIDTH)


def panels_grid(samples, width: int, *, running: bool = False):
    """Panels side by side as the width allows, in index order."""
    from rich.table import Table

    cols = min(columns_for(width), max(1, len(samples)))
    grid = Table.grid(expand=True, padding=(0, 1))
    for _ in range(cols):
        grid.add_column(ratio=1)
    for start in range(0, len(samples), cols):
        row = [panel(s, running=running and not s.done) for s in samples[start : start + cols]]
        grid.add_row(*row, *[""] * (cols - len(row)))
    return grid


def live_fits(width: int, height: int, n: int, max_tokens: int, prompt: str) -> bool:
    """Whether every panel at full length fits on screen, so a live view never scrolls away."""
    cols = min(columns_for(width), n)
    inner = max(10, width // cols - 4)
    body = math.ceil(max_tokens * CHARS_PER_TOKEN / inner)
    prompt_lines = sum(math.ceil(max(1, len(line)) / width) for line in prompt.splitlines() or [""])
    return prompt_lines + math.ceil(n / cols) * (body + 2) + 2 <= height


def watch(console, prompt: str, samples, events, *, max_tokens: int, final_panels: bool = True) -> float:
    """Consume events into samples while showing them; returns the seconds it took.

    Tall terminal: every panel grows live. Otherwise each panel is printed when its row
    finishes. With final_panels=False (a tree or --best follows) the live view is transient
    and a short terminal only shows a spinner.
    """
    from rich.live import Live

    from basecli.backends.batching import collect

    t0 = time.perf_counter()
    if final_panels:
        console.print(prompt, style="dim", markup=False)
    width, height = console.size
    if live_fits(width, height, len(samples), max_tokens, prompt if final_panels else ""):
        finished = [False]
        with Live(console=console, auto_refresh=False, transient=not final_panels, vertical_overflow="ellipsis",
                  get_renderable=lambda: panels_grid(samples, console.width, running=not finished[0])) as live:
            collect(samples, events, Throttle(live.refresh))
            finished[0] = True  # the last frame, drawn on exit, has no cursors
        return time.perf_counter() - t0
    done = [0]
    with console.status(f"sampling {len(samples)} continuations…", spinner="dots") as status:
        def finished(s, ev):
            if ev.finish_reason is None:
                return
            done[0] += 1
            status.update(f"sampling {len(samples)} continuations… {done[0]} done")
            if final_panels:
                console.print(panel(s))

        collect(samples, events, finished)
    return time.perf_counter() - t0


class Throttle:
    """Redraw at most 4 times a second, and spend at most a fifth of the time drawing:
    on a busy CPU, drawing must not slow the model down."""

    def __init__(self, draw, every: float = 0.25):
        self.draw, self.every, self.next = draw, every, 0.0

    def __call__(self, *_):
        now = time.perf_counter()
        if now >= self.next:
            self.draw()
            spent = time.perf_counter() - now
            self.next = time.perf_counter() + max(self.every, 4 * spent)


def summary(samples, seconds: float | None = None, tokens: int | None = None) -> str:
    """One line: how many samples, how many distinct, where they part, mean logprob, speed."""
    texts = [s.text for s in samples]
    parts = [f"{len(samples)} samples", f"{analysis.distinct(texts)} distinct"]
    split = analysis.first_divergence([s.token_ids for s in samples])
    if len(samples) > 1:
        parts.append("all identical" if split is None else f"first split at token {split + 1}")
    parts.append(f"mean logprob {fmt_logprob(analysis.mean([s.mean_logprob for s in samples]))}")
    tokens = tokens if tokens is not None else sum(len(s.events) for s in samples)  # --best: all rows ran
    if seconds:
        parts.append(f"{tokens} tokens in {seconds:.1f} s ({tokens / seconds:,.0f} tok/s)")
    return " · ".join(parts)


def token_text(tokenizer, ids) -> str:
    eos = tokenizer.eos_ids
    out, run = [], []
    for i in ids:
        if i in eos:
            out.append(b"".join(run).decode("utf-8", "replace"))
            out.append(EOS_LABEL)
            run = []
        else:
            run.append(tokenizer.token_bytes(i))
    out.append(b"".join(run).decode("utf-8", "replace"))
    return "".join(out)


def tree(tokenizer, prompt: str, samples):
    """The samples as a prefix tree: at each fork, the competing token, how many took it, its probability."""
    from rich.text import Text
    from rich.tree import Tree

    root_node = analysis.prefix_tree([s.token_ids for s in samples], [s.logprobs for s in samples])
    tail = prompt if len(prompt) <= 60 else "…" + prompt[-59:]
    label = Text(visible_newlines(tail), style="dim")
    if root_node.tokens:  # every sample starts the same way
        label.append(visible_newlines(token_text(tokenizer, root_node.tokens)), style="bold")
    top = Tree(label, guide_style="dim")

    def add(parent, node):
        for child in node.children:
            line = Text()
            line.append(f"{child.count}×", style="bold cyan")
            line.append(f" {pct(child.prob):>5} ", style="magenta")
            first = token_text(tokenizer, child.tokens[:1])
            line.append(visible(first) if first != EOS_LABEL else first, style="bold underline")
            line.append(visible_newlines(token_text(tokenizer, child.tokens[1:])))
            if child.ends:  # tree nodes hold positions in `samples`, the order it was built from
                names = " ".join(f"#{samples[i].index + 1}" for i in child.ends)
                reasons = sorted({samples[i].finish_reason or "" for i in child.ends})
                line.append(f"  {names} ({', '.join(reasons)})", style="dim")
            add(parent.add(line), child)

    add(top, root_node)
    if root_node.ends:
        names = " ".join(f"#{samples[i].index + 1}" for i in root_node.ends)
        reasons = ", ".join(sorted({samples[i].finish_reason or "" for i in root_node.ends}))
        top.add(Text(f"{len(root_node.ends)}× identical to the end  {names} ({reasons})", style="dim"))
    return top


def clean(text: str) -> str:
    """Control characters (a small model's noise) as their visible pictures; newlines and tabs stay."""
    return "".join(chr(0x2400 + ord(c)) if ord(c) < 32 and c not in "\n\t" else c for c in text)


def visible_newlines(text: str) -> str:
    return clean(text).replace("\n", "↵")


def plain(samples) -> str:
    """Pipe output: a header line per sample, then its text."""
    blocks = []
    for s in samples:
        head = f"#{s.index + 1} seed={s.params.seed} finish={s.finish_reason} mean_logprob={fmt_logprob(s.mean_logprob).replace('−', '-')}"
        blocks.append(f"{head}\n{s.text}\n")
    return "\n".join(blocks)


def write_plain(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
