"""basecli against transformers' `generate` and llama.cpp, on the same model, in one run.

    python bench/compare.py                      # the embedded SmolLM2-135M, torch's threads
    python bench/compare.py --threads 2 --markdown
    python bench/compare.py --model gpt2 --n 16

Each engine gets the same prompt token ids (cut from benchmark.SAMPLE_TEXT), a warm-up,
then: prefill speed, time to first token, batch-1 greedy decode and the aggregate decode
speed of N sampled rows of that prompt (basecli's `resample`). Decode speed always counts
from the first generated token to the last. llama.cpp (llama-cpp-python) runs the GGUF file
itself, with the same number of threads; it is skipped, saying so, when not installed.
Ratios are only meaningful within one run: the machine may be busy with other work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's basecli, not an installed one

from basecli.analyses import benchmark  # noqa: E402
from basecli.weights import models  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="as for basecli --model; default: the embedded model")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for every engine (default: torch's choice)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--n", type=int, default=16, help="rows sampled from one prompt (resample N)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--repeats", type=int, default=1,
                    help="decode runs per engine and batch; the fastest counts (least disturbed by other load)")
    ap.add_argument("--engines", default="basecli,basecli-lean,basecli-fp16,basecli-int8,basecli-q8,basecli-q4,transformers,llama.cpp",
                    help="comma-separated subset to run (basecli-fp16/-int8/-q8/-q4: the lean engine with BASECLI_QUANTIZE)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ap.add_argument("--markdown", action="store_true", help="print a results-table row block for bench/README.md")
    args = ap.parse_args()

    import torch

    if args.threads:
        # LocalBackend picks threads from what else is running unless BASECLI_THREADS says; say, or it undoes --threads
        os.environ["BASECLI_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    engines = args.engines.split(",")
    say = lambda s: print(f"compare: {s}", file=sys.stderr, flush=True)  # noqa: E731

    from basecli.backends.local import LocalBackend

    say("loading the model for basecli and transformers")
    backend = LocalBackend(args.model, device="cpu", dtype=args.dtype, engine="transformers")
    prompt = benchmark.prompt_ids(backend.tokenizer, args.prompt_tokens)
    results = {}
    if "basecli" in engines:
        results["basecli (transformers model code)"] = run_basecli(backend, prompt, args, say)
    for name, quantize, label in [("basecli-lean", None, "basecli (lean engine)"), ("basecli-fp16", "fp16", "basecli (lean, fp16 weights)"),
                                  ("basecli-int8", "int8", "basecli (lean, int8 weights)"),
                                  ("basecli-q8", "q8", "basecli (native, Q8_0 weights)"),
                                  ("basecli-q4", "q4", "basecli (native, Q4_1 weights)")]:
        if name in engines:
            lean = LocalBackend(args.model, device="cpu", dtype=args.dtype, engine="lean", quantize=quantize)
            if lean.engine == "lean":
                results[label] = run_basecli(lean, prompt, args, say)
            del lean
    if "transformers" in engines:
        results["transformers generate"] = run_transformers(backend, prompt, args, say)
    if "llama.cpp" in engines:
        results["llama.cpp"] = run_llama_cpp(args, prompt, threads, say)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "threads": threads,
        "model": backend.name,
        "dtype": str(backend.dtype).removeprefix("torch."),
        "prompt_tokens": len(prompt),
        "new_tokens": args.new_tokens,
        "n": args.n,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "command": "python " + " ".join(sys.argv),
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}))
        return
    print_table(meta, results, markdown=args.markdown)


# --- the engines ------------------------------------------------------------------------------


def run_basecli(backend, prompt, args, say) -> dict:
    say("basecli: warm-up, prefill, batch 1, N sampled rows")
    benchmark.timed_generation(backend.model, backend.tokenizer, [prompt[:16]] * 2, 4, device="cpu")
    pp, ttft = benchmark.measure_prefill(backend, prompt)
    one = benchmark.measure_decode(backend, 1, prompt, args.new_tokens, repeats=args.repeats)
    many = benchmark.measure_decode(backend, args.n, prompt, args.new_tokens, sampled=True, repeats=args.repeats)
    return {"load_s": round(backend.load_seconds, 3), "prefill_tok_s": round(pp, 1), "first_token_s": round(ttft, 4),
            "batch1_tok_s": one.tokens_per_s, "n_tok_s": many.tokens_per_s, "n_first_token_s": many.first_token_s}


def run_transformers(backend, prompt, args, say) -> dict:
    """transformers' own generate on the same weights (loaded again with AutoModelForCausalLM if basecli's model is not one)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    say("transformers generate: warm-up, prefill, batch 1, N sampled rows")
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(backend.folder), dtype=backend.dtype).eval()
    load_s = time.perf_counter() - t0

    class Clock(BaseStreamer):
        """Times every step: generate calls put() with the prompt, then once per new token."""

        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    ids = torch.tensor([prompt])
    common = dict(pad_token_id=0, eos_token_id=None)

    def timed(new, batch=1, sample=False):
        clock = Clock()
        extra = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=batch) if sample else dict(do_sample=False)
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=new, min_new_tokens=new, streamer=clock, **common, **extra)
        first = clock.times[1] - t0
        steps = len(clock.times) - 2
        rate = steps * batch / (clock.times[-1] - clock.times[1]) if steps > 0 else float("nan")
        return first, rate

    timed(4)
    firsts = sorted(timed(1)[0] for _ in range(3))
    ttft = firsts[1]
    b1 = max(timed(args.new_tokens)[1] for _ in range(args.repeats))
    n_first, n_rate = max((timed(args.new_tokens, batch=args.n, sample=True) for _ in range(args.repeats)), key=lambda r: r[1])
    return {"load_s": round(load_s, 3), "prefill_tok_s": round(len(prompt) / ttft, 1), "first_token_s": round(ttft, 4),
            "batch1_tok_s": round(b1, 2), "n_tok_s": round(n_rate, 2), "n_first_token_s": round(n_first, 4)}


def run_llama_cpp(args, prompt, threads, say) -> dict:
    try:
        from llama_cpp import Llama
    except ImportError:
        say("llama.cpp: not installed (pip install llama-cpp-python); skipped")
        return {"skipped": "llama-cpp-python not installed"}
    source = models.resolve(args.model)
    if source.kind == "embedded":
        gguf = models.embedded_gguf()
    elif source.kind == "gguf":
        gguf = Path(source.location)
    else:
        say("llama.cpp: the model is not a GGUF file; skipped")
        return {"skipped": "no GGUF file for this model"}
    say(f"llama.cpp: {gguf.name}, {threads} threads: warm-up, prefill, batch 1")
    t0 = time.perf_counter()
    llm = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=len(prompt) + args.new_tokens + 16,
                n_batch=512, verbose=False)
    load_s = time.perf_counter() - t0

    def timed(new):
        times = []
        llm.reset()  # else generate() reuses the cached prompt and skips the prefill being timed
        t0 = time.perf_counter()
        # generate() evaluates the prompt, then samples and evaluates one token per step; it never stops at EOS
        for tok in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            times.append(time.perf_counter())
            if len(times) == new:
                break
        return times[0] - t0, (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")

    timed(4)
    firsts = sorted(timed(1)[0] for _ in range(3))
    b1 = max(timed(args.new_tokens)[1] for _ in range(args.repeats))
    return {"load_s": round(load_s, 3), "prefill_tok_s": round(len(prompt) / firsts[1], 1), "first_token_s": round(firsts[1], 4),
            "batch1_tok_s": round(b1, 2), "n_tok_s": None, "gguf": gguf.name}


# --- output -----------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def print_table(meta: dict, results: dict, *, markdown: bool) -> None:
    ref = results.get("llama.cpp", {}).get("batch1_tok_s")
    hf = results.get("transformers generate", {}).get("batch1_tok_s")
    hf_n = results.get("transformers generate", {}).get("n_tok_s")
    head = ["engine", "load s*", "prefill tok/s", "first token ms", "batch 1 tok/s", f"N={meta['n']} tok/s",
            "batch 1 / llama.cpp", f"N={meta['n']} / llama.cpp b1", "batch 1 / generate", f"N={meta['n']} / generate"]
    rows = []
    for name, r in results.items():
        if "skipped" in r:
            rows.append([name, f"({r['skipped']})"] + [""] * (len(head) - 2))
            continue
        ratio = lambda a, b: f"{a / b:.2f}x" if a and b else ""  # noqa: E731
        rows.append([name, f"{r['load_s']:.2f}", f"{r['prefill_tok_s']:.0f}", f"{r['first_token_s'] * 1000:.0f}",
                     f"{r['batch1_tok_s']:.1f}", f"{r['n_tok_s']:.1f}" if r.get("n_tok_s") else "-",
                     ratio(r["batch1_tok_s"], ref), ratio(r.get("n_tok_s"), ref), ratio(r["batch1_tok_s"], hf), ratio(r.get("n_tok_s"), hf_n)])
    print(f"{meta['date']} | {meta['machine']} | {meta['threads']} threads | load avg {meta['load_avg_1min']}")
    print(f"{meta['model']} ({meta['dtype']} in torch), prompt {meta['prompt_tokens']} tokens, {meta['new_tokens']} new tokens")
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        for row in [head, *rows]:
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    print("* load in this process: the first engine listed also pays for importing torch and transformers")
    print(f"reproduce: {meta['command']}")


if __name__ == "__main__":
    main()
