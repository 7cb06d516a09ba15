"""Every output shown in README.md and docs/*.md is made by running the command shown with it.

    python docs/outputs.py                 # regenerate every output in place
    python docs/outputs.py --check         # exit 1 and show a diff where a shown output differs
    python docs/outputs.py --check --fast  # only the commands that load no model weights
    python docs/outputs.py docs/cli.md     # some files only

Two forms are run:

- a ```console block: each line starting with `$ ` is a command (a line ending in `\\` continues
  it); the lines after it, up to the next command or the end of the block, are its output, stdout
  and stderr as a terminal shows them.
- a region `<!-- output: COMMAND -->` ... `<!-- /output -->`: its text is the command's stdout,
  for Markdown the command writes itself (the demo scans' tables), under a line naming the command.

Durations and speeds (`1.2 s`, `35 ms`, `13 tok/s`) are not compared. Commands run under bash in
the repository root with DOC_ENV (no colours, 100 columns, this checkout's basecli, one thread,
the q4 kernels); the home directory in an output is written `~`.
Blocks marked ```bash or ```text are never run: a `$ ` prompt belongs only in console blocks.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC_ENV = {
    "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "100", "LINES": "50",
    # one thread: a matrix product split across threads can round differently with their number
    "BASECLI_THREADS": "1", "OMP_NUM_THREADS": "1",
    # the embedded model's own Q4_1/Q8_0 blocks on basecli's kernels: the same tokens on AVX2 and AVX-512
    # CPUs (checked with BASECLI_NATIVE_BUILD=avx2), where bf16/fp32 torch paths vary with the CPU
    "BASECLI_QUANTIZE": "q4",
    "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT),
}
# commands that load no model weights: run on every test run, the others under `slow`
FAST = re.compile(r"^basecli (tokenize|template|--help|--version|-h)\b|^basecli( [a-z-]+)* (-h|--help)$|^basecli models list$")
REGION = re.compile(r"^<!-- output: (?P<command>.+) -->$")
REGION_END = "<!-- /output -->"
# durations and speeds differ from run to run: compared as a placeholder, written afresh
TIMING = re.compile(r"\d+(?:\.\d+)?(?: ?(?:s|ms|tok/s)\b)")
JSON_TIMING = re.compile(r'("[a-z_]*_(?:s|per_s)": )(?:\d+(?:\.\d+)?|null)')


def masked(text: str) -> str:
    return TIMING.sub("<time>", JSON_TIMING.sub(r"\1<time>", text))


@dataclass
class Shown:
    """One command in a document and the output shown for it (lines [start, end) of the file)."""
    path: Path
    command: str
    output: str
    start: int
    end: int
    region: bool  # an <!-- output --> region rather than a console block

    @property
    def fast(self) -> bool:
        return all(FAST.search(part.strip()) or not part.strip().startswith("basecli")
                   for part in re.split(r"\||&&|;", self.command)) and "python " not in self.command

    def where(self) -> str:
        """file:line of the command (of the region's marker)."""
        return f"{_shown_path(self.path)}:{self.start}"


def _shown_path(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def parse(path: Path) -> list[Shown]:
    lines = path.read_text().split("\n")
    found, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```console":
            i = _console_block(path, lines, i + 1, found)
        elif match := REGION.match(lines[i].strip()):
            end = lines.index(REGION_END, i + 1)
            found.append(Shown(path, match["command"], "\n".join(lines[i + 1:end]), i + 1, end, True))
            i = end + 1
        else:
            i += 1
    return found


def _console_block(path: Path, lines: list[str], i: int, found: list[Shown]) -> int:
    """Adds the commands of the block that starts at line i; returns the line after its fence."""
    end = next(j for j in range(i, len(lines)) if lines[j].strip() == "```")
    while i < end:
        if not lines[i].startswith("$ "):
            raise ValueError(f"{path.name}:{i + 1}: a console block holds `$ command` lines and their output")
        command, i = lines[i][2:], i + 1
        while command.endswith("\\"):
            command, i = command + "\n" + lines[i], i + 1  # bash joins the lines itself
        start = i
        while i < end and not lines[i].startswith("$ "):
            i += 1
        found.append(Shown(path, command, "\n".join(lines[start:i]), start, i, False))
    return end + 1


def run(command: str) -> str:
    """What the command shows: stdout and stderr in one stream, trailing blank lines dropped."""
    env = {**os.environ, **DOC_ENV}
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    if "Traceback (most recent call last)" in result.stdout:  # basecli never shows one: a bug, not an example
        raise RuntimeError(f"`{command}` crashed:\n{result.stdout[-3000:]}")
    text = result.stdout.replace(str(Path.home()), "~").replace(str(ROOT) + "/", "")
    return "\n".join(line.rstrip() for line in text.rstrip().split("\n"))


def expected(shown: Shown) -> str:
    out = run(shown.command)
    if shown.region:  # the Markdown a command writes, under the command
        return f"\n*Made by* `{shown.command}`:\n\n{out}\n"
    return out


def check(shown: list[Shown]) -> list[str]:
    """A diff for every shown output that differs from what its command prints now."""
    problems = []
    for item in shown:
        now = expected(item)
        if masked(now) != masked(item.output):
            diff = difflib.unified_diff(item.output.split("\n"), now.split("\n"), "shown", "now", lineterm="", n=1)
            problems.append(f"{item.where()}: `{item.command}` prints something else now:\n" + "\n".join(diff))
    return problems


def regenerate(path: Path, shown: list[Shown]) -> bool:
    """Writes every output of `path` afresh; True when the file changed."""
    lines = path.read_text().split("\n")
    for item in sorted(shown, key=lambda s: s.start, reverse=True):  # bottom up: line numbers stay valid
        now = expected(item)
        if masked(now) == masked(item.output):
            continue  # only durations moved: keep the file as it is
        lines[item.start:item.end] = now.split("\n") if now else []
    text = "\n".join(lines)
    changed = text != path.read_text()
    if changed:
        path.write_text(text)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="documents (default: README.md and docs/*.md)")
    parser.add_argument("--check", action="store_true", help="report drift instead of rewriting")
    parser.add_argument("--fast", action="store_true", help="only commands that load no model weights")
    args = parser.parse_args(argv)
    problems = []
    for path in [p.resolve() for p in args.files] or documents():
        shown = [s for s in parse(path) if s.fast or not args.fast]
        if args.check:
            problems += check(shown)
        elif regenerate(path, shown):
            print(f"rewrote {_shown_path(path)}", file=sys.stderr)
    for problem in problems:
        print(problem, end="\n\n")
    if problems:
        print(f"{len(problems)} shown output(s) are stale: run `python docs/outputs.py` and review the diff",
              file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
