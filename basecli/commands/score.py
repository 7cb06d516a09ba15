"""basecli score: how surprised the model is by each token of a text, and what the text costs in bits."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from basecli import options as o
from basecli.views.records import write_json

MOST_SURPRISING = 10  # positions listed by --alternatives without --at


@o.grouped
def score(
    text: o.TextArg = None,
    model: o.ModelChoice = o.model_choice(),
    context: Annotated[Optional[str], typer.Option("--context", help="Condition the first token on this text instead of the model's start token (@FILE works).")] = None,
    alternatives: Annotated[int, typer.Option("--alternatives", help="At the most surprising positions (or --at), show the K tokens the model expected.", min=0, max=20)] = 0,
    at: Annotated[Optional[List[int]], typer.Option("--at", help="Token position to show alternatives for (repeatable; 0 = first token).")] = None,
    stride: Annotated[Optional[int], typer.Option("--stride", min=1, help="For text longer than the window: tokens each next window moves on. Default: half the window.")] = None,
    window: Annotated[Optional[int], typer.Option("--window", min=2, help="Tokens per forward pass. Default: the model's context window.")] = None,
    json_out: o.Json = False,
):
    """Teacher-forced log-probabilities of every token of TEXT, and its size in bits next to gzip, bz2 and xz.

    \b
    Examples:
      basecli score @README.md
      basecli score "The capital of France is Paris." --alternatives 5
      basecli score @long.txt --stride 512 --json | jq .summary
    """
    import time

    from basecli.analyses.compression import compression_table, summarize
    from basecli.engine.score import plan_windows, start_ids
    from basecli.errors import UsageError
    from basecli.text.inputs import read_text

    body = read_text(text, what="text to score")
    if not body:
        raise UsageError("the text to score is empty; give some text, '-' for stdin or @FILE")
    if stride is not None and window is not None and stride >= window:
        raise UsageError(f"--stride {stride} must be smaller than --window {window} so that the windows overlap; try --stride {max(1, window // 2)}")
    ctx = read_text(context, what="context") if context is not None else None
    k = alternatives or (5 if at else 0)
    backend = model.open()
    t0 = time.perf_counter()
    with _progress() as report:
        scored = backend.score(body, context=ctx, alternatives=k, stride=stride, window=window, progress=report)
    total_s = time.perf_counter() - t0
    for i in at or []:
        if not 0 <= i < len(scored):
            raise UsageError(f"--at {i} is outside the text, which has tokens 0..{len(scored) - 1}")

    tok = backend.tokenizer
    unscored = [t for t in scored if t.logprob is None]
    scored_text = tok.decode([t.token_id for t in scored if t.logprob is not None]) if unscored else body
    s = summarize([t.logprob for t in scored], scored_text)
    comp = compression_table(scored_text, s.bits)
    size = window if window is not None else backend.context_length
    step = stride if stride is not None else max(1, size // 2)
    n = len(start_ids(tok, ctx)) + len(scored)
    n_start = n - len(scored)
    windows = {"size": size, "stride": step, "passes": len(plan_windows(n, size, step)), "min_context": size - step,
               "first_with_less_context": max(0, size - n_start)}  # text token index: from here on, windows slide

    if json_out:
        tokens = [_token_record(tok, t, k) for t in scored]
        record = {"model": backend.name, "text": body, "context": ctx, "start_ids": start_ids(tok, ctx), "tokens": tokens, "summary": s.to_dict(),
                  "compression": comp, "windows": windows,
                  "timings": {"load_s": round(backend.load_seconds, 3), "total_s": round(total_s, 3)}}
        write_json(record)
        return

    from basecli.views.render import is_tty
    from basecli.views import score as view

    if is_tty():
        view.coloured_text(tok, scored, ctx)
    if k:
        if at:
            view.alternatives(tok, scored, list(at), k, f"top {k} alternatives at the chosen positions")
        else:
            ranked = sorted((i for i, t in enumerate(scored) if t.logprob is not None), key=lambda i: scored[i].logprob)
            view.alternatives(tok, scored, ranked[:MOST_SURPRISING], k, f"the {min(MOST_SURPRISING, len(ranked))} most surprising tokens")
    view.summary(backend.name, s, comp, windows)


def _token_record(tok, t, k: int) -> dict:
    rec = {"id": t.token_id, "text": t.token_text, "logprob": None if t.logprob is None else round(t.logprob, 5),
           "rank": t.rank, "context": t.context}
    if k:
        rec["alternatives"] = [{"id": i, "text": tok.token_bytes(i).decode("utf-8", errors="replace"), "logprob": round(lp, 5)}
                               for i, lp in t.alternatives]
    return rec


class _progress:
    """A progress bar on stderr for text that needs more than one window; silent otherwise."""

    def __enter__(self):
        self.bar = None
        return self.report

    def report(self, done: int, total: int) -> None:
        if self.bar is None:
            if done >= total:  # one window did it all
                return
            from rich.progress import Progress

            from basecli.views.render import console

            self.bar = Progress(console=console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("scoring", total=total)
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False
