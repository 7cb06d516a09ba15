"""Is a model directory whole? Cheap checks at load (config.json and safetensors headers, a few
kilobytes read), and the one line that says what to do about a damaged one: basecli's own cache
is rebuilt or named for deletion, a user's own folder is named with what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

from basecli import config
from basecli.errors import UsageError


def damage(folder: Path) -> str | None:
    """What is wrong with a model directory that has every file at its size (config.json that is
    not a JSON object, a safetensors header that does not parse or points past its file), or None.
    Reads a few kilobytes; the weights' values are checked at the first step (non-finite logits)."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no config.json"
    except (OSError, ValueError) as e:
        return f"config.json does not parse: {type(e).__name__}"
    if not isinstance(cfg, dict):
        return "config.json is not a JSON object"
    for f in sorted(folder.glob("*.safetensors")):
        problem = _safetensors_damage(f)
        if problem:
            return f"{f.name}: {problem}"
    return None


def _safetensors_damage(path: Path) -> str | None:
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            return "its header length points past the end of the file"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    if len(ends) != len(header) - ("__metadata__" in header) or not all(isinstance(e, int) for e in ends):
        return "its header does not describe tensors"
    if 8 + n + max(ends, default=0) > size:
        return "its tensors run past the end of the file"
    return None


def cache_hint(folder: Path) -> str:
    """'; delete X ...' when `folder` is (inside) basecli's cache, which it rebuilds; '' for the user's own files."""
    root = config.home()
    if folder == root or root in folder.parents:
        top = folder
        while top.parent != root and top.parent.parent != root:
            top = top.parent
        return f"; basecli's cache at {top} is damaged: delete that directory and basecli rebuilds it"
    return ""


def check_folder(folder: Path) -> None:
    """A UsageError naming what is broken in a model directory and what to do about it."""
    problem = damage(folder)
    if problem:
        hint = cache_hint(folder) or "; replace the damaged file"
        raise UsageError(f"cannot load the model in {folder}: {problem}{hint}")
