"""basecli sweep: every combination of sampling knobs, one batch, one grid."""

from __future__ import annotations

import itertools
import sys
from typing import Annotated, Optional

import typer

from basecli import options as o
from basecli.views.records import write_json
from basecli.config import SamplingParams
from basecli.views.sweep import AXES  # knobs given as lists: sweep's own options, not the Sampling panel's

MAX_ROWS_WITHOUT_YES = 64
Temperatures = Annotated[str, typer.Option("--temperature", "-t", help="Comma-separated temperatures: the grid's rows.", rich_help_panel="Axes")]
TopKs = Annotated[str, typer.Option("--top-k", help="Comma-separated top-k values (0 = off).", rich_help_panel="Axes")]
TopPs = Annotated[str, typer.Option("--top-p", help="Comma-separated top-p values (1 = off).", rich_help_panel="Axes")]
MinPs = Annotated[str, typer.Option("--min-p", help="Comma-separated min-p values (0 = off).", rich_help_panel="Axes")]
Samples = Annotated[int, typer.Option("--samples", "-N", help="Samples per cell; sample j uses seed S+j in every cell.", rich_help_panel="Axes")]
Jsonl = Annotated[bool, typer.Option("--jsonl", help="One JSON record per cell sample, with its parameters.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help=f"Run a sweep of more than {MAX_ROWS_WITHOUT_YES} rows (cells x samples).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Rows per batch (default: as many as fit in memory); results do not change.")]


def parse_axis(flag: str, text: str, kind: type) -> list:
    """'0,0.7,1.2' -> [0.0, 0.7, 1.2]; anything malformed is one clear usage error."""
    from basecli.errors import UsageError

    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or not all(parts):
        raise UsageError(f"{flag} needs a comma-separated list of values like {'0,5,50' if kind is int else '0,0.7,1.2'}, got {text!r}")
    values = []
    for p in parts:
        try:
            values.append(kind(p))
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise UsageError(f"{flag}: {p!r} is not {what}; give a comma-separated list like {'0,5,50' if kind is int else '0,0.7,1.2'}") from None
    for k, v in enumerate(values):
        if v in values[:k]:
            raise UsageError(f"{flag} lists {parts[k]} more than once (as {values[values.index(v)]:g})" if kind is float
                             else f"{flag} lists {parts[k]} more than once")
    return values


@o.grouped
def sweep(
    prompt: o.PromptArg = None,
    temperature: Temperatures = "0,0.7,1.2",
    top_k: TopKs = "0",
    top_p: TopPs = "1",
    min_p: MinPs = "0",
    samples: Samples = 3,
    model: o.ModelChoice = o.model_choice(),
    base: SamplingParams = o.sampling(without=AXES, max_tokens=24),
    jsonl: Jsonl = False,
    yes: Yes = False,
    batch_size: BatchSize = None,
    truncate: o.Truncate = False,
):
    """Run PROMPT under every combination of the given knobs in one batch, and show a grid.

    Rows are temperatures; columns the first other knob given as a list; any further list
    gives one grid per value. Each cell shows its samples, how many are distinct, and the
    mean entropy of the distributions its tokens were drawn from.

    \b
    Examples:
      basecli sweep "Here's my top-10 list of the top landmarks to see in Paris:" --temperature 0,0.8,1.5 --top-k 1,40
      basecli sweep "Once upon a time" -t 0.7,1.2 --top-p 0.5,0.95 --min-p 0,0.1 -N 2
      basecli sweep "2 + 2 =" -t 0,1 -n 4 --jsonl | jq -c '[.cell.temperature, .completion]'
    """
    from basecli.backends.batching import Sample, collect, note_chunks, seeded, stream_rows
    from basecli.errors import UsageError
    from basecli.text.inputs import read_text
    from basecli.views.records import Timer, completion_record
    from basecli.views import render
    from basecli.views import resample as rview
    from basecli.views import sweep as view

    axes = {
        "temperature": parse_axis("--temperature", temperature, float),
        "top_k": parse_axis("--top-k", top_k, int),
        "top_p": parse_axis("--top-p", top_p, float),
        "min_p": parse_axis("--min-p", min_p, float),
    }
    if samples < 1:
        raise UsageError(f"-N/--samples must be at least 1, got {samples}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    combos = list(itertools.product(*(axes[a] for a in view.AXES)))
    rows_needed = len(combos) * samples
    if rows_needed > MAX_ROWS_WITHOUT_YES and not yes:
        raise UsageError(f"this sweep is {len(combos)} cells x {samples} samples = {rows_needed} rows, more than "
                         f"{MAX_ROWS_WITHOUT_YES}; pass --yes to run it anyway")
    text = read_text(prompt)
    start = base.seed
    cells = [view.Cell(dict(zip(view.AXES, combo))) for combo in combos]
    params = seeded([base.with_(**cell.values) for cell in cells for _ in range(samples)], start, repeat=samples)
    rows = [Sample(i, p) for i, p in enumerate(params)]
    for i, s in enumerate(rows):
        cells[i // samples].samples.append(s)

    backend = model.open()
    timer = Timer(backend.load_seconds)
    events = timer.timed(stream_rows(backend, [text] * len(rows), params, batch_size=batch_size, entropy=True,
                                     alternatives=5 if jsonl else 0, truncate=truncate, on_chunks=note_chunks))
    tty = render.is_tty() and not jsonl
    con = rview.console()
    if tty:
        done = [0]
        with con.status(f"sampling {len(cells)} cells x {samples} = {len(rows)} rows in one batch…", spinner="dots") as status:
            def progress(_s, ev):
                if ev.finish_reason is not None:
                    done[0] += 1
                    status.update(f"sampling {len(cells)} cells x {samples} = {len(rows)} rows in one batch… {done[0]} done")

            collect(rows, events, progress)
    else:
        collect(rows, events)
    timings = timer.as_dict()

    if jsonl:
        for cell in cells:
            for j, s in enumerate(cell.samples):
                record = completion_record(model=backend.name, prompt=text, events=s.events, params=s.params,
                                           tokenizer=backend.tokenizer, timings=timings, cell=cell.values, sample=j,
                                           seed=s.params.seed, mean_entropy=_round(_mean(s.entropies)),
                                           mean_logprob=_round(s.mean_logprob))
                write_json(record)
        return
    speed = f"{len(rows)} rows in one batch · {timings['tokens']} tokens in {timings['total_s']:.1f} s"
    if not tty:
        rview.write_plain(view.plain(cells, axes))
        print(speed, file=sys.stderr)
        return
    con.print(text, style="dim", markup=False)
    for grid in view.grids(cells, axes, con.width):
        con.print(grid)
    con.print(view.caption(axes, samples, base.max_tokens, start), style="dim", markup=False)
    con.print(view.LEGEND + " · " + speed, style="dim", markup=False)


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def _round(x):
    return round(x, 5) if x is not None else None
