"""Chat transcripts: one JSONL file per conversation under BASECLI_HOME/transcripts.

Each user message and each answer is its own line, written, flushed and fsynced at once,
so a crash or kill -9 loses at most the answer being generated. Records:
  {"type": "start", "template": ..., "model": ..., "created": ...}
  {"type": "user", "text": ...}      {"type": "assistant", "text": ..., "finish_reason": ...}
  {"type": "undo"}                   {"type": "reset"}
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from basecli.config import home
from basecli.errors import UsageError


def folder() -> Path:
    return home() / "transcripts"


def private_file(path: Path) -> Path:
    """`path` created (or kept) readable by its owner only, in a folder only the owner can list:
    conversations are nobody else's business."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return path


class Transcript:
    def __init__(self, path: Path):
        self.path = path
        private_file(path)
        self._f = open(path, "a", encoding="utf-8")

    @classmethod
    def new(cls, template: str, model: str, name: str | None = None) -> "Transcript":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = folder() / f"{name or stamp}.jsonl"
        n = 1
        while path.exists():  # two chats started in the same second keep separate files
            path = folder() / f"{name or stamp}-{n}.jsonl"
            n += 1
        t = cls(path)
        t.write({"type": "start", "template": template, "model": model, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return t

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def find(name: str | None) -> Path:
    """A transcript by path or name (without .jsonl); None means the most recent one."""
    if name:
        for p in (Path(name), folder() / name, folder() / f"{name}.jsonl"):
            if p.is_file():
                return p
        raise UsageError(f"no transcript {name!r} (looked in {folder()}); list them with: ls {folder()}")
    files = sorted(folder().glob("*.jsonl"), key=lambda p: p.stat().st_mtime) if folder().is_dir() else []
    if not files:
        raise UsageError(f"--resume: no transcripts yet in {folder()}; start a chat first")
    return files[-1]


def replay(path: Path) -> tuple[dict, list[tuple[str, str]]]:
    """The start record and the completed turns, undo and reset applied.

    A message whose answer never arrived (the process died while generating) is dropped;
    so is a last line cut short by a crash mid-write."""
    header: dict = {}
    turns: list[tuple[str, str]] = []
    pending: str | None = None
    from basecli.text.inputs import read_file

    lines = read_file(path).splitlines()
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                print(f"basecli: warning: {path} line {n} was cut short by a crash; ignored", file=sys.stderr)
                continue
            raise UsageError(f"{path} line {n} is not JSON; is this a basecli transcript?") from None
        kind = rec.get("type") if isinstance(rec, dict) else None
        text = rec.get("text") if isinstance(rec, dict) else None
        if kind in ("user", "assistant") and not isinstance(text, str):
            raise UsageError(f"{path} line {n} is a {kind} record without text; is this a basecli transcript?")
        if kind == "start":
            header = rec
        elif kind == "user":
            pending = text
        elif kind == "assistant" and pending is not None:
            turns.append((pending, text))
            pending = None
        elif kind == "undo" and turns:
            turns.pop()
        elif kind == "reset":
            turns.clear()
    if pending is not None:
        print(f"basecli: note: the last message ({pending[:40]!r}) got no answer before the chat ended; it was not resumed",
              file=sys.stderr)
    return header, turns
