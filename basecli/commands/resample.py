"""basecli resample: the same prompt N times in one batch, a parallel universe per row."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from basecli import options as o
from basecli.views.records import write_json
from basecli.config import SamplingParams

Samples = Annotated[int, typer.Option("--samples", "-N", help="How many continuations, all in one batch.")]
Tree = Annotated[bool, typer.Option("--tree", help="Merge the samples into a prefix tree that shows where they branch.")]
Best = Annotated[Optional[int], typer.Option("--best", help="Keep the K samples with the highest mean logprob, best first.")]
Jsonl = Annotated[bool, typer.Option("--jsonl", help="One JSON record per sample (index, seed, completion, tokens, finish_reason).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Rows per batch (default: as many as fit in memory); results do not change.")]


MAX_SAMPLES = 10_000  # rows of one resample (run in batches); more is a memory error, not a sample


@o.grouped
def resample(
    prompt: o.PromptArg = None,
    samples: Samples = 8,
    model: o.ModelChoice = o.model_choice(),
    base: SamplingParams = o.sampling(max_tokens=40),
    tree: Tree = False,
    best: Best = None,
    jsonl: Jsonl = False,
    batch_size: BatchSize = None,
    truncate: o.Truncate = False,
):
    """Sample N continuations of PROMPT at once and show how they differ.

    Row i uses seed S+i, so it equals `basecli complete --seed S+i` with the same settings.

    \b
    Examples:
      basecli resample "The 2024 US presidential election was won by" -N 8 --tree
      basecli resample "Once upon a time" -N 16 --best 3 -s 42
      basecli resample "2 + 2 =" -N 20 -n 3 --jsonl | jq -r .completion | sort | uniq -c
    """
    from basecli.views import render
    from basecli.backends.batching import Sample, collect, note_chunks, seeded, stream_rows
    from basecli.errors import UsageError
    from basecli.text.inputs import read_text
    from basecli.views.records import Timer, completion_record
    from basecli.views import resample as view

    o.at_most_one(tree=tree, jsonl=jsonl)
    if not 1 <= samples <= MAX_SAMPLES:
        raise UsageError(f"-N/--samples must be at least 1 and at most {MAX_SAMPLES}, got {samples}")
    if best is not None and not 1 <= best <= samples:
        raise UsageError(f"--best must be between 1 and -N ({samples}), got {best}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    text = read_text(prompt)
    params = seeded([base] * samples, base.seed)
    backend = model.open()
    timer = Timer(backend.load_seconds)
    events = timer.timed(stream_rows(backend, [text] * samples, params, batch_size=batch_size, alternatives=5 if jsonl else 0,
                                     truncate=truncate, on_chunks=note_chunks))
    rows = [Sample(i, p) for i, p in enumerate(params)]
    con = view.console()
    tty = render.is_tty() and not jsonl
    seconds = None
    if tty:
        seconds = view.watch(con, text, rows, events, max_tokens=base.max_tokens, final_panels=not (tree or best))
    else:
        collect(rows, events)
    shown = rows
    if best is not None:
        from basecli.analyses.samples import best as best_of

        shown = [rows[i] for i in best_of([s.mean_logprob for s in rows], best)]

    if jsonl:
        timings = timer.as_dict()
        for s in shown:
            record = completion_record(model=backend.name, prompt=text, events=s.events, params=s.params,
                                       tokenizer=backend.tokenizer, timings=timings, index=s.index, seed=s.params.seed,
                                       mean_logprob=round(s.mean_logprob, 5) if s.mean_logprob is not None else None)
            write_json(record)
        return
    line = view.summary(shown, seconds, tokens=sum(len(s.events) for s in rows))
    if best is not None:
        line = f"best {best} of {samples} by mean logprob · " + line
    if tree:
        con.print(view.tree(backend.tokenizer, text, shown))
    elif best is not None and tty:
        con.print(text, style="dim", markup=False)
        for s in shown:
            con.print(view.panel(s))
    elif not tty:
        view.write_plain(view.plain(shown))
    if tty:
        con.print(line, style="dim", markup=False)
    else:
        print(line, file=sys.stderr)
