"""basecli info: a released model is code plus parameters; show both, and where they came from."""

from __future__ import annotations

from basecli import options as o
from basecli.views.records import write_json


@o.grouped
def info(
    model: o.ModelChoice = o.model_choice(),
    json_out: o.Json = False,
):
    """Architecture, parameter counts by component, provenance (sha256, licence), tokenizer and the code that runs the model.

    \b
    Examples:
      basecli info
      basecli info -m gpt2 --json | jq .parameters
      basecli info --base-url http://localhost:8000/v1
    """
    from basecli.weights.modelinfo import describe

    backend = model.open()
    if not backend.local:  # a server: its weights and code are out of sight, only what the API says
        return _remote(backend, json_out)
    d = describe(backend)
    if json_out:
        write_json(d)
        return
    from basecli.views import info as view

    view.show(d)


def _remote(backend, json_out: bool) -> None:
    tok = backend.tokenizer
    d = {"model": backend.name, "server": {"base_url": backend.base_url, "kind": backend.kind},
         "context_length": backend.context_length, "context_length_from": backend.context_source,
         "tokenizer": {"from": "local" if tok._local is not None else ("server" if tok.available else None),
                       "vocab_size": tok.vocab_size if tok._local is not None else None},
         "load_s": round(backend.load_seconds, 3),
         "not_visible": "architecture, parameters, provenance and code: the server does not expose them"}
    if json_out:
        write_json(d)
        return
    print(f"model: {d['model']}")
    print(f"server: {d['server']['base_url']} ({d['server']['kind']})")
    how = " (assumed: the server does not say; models add --context-length sets it)" if backend.context_source == "assumed" else ""
    print(f"context window: {d['context_length']} tokens{how}")
    print(f"tokenizer: {d['tokenizer']['from'] or 'none (name one with BASECLI_TOKENIZER)'}")
    print("architecture, parameters, provenance and code: not visible through the API (run `basecli info` where the model is)")
