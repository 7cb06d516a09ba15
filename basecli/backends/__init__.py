"""Where tokens come from: the local torch engine, or a remote OpenAI-compatible server.

A backend has `name`, `tokenizer`, `context_length` and
`stream(prompts, params, *, alternatives, entropy, seeds, truncate) -> Iterator[Event]`.
"""

from __future__ import annotations


def open_backend(model: str | None = None, *, base_url: str | None = None, device: str = "auto", dtype: str = "auto",
                 trust_remote_code: bool = False, allow_pickle: bool = False):
    if base_url:
        from basecli.errors import UsageError

        raise UsageError("--base-url: the remote backend is not built yet")
    from basecli.backends.local import LocalBackend

    return LocalBackend(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
