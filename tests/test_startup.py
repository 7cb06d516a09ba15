"""Start-up: `basecli --help` must not pay for torch or transformers (about 2 s of imports)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "tiktoken", "rich.markdown", "pygments")

# Runs the real entry point, then reports which heavy modules it imported. The exit of
# `--help` is a SystemExit, caught so the report still gets written.
PROBE = """
import json, sys
watch = json.loads(sys.argv[2])
sys.argv = ["basecli", *json.loads(sys.argv[1])]
from basecli.cli import main
try:
    main()
except SystemExit:
    pass
heavy = sorted(m for m in watch if m in sys.modules)
print(json.dumps(heavy), file=sys.stderr)
"""


def imported_by(*args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(args)), json.dumps(HEAVY)],
                         capture_output=True, text=True, timeout=60)
    return json.loads(out.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["complete", "--help"], ["bench", "--help"], ["--version"]])
def test_help_imports_no_torch_or_transformers(args):
    assert imported_by(*args) == []
