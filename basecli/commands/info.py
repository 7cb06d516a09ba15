"""basecli info: a released model is code plus parameters; show both, and where they came from."""

from __future__ import annotations

import json
import sys

from basecli import options as o


def info(
    model: o.Model = None,
    json_out: o.Json = False,
    device: o.Device = "auto",
    dtype: o.Dtype = "auto",
    trust_remote_code: o.TrustRemoteCode = False,
    allow_pickle: o.AllowPickle = False,
):
    """Architecture, parameter counts by component, provenance (sha256, licence), tokenizer and the code that runs the model.

    \b
    Examples:
      basecli info
      basecli info -m gpt2 --json | jq .parameters
    """
    from basecli.backends.local import LocalBackend
    from basecli.modelinfo import describe

    backend = LocalBackend(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    d = describe(backend)
    if json_out:
        sys.stdout.write(json.dumps(d, ensure_ascii=False) + "\n")
        return
    from basecli.views import info as view

    view.show(d)
