"""GGUFs in Llama-3.2-1B's exact shapes: basecli on the file's own blocks against llama.cpp on the same files, in one run.

    python bench/kquant.py [--dir DIR] [--threads 2] [--prefill 512] [--decode 16] [--kl-tokens 64] [--n16-tokens 32]

Builds once (cached in --dir) a random-weight Llama GGUF of Llama-3.2-1B's shapes (hidden 2048, MLP 8192,
16 layers, 32 query / 8 key-value heads, vocabulary 128,256, tied head) in F16 with gguf.GGUFWriter and
quantises it with llama.cpp's own quantiser into Q4_K_M, Q5_K_M, Q6_K and Q8_0. Then, each engine in a
process of its own (so peak RSS is that engine's), at --threads threads:

- load: seconds to a model ready to run (basecli: weights/gguf_blocks.load, the path `complete -m x.gguf`
  takes once the file's config is known; llama.cpp: Llama(...));
- prefill: one pass over --prefill token ids;
- decode: batch-1 tokens a second over --decode steps after it (the same given ids: no sampling on either side);
- peak RSS of the process (ru_maxrss), against the file's size;
- KL: mean KL(fp32 || engine) over --kl-tokens positions of one id sequence, the fp32 model being the file
  dequantised (basecli's reader, bit-identical to gguf's), for each K-quant file;
- N=16 on the embedded SmolLM2 (Q4_1): llama.cpp decoding 16 sequences of one prompt in one batch (one
  llama_decode of the prompt, llama_memory_seq_cp to 16 sequences, one 16-token batch a step, each row
  sampled by its own llama.cpp sampler) beside basecli's `resample -N 16` path (stream_rows, --quantize q4).

Results go to stdout as a markdown table of ratios (basecli / llama.cpp) and as JSON (--json FILE).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's basecli (and tests/), not an installed one

SHAPES = dict(hidden=2048, ffn=8192, layers=16, heads=32, kv_heads=8, vocab=128256, context=131072, rope_theta=500000.0)
FILES = ("Q4_K_M", "Q8_0")  # speed and memory
KL_FILES = ("Q4_K_M", "Q5_K_M", "Q6_K")
PROMPT = "The 2024 US presidential election was won by"


def ids(n: int, seed: int = 0) -> list[int]:
    import numpy as np

    return np.random.default_rng(seed).integers(1, 400, n).tolist()  # the real BPE tokens of the vocabulary


def build(folder: Path, threads: int, ftypes) -> dict[str, Path]:
    from tests.llama_gguf import quantize, write_llama_gguf

    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "llama-3.2-1b-shaped-F16.gguf"
    if not source.exists():
        print(f"writing {source} ...", file=sys.stderr)
        write_llama_gguf(source.with_suffix(".tmp"), **SHAPES)
        source.with_suffix(".tmp").rename(source)
    out = {}
    for ftype in ftypes:
        target = folder / f"llama-3.2-1b-shaped-{ftype}.gguf"
        if not target.exists():
            print(f"quantising to {ftype} with llama.cpp ...", file=sys.stderr)
            quantize(source, target.with_suffix(".tmp"), ftype, threads)
            target.with_suffix(".tmp").rename(target)
        out[ftype] = target
    return out


# ---- workers: one engine, one file, one process -----------------------------------------------------------

def peak_rss() -> int:
    """This process's peak resident memory (VmHWM: ru_maxrss would carry over the parent's peak through exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Basecli:
    """basecli's engine on a GGUF's own blocks: load, a prefill, a decode step (given ids, no sampling)."""

    def __init__(self, path: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        from basecli.weights import gguf_blocks

        self.torch, self.model = torch, gguf_blocks.load(path, threads=threads)

    def prefill(self, prompt: list[int]) -> None:
        with self.torch.inference_mode():
            self.cache = self.model.new_cache()
            self.model(self.torch.tensor([prompt]), past_key_values=self.cache, logits_to_keep=1)

    def step(self, token: int) -> None:
        with self.torch.inference_mode():
            self.model(self.torch.tensor([[token]]), past_key_values=self.cache)


class LlamaCpp:
    def __init__(self, path: str, threads: int, context: int = 1024):
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=context, n_batch=512, n_ubatch=512,
                         verbose=False)

    def prefill(self, prompt: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(prompt)

    def step(self, token: int) -> None:
        self.llm.eval([token])


ENGINES = {"basecli": Basecli, "llama.cpp": LlamaCpp}


def worker_alone(engine: str, path: str, threads: int, prefill: int, decode: int) -> dict:
    """One engine in this process: its load time and peak RSS (and its speeds, measured alone)."""
    t0 = time.perf_counter()
    e = ENGINES[engine](path, threads)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    e.prefill(ids(prefill))
    prefill_s = time.perf_counter() - t0
    steps = ids(decode, seed=1)
    e.step(steps[0])  # the first step pays for its buffers' first touch
    t0 = time.perf_counter()
    for t in steps[1:]:
        e.step(t)
    return {"load_s": load_s, "prefill_tok_s": prefill / prefill_s, "decode_tok_s": (decode - 1) / (time.perf_counter() - t0),
            "peak_rss": peak_rss()}


def worker_side_by_side(path: str, threads: int, prefill: int, decode: int) -> dict:
    """Both engines in one process, taking turns (a prefill each, then decode steps in alternating runs of 4), so
    a machine shared with other work slows both alike."""
    engines = {name: cls(path, threads) for name, cls in ENGINES.items()}
    out = {name: {"prefill_s": 0.0, "decode_s": 0.0, "steps": 0} for name in engines}
    prompt, steps = ids(prefill), ids(decode + 1, seed=1)
    for name, e in engines.items():
        t0 = time.perf_counter()
        e.prefill(prompt)
        out[name]["prefill_s"] = time.perf_counter() - t0
        e.step(steps[0])
    for at in range(1, decode + 1, 4):
        for name, e in engines.items():
            t0 = time.perf_counter()
            for t in steps[at : at + 4]:
                e.step(t)
            out[name]["decode_s"] += time.perf_counter() - t0
            out[name]["steps"] += len(steps[at : at + 4])
    return {name: {"prefill_tok_s": prefill / o["prefill_s"], "decode_tok_s": o["steps"] / o["decode_s"]} for name, o in out.items()}


def worker_cpu(path: str, prefill: int, decode: int) -> dict:
    """Both engines at one thread, timed by the CPU time this process spends (not the wall clock), so the figures
    do not depend on what else the machine runs: the work each does per token."""
    out = {}
    for name, cls in ENGINES.items():
        e = cls(path, 1)
        c0 = time.process_time()
        e.prefill(ids(prefill))
        prefill_s = time.process_time() - c0
        steps = ids(decode + 1, seed=1)
        e.step(steps[0])
        c0 = time.process_time()
        for t in steps[1:]:
            e.step(t)
        out[name] = {"prefill_tok_per_cpu_s": prefill / prefill_s, "decode_tok_per_cpu_s": decode / (time.process_time() - c0)}
        del e
    return out


def worker_kl(path: str, threads: int, tokens: int) -> dict:
    """Mean KL(fp32 || basecli) and KL(fp32 || llama.cpp) over the positions of one id sequence."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from basecli.engine import lean
    from basecli.weights import gguf_blocks
    from basecli.weights.gguf_convert import model_config
    from basecli.weights.gguf_reader import GGUFFile

    text = ids(tokens, seed=2)

    class Dequantised(gguf_blocks.GGUFWeights):
        in_place = None  # every matrix read as fp32: the dequantised model

    def log_probs(x):
        return torch.log_softmax(torch.as_tensor(np.asarray(x), dtype=torch.float64), -1)

    cfg = model_config(GGUFFile(path))
    with torch.inference_mode():
        fp32 = log_probs(lean.LeanLlama(cfg, Dequantised(path, cfg), torch.float32, "cpu")(torch.tensor([text])).logits[0])
        ours = log_probs(gguf_blocks.load(path, threads=threads)(torch.tensor([text])).logits[0])
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_threads=threads, n_ctx=tokens + 8, logits_all=True, verbose=False)
    llm.eval(text)
    theirs = log_probs(llm.scores[:tokens])

    def kl(q):
        return float((fp32.exp() * (fp32 - q)).sum(-1).mean())

    return {"kl_basecli": kl(ours), "kl_llama": kl(theirs)}


def worker_n16_llama(threads: int, n: int, new: int) -> dict:
    """llama.cpp decoding n sequences of one prompt in one batch (its low-level API), aggregate tokens a second."""
    import ctypes

    import llama_cpp as L

    from basecli.weights import models

    quiet = L.llama_log_callback(lambda level, text, data: None)  # its debug lines, printed every decode, cost time
    L.llama_log_set(quiet, ctypes.c_void_p(0))
    model = L.llama_model_load_from_file(str(models.embedded_gguf()).encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_seq_max, cp.kv_unified = 512 * n, 512, n, True
    cp.n_threads = cp.n_threads_batch = threads
    ctx = L.llama_init_from_model(model, cp)
    vocab = L.llama_model_get_vocab(model)
    buf = (L.llama_token * 256)()
    count = L.llama_tokenize(vocab, PROMPT.encode(), len(PROMPT.encode()), buf, 256, False, False)
    prompt = list(buf[:count])
    batch = L.llama_batch_init(max(len(prompt), n), 0, n)

    def fill(tokens, positions, seqs, logits):
        batch.n_tokens = len(tokens)
        for i, (t, p, s, want) in enumerate(zip(tokens, positions, seqs, logits)):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, p, 1, want
            batch.seq_id[i][0] = s

    samplers = []
    for s in range(n):  # one sampler per row, as each resample row samples on its own (temperature 1)
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(s + 1))
        samplers.append(chain)
    t0 = time.perf_counter()
    fill(prompt, range(len(prompt)), [0] * len(prompt), [False] * (len(prompt) - 1) + [True])
    assert L.llama_decode(ctx, batch) == 0
    mem = L.llama_get_memory(ctx)
    for s in range(1, n):
        L.llama_memory_seq_cp(mem, 0, s, -1, -1)
    c0 = time.process_time()
    tokens = [L.llama_sampler_sample(samplers[s], ctx, len(prompt) - 1) for s in range(n)]
    decode_s, made = 0.0, n
    for step in range(new - 1):
        fill(tokens, [len(prompt) + step] * n, range(n), [True] * n)
        d0 = time.perf_counter()
        assert L.llama_decode(ctx, batch) == 0
        decode_s += time.perf_counter() - d0
        tokens = [L.llama_sampler_sample(samplers[s], ctx, s) for s in range(n)]
        made += n
    total = time.perf_counter() - t0
    return {"tok_s": made / total, "decode_only_tok_s": (made - n) / decode_s, "tok_per_cpu_s": made / (time.process_time() - c0)}


def worker_n16_basecli(threads: int, n: int, new: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from basecli.backends.batching import seeded, stream_rows
    from basecli.backends.local import LocalBackend
    from basecli.config import SamplingParams

    backend = LocalBackend(None, device="cpu", quantize="q4")
    params = seeded([SamplingParams(max_tokens=new, temperature=1.0, ignore_eos=True)] * n, 1)
    sum(1 for _ in stream_rows(backend, [PROMPT] * n, seeded([params[0].with_(max_tokens=4)] * n, 1)))  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    made = sum(1 for _ in stream_rows(backend, [PROMPT] * n, params))
    return {"tok_s": made / (time.perf_counter() - t0), "tok_per_cpu_s": made / (time.process_time() - c0)}


WORKERS = {"alone": worker_alone, "side_by_side": worker_side_by_side, "cpu": worker_cpu, "kl": worker_kl, "n16_llama": worker_n16_llama,
           "n16_basecli": worker_n16_basecli}


def run(*args) -> dict:
    """A worker in a fresh process; its JSON answer."""
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(args)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode:
        raise RuntimeError(f"worker {args[0]} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "basecli-kquant-bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--kl-tokens", type=int, default=64)
    ap.add_argument("--n16-tokens", type=int, default=32)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: speed, kl, n16")
    ap.add_argument("--files", default=",".join(FILES), help="the files of the speed part")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        name, *rest = json.loads(args.worker)
        print(json.dumps(WORKERS[name](*rest)))
        return
    skip = set(filter(None, args.skip.split(",")))
    files = build(args.dir, args.threads,
                  dict.fromkeys(("speed" not in skip) * tuple(args.files.split(",")) + ("kl" not in skip) * KL_FILES))
    results: dict = {"threads": args.threads, "prefill": args.prefill, "decode": args.decode, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "load_average": os.getloadavg()[0]}
    rows = []
    if "speed" not in skip:
        for ftype in args.files.split(","):
            size = files[ftype].stat().st_size
            b = run("alone", "basecli", str(files[ftype]), args.threads, args.prefill, args.decode)
            ll = run("alone", "llama.cpp", str(files[ftype]), args.threads, args.prefill, args.decode)
            both = run("side_by_side", str(files[ftype]), args.threads, args.prefill, args.decode)
            cpu = run("cpu", str(files[ftype]), args.prefill, args.decode)
            results[ftype] = {"file_bytes": size, "alone": {"basecli": b, "llama.cpp": ll}, "side_by_side": both, "cpu": cpu}
            cb, cl = cpu["basecli"], cpu["llama.cpp"]
            sb, sl = both["basecli"], both["llama.cpp"]
            rows += [
                (f"{ftype} load (s)", b["load_s"], ll["load_s"], ll["load_s"] / b["load_s"]),
                (f"{ftype} prefill {args.prefill} (tok/s)", sb["prefill_tok_s"], sl["prefill_tok_s"], sb["prefill_tok_s"] / sl["prefill_tok_s"]),
                (f"{ftype} batch-1 decode (tok/s)", sb["decode_tok_s"], sl["decode_tok_s"], sb["decode_tok_s"] / sl["decode_tok_s"]),
                (f"{ftype} prefill, tokens per CPU-second (1 thread)", cb["prefill_tok_per_cpu_s"], cl["prefill_tok_per_cpu_s"],
                 cb["prefill_tok_per_cpu_s"] / cl["prefill_tok_per_cpu_s"]),
                (f"{ftype} decode, tokens per CPU-second (1 thread)", cb["decode_tok_per_cpu_s"], cl["decode_tok_per_cpu_s"],
                 cb["decode_tok_per_cpu_s"] / cl["decode_tok_per_cpu_s"]),
                (f"{ftype} peak RSS / file size ({size / 2**20:.0f} MiB)", b["peak_rss"] / size, ll["peak_rss"] / size, None),
            ]
            print(json.dumps({ftype: results[ftype]}), file=sys.stderr)
    if "kl" not in skip:
        for ftype in KL_FILES:
            k = run("kl", str(files[ftype]), args.threads, args.kl_tokens)
            results[f"kl_{ftype}"] = k
            rows.append((f"{ftype} mean KL from fp32 ({args.kl_tokens} positions)", k["kl_basecli"], k["kl_llama"], None))
            print(json.dumps({ftype: k}), file=sys.stderr)
    if "n16" not in skip:
        b = run("n16_basecli", args.threads, 16, args.n16_tokens)
        ll = run("n16_llama", args.threads, 16, args.n16_tokens)
        b1 = run("n16_basecli", 1, 16, args.n16_tokens)
        ll1 = run("n16_llama", 1, 16, args.n16_tokens)
        results["n16"] = {"basecli": b, "llama.cpp": ll, "basecli_1_thread": b1, "llama.cpp_1_thread": ll1}
        rows.append(("embedded, 16 samples of one prompt (tok/s)", b["tok_s"], ll["tok_s"], b["tok_s"] / ll["tok_s"]))
        rows.append(("  llama.cpp counting only llama_decode", b["tok_s"], ll["decode_only_tok_s"], b["tok_s"] / ll["decode_only_tok_s"]))
        rows.append(("  the same, tokens per CPU-second (1 thread)", b1["tok_per_cpu_s"], ll1["tok_per_cpu_s"],
                     b1["tok_per_cpu_s"] / ll1["tok_per_cpu_s"]))
    print(f"\n{results['when']}, {args.threads} threads, load average {results['load_average']:.1f}\n")
    print("| measure | basecli | llama.cpp | basecli / llama.cpp (load: llama.cpp / basecli) |\n|---|---|---|---|")
    for label, a, b, ratio in rows:
        fmt = (lambda v: f"{v:.2e}") if "KL" in label else (lambda v: f"{v:.2f}")
        print(f"| {label} | {fmt(a)} | {fmt(b)} | {'' if ratio is None else f'{ratio:.2f}x'} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
