"""basecli against llama.cpp in alternation: the ratios of measurements taken seconds apart.

    python bench/interleaved.py                       # --quantize q4, 2 threads, 5 rounds
    python bench/interleaved.py --quantize q8 --rounds 9 --json

compare.py runs each engine once, one after the other, so on a shared machine a ratio can carry
a minute's change in the machine's speed (llama.cpp's own batch 1 moved by 15% between runs
here). This script loads both once, then in every round times basecli at batch 1, llama.cpp at
batch 1 and basecli's N samples of one prompt (resample), each after the other, and reports each
round's ratios and their median. Both run greedy at batch 1 on the same prompt ids and threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's basecli, not an installed one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quantize", default="q4", help="basecli's weights (q4, q8, fp16, int8; 'none' for fp32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("-n", type=int, default=16, help="samples of one prompt for the aggregate figure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    say = lambda m: print(f"interleaved: {m}", file=sys.stderr)  # noqa: E731

    os.environ["BASECLI_THREADS"] = str(args.threads)
    from llama_cpp import Llama

    from basecli.analyses import benchmark
    from basecli.weights import models
    from basecli.backends.local import LocalBackend

    quantize = None if args.quantize == "none" else args.quantize
    backend = LocalBackend(None, device="cpu", dtype="float32", quantize=quantize)
    prompt = benchmark.prompt_ids(backend.tokenizer, args.prompt_tokens)
    llm = Llama(model_path=str(models.embedded_gguf()), n_threads=args.threads, n_threads_batch=args.threads,
                n_ctx=len(prompt) + args.new_tokens + 16, n_batch=512, verbose=False)

    def llama_b1() -> float:
        llm.reset()
        times = []
        for _ in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            times.append(time.perf_counter())
            if len(times) == args.new_tokens:
                break
        return (len(times) - 1) / (times[-1] - times[0])

    say("warm-up")
    benchmark.measure_decode(backend, 1, prompt, 8)
    benchmark.measure_decode(backend, args.n, prompt, 8, sampled=True)
    llama_b1()
    rounds = []
    for r in range(args.rounds):
        b1 = benchmark.measure_decode(backend, 1, prompt, args.new_tokens).tokens_per_s
        ref = llama_b1()
        many = benchmark.measure_decode(backend, args.n, prompt, args.new_tokens, sampled=True).tokens_per_s
        rounds.append({"basecli_b1": round(b1, 1), "llama_b1": round(ref, 1), "basecli_n": round(many, 1),
                       "b1_ratio": round(b1 / ref, 3), "n_ratio": round(many / ref, 3)})
        say(f"round {r + 1}: basecli {b1:.1f}, llama.cpp {ref:.1f}, basecli N={args.n} {many:.1f} tok/s")
    summary = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quantize": args.quantize, "threads": args.threads,
            "n": args.n, "prompt_tokens": len(prompt), "new_tokens": args.new_tokens,
            "load_avg_1min": round(os.getloadavg()[0], 2), "command": "python " + " ".join(sys.argv)}
    if args.json:
        print(json.dumps({"meta": meta, "rounds": rounds, "median": summary}))
        return
    print(f"{meta['date']} | --quantize {args.quantize} | {args.threads} threads | prompt {len(prompt)} tokens, "
          f"{args.new_tokens} new | load avg {meta['load_avg_1min']}")
    print(f"| round | basecli batch 1 | llama.cpp batch 1 | basecli N={args.n} | batch 1 / llama.cpp | N={args.n} / llama.cpp b1 |")
    print("|---|---|---|---|---|---|")
    for i, x in enumerate(rounds, 1):
        print(f"| {i} | {x['basecli_b1']} | {x['llama_b1']} | {x['basecli_n']} | {x['b1_ratio']:.2f}x | {x['n_ratio']:.2f}x |")
    print(f"| median | {summary['basecli_b1']} | {summary['llama_b1']} | {summary['basecli_n']} | "
          f"{summary['b1_ratio']:.2f}x | {summary['n_ratio']:.2f}x |")
    print(f"reproduce: {meta['command']}")


if __name__ == "__main__":
    main()
