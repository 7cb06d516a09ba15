"""The static-cache decode path against the plain loop on this machine, in one run (which should be the CPU default).

Same loaded model, same prompt, same new tokens (end-of-text ignored), greedy; the two paths
alternate round by round (BASECLI_DECODE switched between them) and the median is reported.

    python bench/static_cpu.py [--model M] [-n 32] [--batch 1,16] [--repeats 3] [--dtype auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's basecli, not an installed one

PROMPT = "The 2024 US presidential election was won by"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()

    from basecli.backends.local import LocalBackend
    from basecli.config import SamplingParams

    backend = LocalBackend(args.model, device="cpu", dtype=args.dtype)
    print(f"model {backend.name}, engine {backend.engine}, dtype {backend.dtype}, {args.n} new tokens, greedy, same prompt per row")
    print("| rows | plain tok/s | static tok/s | static / plain |\n|---|---|---|---|")
    for batch in (int(b) for b in args.batch.split(",")):
        params = [SamplingParams(max_tokens=args.n, temperature=0, ignore_eos=True)] * batch
        rates = {"plain": [], "static": []}
        for _ in range(args.repeats):
            for path in rates:
                os.environ["BASECLI_DECODE"] = path
                t0 = time.perf_counter()
                count = sum(1 for _ in backend.stream([PROMPT] * batch, params))
                rates[path].append(count / (time.perf_counter() - t0))
        plain, static = statistics.median(rates["plain"]), statistics.median(rates["static"])
        print(f"| {batch} | {plain:.1f} | {static:.1f} | {static / plain:.2f}x |")


if __name__ == "__main__":
    main()
