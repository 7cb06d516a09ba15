"""Saved remote models: a short name for (server URL, model id, the environment variable with the key).

Kept as JSON in config.config_dir()/profiles.json. The API key itself is never stored, printed
or logged: a profile holds only the NAME of the environment variable the key is read from.
Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from basecli import config
from basecli.errors import UsageError

FILE = "profiles.json"
KINDS = ("auto", "vllm", "llamacpp", "llama-cpp-python", "openai")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Profile:
    name: str
    base_url: str  # ends in /v1, where /completions lives
    model: str | None = None  # the server's model id; None = the first one the server lists
    api_key_env: str | None = None  # name of the environment variable holding the key
    kind: str = "auto"  # which server software, for its parameter names; auto = ask the server
    tokenizer: str | None = None  # a local tokenizer (tiktoken encoding, alias, directory) if the server has none
    context_length: int | None = None  # if the server does not say

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise UsageError(f"profile {self.name!r} reads its API key from ${self.api_key_env}, which is not set; "
                             f"export {self.api_key_env}=... first")
        return key


def path() -> Path:
    return config.config_dir() / FILE


def normalise_url(url: str) -> str:
    """http://host:8000 and http://host:8000/v1/ both mean http://host:8000/v1."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--base-url must be an http(s) URL such as http://localhost:8000/v1, got {url!r}")
    if parts.path in ("", "/"):
        url += "/v1"
    return url


def check_env_name(name: str) -> str:
    if not _ENV_NAME.match(name):
        # never echo the value: people paste the key itself here by mistake
        raise UsageError("--api-key-env takes the NAME of an environment variable (e.g. TOGETHER_API_KEY), "
                         "not the key itself; export the key in that variable")
    return name


def load_all() -> dict[str, Profile]:
    p = path()
    if not p.is_file():
        return {}
    try:
        raw = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the profiles file {p}: {e}; fix or delete it") from None
    known = {f.name for f in fields(Profile)}
    out = {}
    for name, entry in (raw.get("profiles") or {}).items():
        if isinstance(entry, dict) and entry.get("base_url"):
            out[name] = Profile(**{k: v for k, v in entry.items() if k in known and k != "name"}, name=name)
    return out


def get(name: str | None) -> Profile | None:
    if not name:
        return None
    return load_all().get(name)


def add(profile: Profile, *, replace: bool = False) -> Path:
    from basecli.weights.models import ALIASES

    if not _PROFILE_NAME.match(profile.name):
        raise UsageError(f"profile name {profile.name!r}: use letters, digits, '.', '_' or '-' (no '/', which means a hub id)")
    if profile.name.lower() in ALIASES:
        raise UsageError(f"{profile.name!r} is already a local model alias; pick another profile name")
    if profile.kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}, got {profile.kind!r}")
    if profile.api_key_env:
        check_env_name(profile.api_key_env)
    profile = Profile(**{**asdict(profile), "base_url": normalise_url(profile.base_url)})
    profiles = load_all()
    if profile.name in profiles and not replace:
        raise UsageError(f"a profile named {profile.name!r} exists; remove it first or pass --replace")
    profiles[profile.name] = profile
    _save(profiles)
    return path()


def remove(name: str) -> None:
    profiles = load_all()
    if name not in profiles:
        have = ", ".join(sorted(profiles)) or "none"
        raise UsageError(f"no profile named {name!r} (profiles: {have})")
    del profiles[name]
    _save(profiles)


def _save(profiles: dict[str, Profile]) -> None:
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    data = {"profiles": {n: {k: v for k, v in asdict(p).items() if k != "name" and v is not None}
                         for n, p in sorted(profiles.items())}}
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=FILE + ".")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, target)
