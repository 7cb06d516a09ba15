"""basecli complete: continue a prompt, the base model's one trick."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from basecli import options as o
PromptArg = Annotated[Optional[str], typer.Argument(help="The prompt text, '-' for stdin, or @FILE. Read from stdin when omitted and piped.")]


def complete(
    prompt: PromptArg = None,
    model: o.Model = None,
    max_tokens: o.MaxTokens = 128,
    temperature: o.Temperature = 1.0,
    top_k: o.TopK = 0,
    top_p: o.TopP = 1.0,
    min_p: o.MinP = 0.0,
    repetition_penalty: o.RepetitionPenalty = 1.0,
    seed: o.Seed = None,
    stop: o.Stop = None,
    ignore_eos: o.IgnoreEos = False,
    json_out: o.Json = False,
    show_probs: Annotated[bool, typer.Option("--show-probs", help="Colour each new token by its probability.")] = False,
    alternatives: Annotated[int, typer.Option("--alternatives", help="List the top K alternatives for each new token.", min=0, max=20)] = 0,
    truncate: o.Truncate = False,
    base_url: o.BaseUrl = None,
    device: o.Device = "auto",
    dtype: o.Dtype = "auto",
    quantize: o.Quantize = None,
    trust_remote_code: o.TrustRemoteCode = False,
    allow_pickle: o.AllowPickle = False,
):
    """Continue PROMPT with the model, streaming the new text.

    \b
    Examples:
      basecli complete "Here's my top-10 list of the top landmarks to see in Paris:" -n 60
      basecli complete "The meaning of life is" -t 0 --show-probs
      echo "Once upon a time" | basecli complete - --json | jq .completion
    """
    from basecli.backends import open_backend
    from basecli.config import fresh_seed
    from basecli.text.inputs import read_text
    from basecli.views.records import Timer, completion_record
    from basecli.views import render
    text = read_text(prompt)
    params = o.sampling(max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop, ignore_eos)
    if params.seed is None:  # record the seed actually used, so any run can be repeated
        params = params.with_(seed=fresh_seed())
    backend = open_backend(model, base_url=base_url, device=device, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                           quantize=quantize)
    timer = Timer(getattr(backend, "load_seconds", None))
    k = alternatives or (5 if json_out else 0)  # JSON carries a few alternatives unless told how many

    events = timer.timed(backend.stream([text], [params], alternatives=k, truncate=truncate))
    if json_out:
        events = list(events)  # timings are read once generation is over
        record = completion_record(model=backend.name, prompt=text, events=events, params=params,
                                   tokenizer=backend.tokenizer, timings=timer.as_dict())
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    seen = render.stream_completion(text, events, show_probs=show_probs)
    if alternatives:
        render.alternatives_table(backend.tokenizer, seen, alternatives)
