"""basecli resample: the same prompt N times in one batch, a parallel universe per row."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from basecli import options as o
PromptArg = Annotated[Optional[str], typer.Argument(help="The prompt text, '-' for stdin, or @FILE. Read from stdin when omitted and piped.")]
Samples = Annotated[int, typer.Option("--samples", "-N", help="How many continuations, all in one batch.")]
Tree = Annotated[bool, typer.Option("--tree", help="Merge the samples into a prefix tree that shows where they branch.")]
Best = Annotated[Optional[int], typer.Option("--best", help="Keep the K samples with the highest mean logprob, best first.")]
Jsonl = Annotated[bool, typer.Option("--jsonl", help="One JSON record per sample (index, seed, completion, tokens, finish_reason).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Rows per batch (default: as many as fit in memory); results do not change.")]


def resample(
    prompt: PromptArg = None,
    samples: Samples = 8,
    model: o.Model = None,
    max_tokens: o.MaxTokens = 40,
    temperature: o.Temperature = 1.0,
    top_k: o.TopK = 0,
    top_p: o.TopP = 1.0,
    min_p: o.MinP = 0.0,
    repetition_penalty: o.RepetitionPenalty = 1.0,
    seed: o.Seed = None,
    stop: o.Stop = None,
    ignore_eos: o.IgnoreEos = False,
    tree: Tree = False,
    best: Best = None,
    jsonl: Jsonl = False,
    batch_size: BatchSize = None,
    truncate: o.Truncate = False,
    base_url: o.BaseUrl = None,
    device: o.Device = "auto",
    dtype: o.Dtype = "auto",
    quantize: o.Quantize = None,
    trust_remote_code: o.TrustRemoteCode = False,
    allow_pickle: o.AllowPickle = False,
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
    from basecli.backends import open_backend
    from basecli.backends.batching import Sample, collect, note_chunks, seeded, stream_rows
    from basecli.config import fresh_seed
    from basecli.errors import UsageError
    from basecli.text.inputs import read_text
    from basecli.views.records import Timer, completion_record
    from basecli.views import resample as view

    if samples < 1:
        raise UsageError(f"-N/--samples must be at least 1, got {samples}")
    if best is not None and not 1 <= best <= samples:
        raise UsageError(f"--best must be between 1 and -N ({samples}), got {best}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    text = read_text(prompt)
    base = o.sampling(max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop, ignore_eos)
    params = seeded([base] * samples, base.seed if base.seed is not None else fresh_seed())
    backend = open_backend(model, base_url=base_url, device=device, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                           quantize=quantize)
    timer = Timer(getattr(backend, "load_seconds", None))
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
        from basecli.analyses.analysis import best as best_of

        shown = [rows[i] for i in best_of([s.mean_logprob for s in rows], best)]

    if jsonl:
        timings = timer.as_dict()
        for s in shown:
            record = completion_record(model=backend.name, prompt=text, events=s.events, params=s.params,
                                       tokenizer=backend.tokenizer, timings=timings, index=s.index, seed=s.params.seed,
                                       mean_logprob=round(s.mean_logprob, 5) if s.mean_logprob is not None else None)
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
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
