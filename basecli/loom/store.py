"""Where a tree lives on disk: one JSON file, replaced atomically after every change.

The new version is written beside the file, flushed to the disk, then renamed over it: a
crash (or `kill -9`) at any moment leaves either the old tree or the new one, never half of
either. What a crash can lose is only what had not been saved yet: a generation in flight.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from basecli.config import home
from basecli.errors import UsageError
from basecli.loom.tree import Tree


def looms_dir() -> Path:
    return home() / "looms"


def new_path(prompt: str) -> Path:
    """A fresh file under BASECLI_HOME/looms/, named for when it was made and how the prompt starts."""
    import time

    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower())[:40].strip("-") or "tree"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = looms_dir()
    path = folder / f"{stamp}-{slug}.json"
    k = 1
    while path.exists():
        k += 1
        path = folder / f"{stamp}-{slug}-{k}.json"
    return path


def save(tree: Tree, path: Path) -> None:
    """Write the tree to `path` atomically (temporary file, fsync, rename, fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one line: with indent, json falls back to its pure-Python encoder, several times slower on a big tree
    data = json.dumps(tree.to_dict(), ensure_ascii=False, separators=(",", ":"))
    tmp = path.with_name(f".{path.name}.saving")  # one name: a save killed half-way is overwritten by the next
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # the rename itself reaches the disk only when the folder does
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: Path) -> Tree:
    """The tree in `path`, or a UsageError saying why it cannot be read (the file is left as it is)."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"no loom tree at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    try:
        return Tree.from_dict(json.loads(raw))
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}); is it a loom tree?") from None
    except ValueError as e:
        raise UsageError(f"{path}: {e}") from None


def is_tree_file(arg: str) -> bool:
    """Whether a command-line argument names a tree file rather than being a prompt: it ends in .json and is
    a file, or looks like a path (no spaces) - "Parse this as data.json" is a prompt."""
    return arg.endswith(".json") and "\n" not in arg and (Path(arg).exists() or not any(c.isspace() for c in arg))


class Store:
    """A tree bound to its file: `changed()` after every edit saves it."""

    def __init__(self, tree: Tree, path: Path):
        self.tree, self.path = tree, Path(path)

    def changed(self) -> None:
        save(self.tree, self.path)
