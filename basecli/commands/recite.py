"""basecli recite: give the model the start of a text and see how much of the rest it reproduces verbatim."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from basecli import options as o
from basecli.views.records import write_json
from basecli.config import SamplingParams

ReferenceArg = Annotated[str, typer.Argument(help="The reference text: a file, @FILE, or '-' for stdin.")]


@o.grouped
def recite(
    reference: ReferenceArg,
    model: o.ModelChoice = o.model_choice(),
    prefix_tokens: Annotated[Optional[int], typer.Option("--prefix-tokens", help="Give the model the first N tokens instead of the first sentence.")] = None,
    samples: Annotated[int, typer.Option("--samples", help="Sample N recitations in one batch (with -t > 0) and report the figures over them.", min=1, max=256)] = 1,
    params: SamplingParams = o.sampling(only=("temperature", "seed"), temperature=0.0),
    json_out: o.Json = False,
):
    """Continue the first sentence of REFERENCE greedily for as long as the reference, and measure the verbatim overlap.

    \b
    Examples:
      basecli recite prompts/zebra.txt
      basecli recite @speech.txt --prefix-tokens 20
      basecli recite prompts/zebra.txt --samples 8 -t 0.8 --json | jq .summary
    """
    import time

    from basecli.errors import UsageError
    from basecli.text.inputs import read_file, read_text
    from basecli.analyses import recitation
    if samples > 1 and params.temperature == 0:
        raise UsageError(f"--samples {samples} with -t 0 would give {samples} identical greedy recitations; add a temperature, e.g. -t 0.8")
    text = read_text(reference, what="reference") if reference == "-" or reference.startswith("@") else read_file(reference)
    if text.startswith("---\n"):  # a prompts/ template: its body is the reference, the front matter is about it
        from basecli.text.templates import parse

        text = parse(text, reference).body
    backend = model.open()
    t0 = time.perf_counter()
    rec = recitation.recite(backend, text, prefix_tokens=prefix_tokens, params=params, samples=samples,
                            seeds=[(params.seed + i) % 2**63 for i in range(samples)])
    total_s = time.perf_counter() - t0
    stats = recitation.aggregate(rec.samples)
    tok = backend.tokenizer

    if json_out:
        record = {"model": backend.name, "prefix": rec.prefix, "reference": rec.reference, "truncated": rec.truncated,
                  "min_run": recitation.MIN_RUN, "params": params.to_dict(),
                  "samples": [recitation.sample_record(tok, rec, s) for s in rec.samples],
                  "summary": stats, "timings": {"load_s": round(backend.load_seconds, 3), "total_s": round(total_s, 3)}}
        write_json(record)
        return

    from basecli.views import recite as view

    if samples == 1:
        view.continuation(tok, rec, rec.samples[0])
        view.figures(tok, rec, rec.samples[0], recitation.MIN_RUN)
        return
    for i, s in enumerate(rec.samples):
        view.continuation(tok, rec, s, label=f"sample {i}")
    view.sample_table(tok, rec)
    view.aggregate(stats)
