"""bench/gpu.sh end to end on the CPU (--dry-run, tiny shapes), so the GPU script cannot rot between GPU runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the whole script, torch.compile included: ~6 s
def test_gpu_bench_dry_run_prints_every_row_and_the_greedy_check():
    out = subprocess.run([str(ROOT / "bench" / "gpu.sh"), "--dry-run", "--batches", "2", "--compile-batches", "2", "--new-tokens", "4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| tiny")]
    engines = ("HF generate, eager", "HF generate, static cache + compile", "basecli", "basecli, sampled (top-p 0.9)")
    assert [tuple(c.strip() for c in r.split("|")[1:4]) for r in rows] == [
        (m, "2", e) for m in ("tiny GPT-2", "tiny Llama") for e in engines]
    for r in rows:  # a rate and a step time, not "failed" or "skipped"
        assert re.match(r"\| [^|]+ \| 2 \| [^|]+ \| \d+\.\d \| \d+\.\d\d \|", r), r
    assert "- tiny Llama, fp32, 4 tokens, 3 rows of one prompt: greedy tokens identical to `generate`" in out.stdout
