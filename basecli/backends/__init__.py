"""Where tokens come from: the local torch engine, or a remote OpenAI-compatible server.

A backend has `name`, `tokenizer`, `context_length`,
`stream(prompts, params, *, alternatives, entropy, seeds, truncate) -> Iterator[Event]` and
`score(text, *, context, alternatives, stride, progress) -> list[ScoredToken]`.
"""

from __future__ import annotations

import os


def open_backend(model: str | None = None, *, base_url: str | None = None, device: str = "auto", dtype: str = "auto",
                 trust_remote_code: bool = False, allow_pickle: bool = False, quantize: str | None = None,
                 prefix_cache: bool = False):
    """--base-url, or a saved profile named by --model, means a remote server; anything else is local.

    `quantize` is --quantize as given (LocalBackend reads BASECLI_QUANTIZE itself): a weight format for a local model.
    `prefix_cache` keeps the keys and values of recent prompts between generations (a local model; a server
    keeps its own, if it does).
    """
    from basecli.backends import profiles
    from basecli.config import default_model, quantize_mode

    quantize_mode(quantize)  # a bad value is refused before any model loads
    profile = None if base_url else profiles.get(model or default_model())
    if quantize and (base_url or profile is not None):
        from basecli.errors import UsageError

        raise UsageError("--quantize applies to local models; the server chooses its own weights")
    if base_url:
        from basecli.backends.remote import RemoteBackend

        # the key only ever comes from the environment; a profile names its own variable
        return RemoteBackend(base_url, model, api_key=os.environ.get("BASECLI_API_KEY") or None,
                             tokenizer=os.environ.get("BASECLI_TOKENIZER") or None)
    if profile is not None:
        from basecli.backends.remote import from_profile

        return from_profile(profile)
    from basecli.backends.local import LocalBackend

    return LocalBackend(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                        quantize=quantize, prefix_cache=prefix_cache)
