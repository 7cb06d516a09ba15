"""Aggregate decode throughput of `resample -N 16` against batch-1 `complete`, in one run.

Both go through the same code the commands use (backend.stream / batching.stream_rows) on the
same loaded model, same prompt, same number of new tokens (end-of-text ignored so every row
makes exactly -n tokens). Runs alternate and the median is reported, so a busy machine
affects both sides alike.

    python bench/resample_throughput.py [--model M] [-n 64] [-N 16] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's basecli, not an installed one

PROMPT = "The 2024 US presidential election was won by"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-N", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()

    from basecli.backends.local import LocalBackend
    from basecli.backends.batching import seeded, stream_rows
    from basecli.config import SamplingParams

    backend = LocalBackend(args.model, device=args.device, dtype=args.dtype)
    base = SamplingParams(max_tokens=args.n, temperature=1.0, ignore_eos=True)

    def sync():
        if backend.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def one() -> float:
        sync()
        t0 = time.perf_counter()
        count = sum(1 for _ in backend.stream([PROMPT], [base.with_(seed=1)]))
        sync()
        return count / (time.perf_counter() - t0)

    def many() -> float:
        params = seeded([base] * args.N, 1)
        sync()
        t0 = time.perf_counter()
        count = sum(1 for _ in stream_rows(backend, [PROMPT] * args.N, params))
        sync()
        return count / (time.perf_counter() - t0)

    one(), many()  # warm-up: first-call allocations and kernel choices
    singles, batches = [], []
    for _ in range(args.repeats):
        singles.append(one())
        batches.append(many())
    s, b = statistics.median(singles), statistics.median(batches)
    print(f"model {backend.name} on {backend.device} ({str(backend.dtype).replace('torch.', '')}), prompt {len(backend.encode(PROMPT))} tokens, "
          f"-n {args.n}, median of {args.repeats}")
    print(f"complete (batch 1):      {s:8.1f} tok/s   runs: {', '.join(f'{x:.1f}' for x in singles)}")
    print(f"resample -N {args.N:<3} (1 batch): {b:8.1f} tok/s   runs: {', '.join(f'{x:.1f}' for x in batches)}")
    print(f"ratio: {b / s:.2f}x aggregate tokens per second")


if __name__ == "__main__":
    main()
