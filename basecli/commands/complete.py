"""basecli complete: continue a prompt, the base model's one trick."""

from __future__ import annotations

from typing import Annotated

import typer

from basecli import options as o
from basecli.views.records import write_json
from basecli.config import SamplingParams


@o.grouped
def complete(
    prompt: o.PromptArg = None,
    model: o.ModelChoice = o.model_choice(),
    params: SamplingParams = o.sampling(max_tokens=128),
    json_out: o.Json = False,
    show_probs: Annotated[bool, typer.Option("--show-probs", help="Colour each new token by its probability.")] = False,
    alternatives: Annotated[int, typer.Option("--alternatives", help="List the top K alternatives for each new token.", min=0, max=20)] = 0,
    truncate: o.Truncate = False,
):
    """Continue PROMPT with the model, streaming the new text.

    \b
    Examples:
      basecli complete "Here's my top-10 list of the top landmarks to see in Paris:" -n 60
      basecli complete "The meaning of life is" -t 0 --show-probs
      echo "Once upon a time" | basecli complete - --json | jq .completion
    """
    from basecli.text.inputs import read_text
    from basecli.views.records import Timer, completion_record, gather
    from basecli.views import render

    o.at_most_one(json=json_out, show_probs=show_probs)
    text = read_text(prompt)
    backend = model.open()
    timer = Timer(backend.load_seconds)
    k = alternatives or (5 if json_out else 0)  # JSON carries a few alternatives unless told how many

    events = timer.timed(backend.stream([text], [params], alternatives=k, truncate=truncate))
    if json_out:
        events = gather(events)  # timings are read once generation is over; Ctrl-C keeps what came
        record = completion_record(model=backend.name, prompt=text, events=events, params=params,
                                   tokenizer=backend.tokenizer, timings=timer.as_dict())
        write_json(record)
        return
    seen = render.stream_completion(text, events, show_probs=show_probs)
    if alternatives:
        render.alternatives_table(backend.tokenizer, seen, alternatives)
