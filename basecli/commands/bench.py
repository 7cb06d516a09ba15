"""basecli bench: how fast a model loads, reads a prompt and generates, on this machine."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from basecli import options as o
from basecli.views.records import write_json


@o.grouped
def bench(
    model: o.ModelChoice = o.model_choice("model", "device", "dtype", "quantize"),
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes to decode with, comma-separated.")] = "1,8,32",
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", help="Prompt length in tokens.", min=1)] = 128,
    new_tokens: Annotated[int, typer.Option("--new-tokens", help="Tokens to generate per row.", min=2)] = 128,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch (default: torch's choice).", min=1)] = None,
    startup: Annotated[bool, typer.Option("--startup/--no-startup", help="Also time fresh processes: --help, load, first token.")] = True,
    engine: Annotated[Optional[str], typer.Option("--engine", envvar="BASECLI_ENGINE",
                      help="transformers, lean (basecli's own Llama forward) or auto (lean where it applies).")] = None,
    json_out: o.Json = False,
):
    """Measure load time, prompt processing, time to first token, decode speed per batch size and peak memory.

    Every figure is taken after a warm-up, with the device synchronised before the clock is read.
    Decode speed counts all rows together and excludes the first token.

    \b
    Examples:
      basecli bench
      basecli bench --batch 1,16 --new-tokens 64 --no-startup
      basecli bench --quantize q4 --no-startup
      basecli bench -m gpt2 --json | jq .decode
    """
    from basecli.analyses import benchmark
    from basecli.errors import UsageError

    try:
        batches = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise UsageError(f"--batch takes comma-separated whole numbers like 1,8,32, got {batch!r}") from None
    if not batches or min(batches) < 1:
        raise UsageError(f"--batch sizes must be at least 1, got {batch!r}")
    from basecli.weights.models import resolve

    resolve(model.model)  # a model that does not exist is said now, not by the fresh processes timed below
    say = (lambda s: print(f"basecli bench: {s}", file=sys.stderr, flush=True))
    report = benchmark.run(model.model, batches=batches, prompt_tokens=prompt_tokens, new_tokens=new_tokens, device=model.device,
                           dtype=model.dtype, engine=engine, quantize=model.quantize, threads=threads, startup=startup, progress=say)
    if json_out:
        write_json(report.to_dict())
        return
    rows = table_rows(report)
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title(report))
        table.add_column("measure")
        table.add_column("value", justify="right")
        for name, value in rows:
            table.add_row(name, value)
        Console().print(table)
    else:
        print(title(report))
        width = max(len(n) for n, _ in rows)
        for name, value in rows:
            print(f"{name:<{width}}  {value}")


def title(r) -> str:
    weights = f", {r.quantize} weights" if r.quantize else ""
    return f"{r.model}, {r.engine} engine, on {r.device} ({r.dtype}{weights}, {r.threads} threads)"


def table_rows(r) -> list[tuple[str, str]]:
    """(measure, value) pairs, in the order a reader asks: start-up, load, prompt, decode, memory."""
    s = r.startup
    rows = []
    if s:
        rows += [
            ("basecli --help (new process)", f"{s['help_s']:.2f} s"),
            ("tokenize -e cl100k_base (new process)", f"{s['tokenize_s']:.2f} s") if "tokenize_s" in s else None,
            ("import torch + load (new process)", f"{s['import_s']:.2f} + {s['load_fresh_process_s']:.2f} s"),
            ("complete -n 1 (start to first token)", f"{s['complete_first_output_s']:.2f} s") if s.get("complete_first_output_s") else None,
            ("complete -n 1 (start to exit)", f"{s['complete_first_token_s']:.2f} s"),
            ("complete peak RSS", f"{s['complete_peak_rss_mb']:.0f} MiB ({s['complete_peak_rss_mb'] / r.weights_mb:.2f}x weights)"),
            (("  less import torch alone", f"{s['torch_import_rss_mb']:.0f} MiB: "
              f"{(s['complete_peak_rss_mb'] - s['torch_import_rss_mb']) / r.weights_mb:.2f}x weights") if s.get("torch_import_rss_mb") else None),
        ]
    if r.conversion_s is not None:
        rows.append(("GGUF conversion (once, recorded)", f"{r.conversion_s:.1f} s"))
    rows += [
        ("load (cached, in process)", f"{r.load_s:.2f} s"),
        (f"prefill ({r.prompt_tokens} tokens)", f"{r.prefill_tokens_per_s:.0f} tok/s"),
        ("time to first token", f"{r.first_token_s * 1000:.0f} ms"),
    ]
    for d in r.decode:
        rows.append((f"decode, batch {d.batch}", f"{d.tokens_per_s:.1f} tok/s ({d.row_tokens_per_s:.1f} per row)"))
    rows.append(("weights", f"{r.weights_mb:.1f} MiB" + (f" ({r.quantize}: {r.weights})" if r.quantize else "")))
    rows.append(("peak RSS (this process)", f"{r.peak_rss_mb:.0f} MiB"))
    if r.gpu_peak_mb is not None:
        rows.append(("peak GPU memory", f"{r.gpu_peak_mb:.0f} MiB"))
    return [row for row in rows if row]
