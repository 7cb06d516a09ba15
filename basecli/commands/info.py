"""basecli info: a released model is code plus parameters; show both, and where they came from."""

from __future__ import annotations

import json
import sys

from basecli import options as o
def info(
    model: o.Model = None,
    json_out: o.Json = False,
    base_url: o.BaseUrl = None,
    device: o.Device = "auto",
    dtype: o.Dtype = "auto",
    quantize: o.Quantize = None,
    trust_remote_code: o.TrustRemoteCode = False,
    allow_pickle: o.AllowPickle = False,
):
    """Architecture, parameter counts by component, provenance (sha256, licence), tokenizer and the code that runs the model.

    \b
    Examples:
      basecli info
      basecli info -m gpt2 --json | jq .parameters
      basecli info --base-url http://localhost:8000/v1
    """
    from basecli.backends import open_backend
    from basecli.weights.modelinfo import describe

    backend = open_backend(model, base_url=base_url, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                           allow_pickle=allow_pickle, quantize=quantize)
    if not hasattr(backend, "folder"):  # a server: its weights and code are out of sight, only what the API says
        return _remote(backend, json_out)
    d = describe(backend)
    if json_out:
        sys.stdout.write(json.dumps(d, ensure_ascii=False) + "\n")
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
        sys.stdout.write(json.dumps(d, ensure_ascii=False) + "\n")
        return
    print(f"model: {d['model']}")
    print(f"server: {d['server']['base_url']} ({d['server']['kind']})")
    how = " (assumed: the server does not say; models add --context-length sets it)" if backend.context_source == "assumed" else ""
    print(f"context window: {d['context_length']} tokens{how}")
    print(f"tokenizer: {d['tokenizer']['from'] or 'none (name one with BASECLI_TOKENIZER)'}")
    print("architecture, parameters, provenance and code: not visible through the API (run `basecli info` where the model is)")
