"""Where the time to the first token goes: `basecli complete -n 1` in fresh processes, split by stage.

    python bench/startup_breakdown.py [--repeats 5] [--model M] [--engine auto|lean|transformers]

Each run is a new interpreter that runs the real CLI with a clock around each stage (torch
import, tokenizer, weights, first forward pass) and the peak resident memory after it; the
table shows the median of the runs, and the whole process start to first token as the parent
saw it (the first byte `complete` prints into the pipe). Run it on a quiet machine: every
figure here is bounded by CPU time, so other processes' load adds to all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, os, sys, time
T0 = time.perf_counter()
marks = []
def mark(stage):
    status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
    marks.append((stage, time.perf_counter() - T0, int(status["VmHWM"].split()[0]) / 1024))
from basecli import cli
from basecli.weights import models
from basecli.backends import local
mark("basecli.cli imported")
def wrap(module, name, stage):
    inner = getattr(module, name)
    def timed(*a, **k):
        out = inner(*a, **k)
        mark(stage)
        return out
    setattr(module, name, timed)
wrap(local, "import_torch", "import torch")
wrap(models, "model_dir", "model resolved, cache checked")
wrap(models, "tokenizer_for", "tokenizer")
wrap(local, "load_lean", "weights (lean engine)")
wrap(local, "load_weights", "weights (transformers)")
stream = local.LocalBackend.stream
def first_step(*a, **k):  # importing the loop here would import torch before the CLI does
    events = stream(*a, **k)
    first = next(events)
    mark("first token (prefill + sample)")
    yield first
    yield from events
local.LocalBackend.stream = first_step
sys.argv = ["basecli", *json.loads(os.environ["BREAKDOWN_ARGS"])]
try:
    cli.main()
except SystemExit:
    pass
print(json.dumps(marks), file=sys.stderr)
"""


def run_once(args: list[str], env: dict) -> tuple[list, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, BREAKDOWN_ARGS=json.dumps(args), **env))
    first = None
    while chunk := os.read(proc.stdout.fileno(), 1 << 16):
        first = first if first is not None else time.perf_counter() - t0
    err = proc.stderr.read().decode()
    proc.wait()
    return json.loads(err.strip().splitlines()[-1]), first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default=None)
    ap.add_argument("--engine", default="auto")
    opts = ap.parse_args()
    args = ["complete", "The capital of France is", "-n", "1", "-t", "0"] + (["--model", opts.model] if opts.model else [])
    runs = [run_once(args, {"BASECLI_ENGINE": opts.engine}) for _ in range(opts.repeats)]
    stages = [name for name, _, _ in runs[0][0]]
    print(f"basecli complete -n 1, engine {opts.engine}, {opts.repeats} fresh processes, load average "
          f"{os.getloadavg()[0]:.2f}; medians")
    print(f"{'stage':<34} {'ends at':>8} {'takes':>7} {'peak RSS':>9}")
    before = 0.0
    for i, name in enumerate(stages):
        at = statistics.median(r[0][i][1] for r in runs if len(r[0]) > i)
        hwm = statistics.median(r[0][i][2] for r in runs if len(r[0]) > i)
        print(f"{name:<34} {at:7.2f}s {at - before:6.2f}s {hwm:7.0f} MiB")
        before = at
    firsts = [f for _, f in runs if f is not None]
    print(f"{'process start to first token':<34} {statistics.median(firsts):7.2f}s  (fastest {min(firsts):.2f} s)")


if __name__ == "__main__":
    main()
