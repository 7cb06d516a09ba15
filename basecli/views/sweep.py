"""Terminal views of `sweep`: grids of cells (rows temperature, columns another knob), fitted to the width."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from basecli.analyses import samples as analysis
AXES = ("temperature", "top_k", "top_p", "min_p")  # the order cells are made in: temperature varies slowest
LABELS = {"temperature": "t", "top_k": "top-k", "top_p": "top-p", "min_p": "min-p"}
MIN_CELL_WIDTH = 18  # narrower than this a grid is unreadable: cells are stacked instead
HEADER_WIDTH = 7


@dataclass
class Cell:
    values: dict  # axis -> value
    samples: list = field(default_factory=list)

    @property
    def diversity(self) -> analysis.Diversity:
        return analysis.diversity([s.text for s in self.samples], [s.entropies for s in self.samples],
                                  [[ev.logprob for ev in s.text_events] for s in self.samples])


def fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def label(axis: str, value) -> str:
    return f"{LABELS[axis]}={fmt(value)}"


def printable(text: str) -> str:
    """One line of text: newlines as ↵, other control characters as their visible pictures."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("↵")
        elif ch == "\t":
            out.append("→")
        elif ord(ch) < 32:
            out.append(chr(0x2400 + ord(ch)))
        else:
            out.append(ch)
    return "".join(out)


def layout(axes: dict) -> tuple[str | None, list[str]]:
    """Which axis the columns show, and which axes get one grid per value (rows are always temperature)."""
    multi = [a for a in AXES[1:] if len(axes[a]) > 1]
    col = multi[0] if multi else None
    return col, multi[1:]


def diversity_line(d: analysis.Diversity):
    from rich.text import Text

    t = Text()
    t.append(f"{d.distinct}/{d.samples} distinct", style="cyan")
    if d.mean_entropy is not None:
        t.append(f" · H {d.mean_entropy:.2f}", style="magenta")
    return t


def cell_view(cell: Cell):
    from rich.console import Group
    from rich.text import Text

    groups: dict[str, list] = {}  # identical continuations are shown once, with how many samples gave them
    for s in cell.samples:
        groups.setdefault(s.text, []).append(s)
    parts = []
    for text, same in groups.items():
        t = Text()
        if len(cell.samples) > 1:
            t.append(f"{len(same)}× " if len(same) > 1 else "• ", style="cyan" if len(same) > 1 else "dim")
        t.append(printable(text), style="bold")
        if same[0].finish_reason == "eos":
            t.append(" ⟨end⟩", style="dim")
        parts.append(t)
    parts.append(diversity_line(cell.diversity))
    return Group(*parts)


def grids(cells: list[Cell], axes: dict, width: int) -> list:
    """One renderable per value combination of the page axes: a grid, or stacked panels when too narrow."""
    from rich import box
    from rich.panel import Panel
    from rich.table import Table

    col_axis, page_axes = layout(axes)
    col_values = axes[col_axis] if col_axis else [None]
    index = {tuple(c.values[a] for a in AXES): c for c in cells}
    out = []
    for page in itertools.product(*(axes[a] for a in page_axes)):
        fixed = dict(zip(page_axes, page))
        title = " · ".join(label(a, v) for a, v in fixed.items()) or None

        def cell_at(t, c):
            values = {a: axes[a][0] for a in AXES} | fixed | {"temperature": t}
            if col_axis:
                values[col_axis] = c
            return index[tuple(values[a] for a in AXES)]

        if (width - HEADER_WIDTH) // max(1, len(col_values)) - 3 < MIN_CELL_WIDTH:
            panels = []
            for t in axes["temperature"]:
                for c in col_values:
                    name = " · ".join([label("temperature", t)] + ([label(col_axis, c)] if col_axis else []))
                    panels.append(Panel(cell_view(cell_at(t, c)), title=name, title_align="left", box=box.ROUNDED))
            from rich.console import Group

            out.append(Panel(Group(*panels), title=title, box=box.SIMPLE) if title else Group(*panels))
            continue
        table = Table(title=title, box=box.ROUNDED, show_lines=True, expand=True, padding=(0, 1))
        table.add_column("t", justify="right", style="bold yellow", no_wrap=True, width=HEADER_WIDTH - 3)
        for c in col_values:
            table.add_column(label(col_axis, c) if col_axis else "", ratio=1, header_style="bold yellow")
        for t in axes["temperature"]:
            table.add_row(fmt(t), *[cell_view(cell_at(t, c)) for c in col_values])
        out.append(table)
    return out


def caption(axes: dict, samples: int, max_tokens: int, seed: int) -> str:
    col_axis, page_axes = layout(axes)
    fixed = [label(a, axes[a][0]) for a in AXES[1:] if len(axes[a]) == 1]
    seeds = f"seed {seed}" if samples == 1 else f"seeds {seed}..{seed + samples - 1} in every cell"
    return " · ".join(fixed + [f"{samples} sample{'s' if samples > 1 else ''} per cell", f"{max_tokens} tokens", seeds])


LEGEND = "distinct = different continuations in the cell · H = mean entropy (nats) of the distributions the tokens were drawn from"


def plain(cells: list[Cell], axes: dict) -> str:
    """Pipe output: one header line per cell with its figures, then one line per sample."""
    shown = [a for a in AXES if len(axes[a]) > 1] or ["temperature"]
    lines = []
    for cell in cells:
        d = cell.diversity
        head = " ".join(label(a, cell.values[a]) for a in shown)
        h = f" mean_entropy={d.mean_entropy:.3f}" if d.mean_entropy is not None else ""
        lines.append(f"[{head}] distinct={d.distinct}/{d.samples}{h}")
        for j, s in enumerate(cell.samples):
            lines.append(f"  {j + 1} seed={s.params.seed}: {printable(s.text)}")
    return "\n".join(lines) + "\n"
