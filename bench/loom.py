"""Time to weave N=4 children at depth 1 and at depth 10 of a loom tree, with and without the prefix cache.

A tree is grown 10 levels deep (one child per level, -n tokens each) on the real model. Then, on the
same loaded model, each timed weave is N children of a node (what the `w` key does: loom/weave.py
through backend.stream), in the order a person weaves: the node's parent was woven just before, so
the prefix cache holds the parent's path. Without the cache every weave reads its whole path again.
Runs alternate between the two and the median is reported, so a busy machine affects both alike. The
time to the first token is reported too: it is the part of a weave the cache changes (reading the path);
the rest is decoding the N children, the same work at any depth but for attention over a longer path.

    python bench/loom.py [--model M] [-n 24] [-N 4] [--depth 10] [--repeats 3] [--device auto] [--dtype auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's basecli, not an installed one

PROMPT = "The 2031 World Cup final was won by"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("-n", type=int, default=24, help="new tokens per child")
    ap.add_argument("-N", type=int, default=4, help="children per weave")
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--quantize", default=None, help="q4, q8, fp16 or int8 (as --quantize)")
    args = ap.parse_args()

    from basecli.backends.local import LocalBackend
    from basecli.engine.prefix_cache import PrefixCache
    from basecli.loom import weave
    from basecli.loom.tree import Tree

    backend = LocalBackend(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize)
    settings = {"n": args.N, "max_tokens": args.n, "temperature": 1.0, "seed": 1}
    tree = Tree(PROMPT, settings=settings)
    spine = [tree.root]
    for _ in range(args.depth):  # the path: one child per level, each up to -n tokens
        spine.append(weave.weave(backend, tree, spine[-1], n=1)[0].id)
    length = {d: len(backend.encode(tree.text(spine[d]))) for d in (1, args.depth)}

    def sync():
        if backend.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def timed(depth: int, cached: bool) -> tuple[float, float]:
        """Seconds to the first token and to all N children of the node at `depth`, its parent woven just before (untimed)."""
        backend.prefix_cache = PrefixCache() if cached else None
        weave.generate(backend, tree, spine[depth - 1], args.N)
        first = []
        sync()
        t0 = time.perf_counter()
        weave.generate(backend, tree, spine[depth], args.N, on_event=lambda ev, rows: first or first.append(time.perf_counter()))
        sync()
        return first[0] - t0, time.perf_counter() - t0

    timed(1, True)  # warm-up
    runs: dict[tuple[int, bool], list[tuple[float, float]]] = {}
    for _ in range(args.repeats):
        for depth in (1, args.depth):
            for cached in (True, False):
                runs.setdefault((depth, cached), []).append(timed(depth, cached))
    first = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    total = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}

    print(f"model {backend.name} ({backend.engine}, {backend.device}, {str(backend.dtype).removeprefix('torch.')}"
          f"{', weights ' + backend.quantize if backend.quantize else ''}); N={args.N} children of {args.n} tokens; "
          f"path {length[1]} tokens at depth 1, {length[args.depth]} at depth {args.depth}; median of {args.repeats}")
    print("| depth | path tokens | prefix cache | first token | N children | N children vs depth 1 (same cache setting) |")
    print("|---|---|---|---|---|---|")
    for cached in (True, False):
        for depth in (1, args.depth):
            k = (depth, cached)
            print(f"| {depth} | {length[depth]} | {'on' if cached else 'off'} | {first[k]:.3f} s | {total[k]:.3f} s | "
                  f"{total[k] / total[(1, cached)]:.2f}x |")
    d = args.depth
    print(f"depth {d}, cache on vs off: first token {first[(d, False)] / first[(d, True)]:.2f}x sooner, "
          f"N children {total[(d, False)] / total[(d, True)]:.2f}x faster")


if __name__ == "__main__":
    main()
