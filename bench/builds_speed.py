"""Decode speed of two versions of native.c, each build, in alternation: what the same bits in every build cost.

    python bench/builds_speed.py                         # main's native.c against this checkout's, 2 threads
    python bench/builds_speed.py --before HEAD~3 --builds native,avx2 --rounds 7

The embedded model is loaded once at q4 (its own blocks); every round times greedy decode at batch 1
and resample's N rows (sampled) with each library in turn, swapped under the loaded model, so a
ratio compares measurements taken seconds apart on a shared machine. Reports each round, and per
build and batch the median and best tok/s and two after/before ratios: the median of the rounds'
ratios, and the ratio of the bests (load only ever slows a run, so the bests are the least disturbed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's basecli, not an installed one

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="main", help="git revision whose basecli/engine/native.c is the baseline")
    ap.add_argument("--builds", default="native,avx2,portable", help="which BASECLI_NATIVE_BUILD builds to time")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("-n", type=int, default=16, help="rows of one prompt for the resample figure")
    ap.add_argument("--repeats", type=int, default=3, help="decode runs per figure; the fastest counts (least disturbed)")
    args = ap.parse_args()
    say = lambda m: print(f"builds_speed: {m}", file=sys.stderr)  # noqa: E731
    os.environ["BASECLI_THREADS"] = str(args.threads)

    from basecli.analyses import benchmark
    from basecli.backends.local import LocalBackend
    from basecli.engine import native

    libs, new = {}, native.SOURCES
    with tempfile.TemporaryDirectory() as tmp:
        old = tuple(Path(tmp) / path.name for path in new)  # native.c includes kquants.c from its own folder
        for path in old:
            path.write_bytes(subprocess.run(["git", "show", f"{args.before}:basecli/engine/{path.name}"], cwd=ROOT, check=True,
                                            capture_output=True).stdout)
        for build in args.builds.split(","):
            for label, sources in (("before", old), ("after", new)):
                native.SOURCE, native.SOURCES = sources[0], sources
                libs[build, label] = native.load(native.build(native.flag_sets(build)))
        native.SOURCE, native.SOURCES = new[0], new
    backend = LocalBackend(None, device="cpu", dtype="float32", quantize="q4")
    model = backend.model
    matrices = [model.head] + [m for layer in model.layers for m in (layer.qkv, layer.o, layer.gate_up, layer.down)]

    def use(lib) -> None:
        lib.basecli_set_threads(args.threads)
        model.native.lib = lib
        for m in matrices:
            m.lib = lib

    prompt = benchmark.prompt_ids(backend.tokenizer, args.prompt_tokens)
    batches = [1, args.n]

    def rate(batch: int) -> float:
        return benchmark.measure_decode(backend, batch, prompt, args.new_tokens, sampled=batch > 1, repeats=args.repeats).tokens_per_s

    say("warm-up")
    for lib in libs.values():
        use(lib)
        rate(1)
    rounds = []
    for r in range(args.rounds):
        row = {}
        for key, lib in libs.items():
            use(lib)
            for batch in batches:
                row[(*key, batch)] = rate(batch)
        rounds.append(row)
        say(f"round {r + 1}: " + ", ".join(f"{b}/{lab}/{n}: {v:.1f}" for (b, lab, n), v in row.items()))
    median = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    best = {k: max(x[k] for x in rounds) for k in rounds[0]}  # load only ever slows a run: the best is the least disturbed
    ratio = lambda x, build, n: x[build, "after", n] / x[build, "before", n]  # noqa: E731
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | q4, embedded model | {args.threads} threads | "
          f"prompt {len(prompt)} tokens, {args.new_tokens} new | {args.rounds} rounds, best of {args.repeats} | load avg {os.getloadavg()[0]:.1f}")
    print("| build | batch | before tok/s (median, best) | after tok/s (median, best) | after / before: median of rounds' ratios | of the bests |")
    print("|---|---|---|---|---|---|")
    for build in args.builds.split(","):
        for n in batches:
            per_round = statistics.median(ratio(x, build, n) for x in rounds)
            print(f"| {build} | {n} | {median[build, 'before', n]:.1f}, {best[build, 'before', n]:.1f} | "
                  f"{median[build, 'after', n]:.1f}, {best[build, 'after', n]:.1f} | {per_round:.3f} | {ratio(best, build, n):.3f} |")
    print(f"reproduce: python {' '.join(sys.argv)} (before = {args.before})")


if __name__ == "__main__":
    main()
