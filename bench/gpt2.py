"""basecli's GPT-2 (lean engine; q8 and fp32) against llama.cpp on the same random weights in GPT-2's real shapes.

    python bench/gpt2.py --threads 2                      # GPT-2 124M shapes
    python bench/gpt2.py --threads 2 --shapes 124m,xl     # and GPT-2 XL (1.5B): a 3 GB F16 file, 6 GB of fp32 cache

For each shape it writes one gpt2 GGUF in llama.cpp's tensor names (matrices in F16, norms and biases
in F32, a real 50257-token byte-level BPE vocabulary), quantises it to Q8_0 with llama.cpp's own
`llama_model_quantize`, and runs: llama.cpp on the Q8_0 file; basecli on the F16 file with
--quantize q8 (the same Q8_0 blocks: both quantise the same F16 values with the same rule) and in
fp32. Every engine runs in its own process (so peak RSS is its own), the engines take turns for
`--rounds` rounds and each keeps its best round: load, prefill of the prompt, batch-1 greedy decode
(first generated token to the last), with the CPU time the process spent per decoded token (at
--threads 1 the work per token, which a busy machine does not inflate as it does wall time).
Ratios are only meaningful within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's basecli, not an installed one

SHAPES = {  # GPT2Config of each size: layers, width, heads (vocabulary 50257, 1024 positions, MLP 4 x width)
    "124m": (12, 768, 12),
    "xl": (48, 1600, 25),
}
VOCAB, POSITIONS = 50257, 1024
ENGINES = ("basecli-q8", "llama.cpp", "basecli-fp32")


def write_gguf(path: Path, layers: int, dim: int, heads: int) -> None:
    """Random GPT-2 weights (normal, std 0.02, as GPT-2 initialises them) as llama.cpp's convert_hf_to_gguf lays them out."""
    import numpy as np
    from gguf import GGUFWriter

    from basecli.text.tokenizers import byte_alphabet

    alphabet = [byte_alphabet()[b] for b in range(256)]
    pairs = [(a, b) for a in alphabet for b in alphabet][: VOCAB - 257]
    tokens = alphabet + [a + b for a, b in pairs] + ["<|endoftext|>"]
    w = GGUFWriter(str(path), "gpt2")
    w.add_name(f"random gpt2 {layers}x{dim}")
    w.add_block_count(layers)
    w.add_context_length(POSITIONS)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(4 * dim)
    w.add_head_count(heads)
    w.add_layer_norm_eps(1e-5)
    w.add_file_type(1)  # mostly F16
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (VOCAB - 1) + [3])
    w.add_token_merges([f"{a} {b}" for a, b in pairs])
    w.add_bos_token_id(VOCAB - 1)
    w.add_eos_token_id(VOCAB - 1)
    rng = np.random.default_rng(0)
    normal = lambda *shape: (rng.standard_normal(shape, dtype=np.float32) * 0.02)  # noqa: E731
    vector = lambda n, base: (base + normal(n)).astype(np.float32)  # noqa: E731
    w.add_tensor("token_embd.weight", normal(VOCAB, dim).astype(np.float16))
    w.add_tensor("position_embd.weight", normal(POSITIONS, dim).astype(np.float16))
    for i in range(layers):
        for name, rows, cols in (("attn_qkv", 3 * dim, dim), ("attn_output", dim, dim), ("ffn_up", 4 * dim, dim), ("ffn_down", dim, 4 * dim)):
            w.add_tensor(f"blk.{i}.{name}.weight", normal(rows, cols).astype(np.float16))
            w.add_tensor(f"blk.{i}.{name}.bias", vector(rows, 0.0))
        for name in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{i}.{name}.weight", vector(dim, 1.0))
            w.add_tensor(f"blk.{i}.{name}.bias", vector(dim, 0.0))
    w.add_tensor("output_norm.weight", vector(dim, 1.0))
    w.add_tensor("output_norm.bias", vector(dim, 0.0))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize_q8(src: Path, dst: Path) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        raise SystemExit(f"gpt2 bench: llama.cpp could not quantise {src}")


def prompt_for(gguf: Path, n: int) -> list[int]:
    """The same prompt ids for every engine: basecli's benchmark text through this file's vocabulary."""
    from basecli.analyses import benchmark
    from basecli.weights import models

    return benchmark.prompt_ids(models.tokenizer_for(models.model_dir(models.resolve(str(gguf))), gguf.stem), n)


def child(engine: str, f16: Path, q8: Path, prompt: list[int], new: int, threads: int) -> dict:
    """One engine, in this process: load, prefill, decode; figures as a dict."""
    if engine == "llama.cpp":
        from llama_cpp import Llama

        t0 = time.perf_counter()
        llm = Llama(model_path=str(q8), n_threads=threads, n_threads_batch=threads, n_ctx=len(prompt) + new + 16, n_batch=512,
                    verbose=False)
        load_s = time.perf_counter() - t0

        def tokens():
            llm.reset()  # else generate() reuses the cached prompt and skips the prefill being timed
            return llm.generate(prompt, top_k=1, temp=0.0, reset=True)  # evaluates the prompt, then a token per step
    else:
        from basecli.backends.local import LocalBackend
        from basecli.config import SamplingParams
        from basecli.engine.loop import generate

        os.environ["BASECLI_THREADS"] = str(threads)
        backend = LocalBackend(str(f16), device="cpu", dtype="float32", quantize="q8" if engine == "basecli-q8" else None)
        assert type(backend.model).__name__ == "LeanGPT2", backend.model
        load_s = backend.load_seconds
        greedy = [SamplingParams(max_tokens=10**6, temperature=0, ignore_eos=True)]

        def tokens():
            return generate(backend.model, backend.tokenizer, [prompt], greedy)

    def run(n):
        """(seconds to the first token, decode tokens per second, decode CPU ms per token) of n greedy tokens"""
        clock, t0 = [], time.perf_counter()
        for _ in tokens():
            clock.append((time.perf_counter(), time.process_time()))
            if len(clock) == n:
                break
        (w0, c0), (w1, c1) = clock[0], clock[-1]
        return clock[0][0] - t0, (n - 1) / (w1 - w0) if n > 1 else None, 1000 * (c1 - c0) / (n - 1) if n > 1 else None

    run(4)  # warm-up
    first = min(run(1)[0] for _ in range(3))
    _, rate, cpu_ms = run(new)
    return {"load_s": round(load_s, 2), "prefill_tok_s": round(len(prompt) / first, 1), "decode_tok_s": round(rate, 2),
            "cpu_ms_per_token": round(cpu_ms, 2), "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> int:
    """This process's own peak resident memory. (getrusage's ru_maxrss would start from the parent's peak at the
    fork, kept across exec: the parent that wrote a 3 GB GGUF would set every engine's figure.)"""
    try:
        with open("/proc/self/status") as f:
            return round(int(next(line.split()[1] for line in f if line.startswith("VmHWM:"))) / 1024)
    except (OSError, StopIteration):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="124m", help="comma-separated: 124m, xl")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="turns each engine takes; its best counts (least disturbed by other load)")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "basecli-bench-gpt2")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        engine, f16, q8, prompt = json.loads(args.child)
        print(json.dumps(child(engine, Path(f16), Path(q8), prompt, args.new_tokens, args.threads)))
        return
    say = lambda s: print(f"gpt2 bench: {s}", file=sys.stderr, flush=True)  # noqa: E731
    os.environ.setdefault("BASECLI_HOME", str(args.dir / "home"))  # the conversion cache stays with the files
    args.dir.mkdir(parents=True, exist_ok=True)
    engines = args.engines.split(",")
    table = {}
    for shape in args.shapes.split(","):
        f16, q8 = args.dir / f"gpt2-{shape}-f16.gguf", args.dir / f"gpt2-{shape}-q8_0.gguf"
        if not f16.exists():
            say(f"writing {f16.name}")
            write_gguf(f16, *SHAPES[shape])
        if not q8.exists() and "llama.cpp" in engines:
            say(f"quantising to {q8.name} with llama.cpp")
            quantize_q8(f16, q8)
        prompt = prompt_for(f16, args.prompt_tokens)  # converts the F16 file to basecli's cache once
        best: dict[str, dict] = {}
        for r in range(args.rounds):
            for engine in engines:
                say(f"{shape} round {r + 1}/{args.rounds}: {engine}")
                out = subprocess.run([sys.executable, __file__, "--child", json.dumps([engine, str(f16), str(q8), prompt]),
                                      "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)],
                                     capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"gpt2 bench: {engine} failed:\n{out.stderr[-2000:]}")
                got = json.loads(out.stdout.strip().splitlines()[-1])
                if engine not in best or got["decode_tok_s"] > best[engine]["decode_tok_s"]:
                    best[engine] = {**got, "prefill_tok_s": max(got["prefill_tok_s"], best.get(engine, got)["prefill_tok_s"])}
        table[shape] = best
    print_table(table, args)


def print_table(table: dict, args) -> None:
    print(f"`python bench/gpt2.py --shapes {args.shapes} --threads {args.threads} --prompt-tokens {args.prompt_tokens} "
          f"--new-tokens {args.new_tokens} --rounds {args.rounds}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| shape | engine | load s | prefill tok/s | decode tok/s | decode vs llama.cpp | decode CPU ms/token | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for shape, rows in table.items():
        peer = rows.get("llama.cpp", {}).get("decode_tok_s")
        for engine, r in rows.items():
            ratio = f"{r['decode_tok_s'] / peer:.2f}x" if peer else "-"
            print(f"| {shape} | {engine} | {r['load_s']} | {r['prefill_tok_s']} | {r['decode_tok_s']} | {ratio} | {r['cpu_ms_per_token']} "
                  f"| {r['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
