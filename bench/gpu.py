"""basecli's static-cache decode path against transformers `generate`, eager and static cache + torch.compile, on one GPU.

Random weights in the real shapes of GPT-2 124M, GPT-2 XL, Llama-3.2-1B and Llama-3.1-8B
(bf16), batches 1, 16 and 64, a 32-token prompt (the same for every row, as resample runs it),
128 new tokens, greedy (basecli also sampled, at the first and last batch), end-of-text ignored. Every row reports tokens a second (all rows, end to
end, prefill included), the time per step and the fraction of the HBM bandwidth bound: bytes read
per step (the weights, the embedding rows excepted, plus the keys and values the step needs)
over the step time, over the card's bandwidth (named in the output). basecli's rows add the
decode-only fraction, from the difference of a run of 128 and one of 64 tokens. Then the greedy
tokens of a tiny fp32 Llama (and GPT-2, when the lean engine has it) against `generate`.

    bench/gpu.sh [--dry-run] [--new-tokens 128] [--batches 1,16,64] [--compile-batches 1] [--budget 330]

--dry-run: tiny shapes on the CPU, a few tokens (tests/test_bench_gpu.py runs it so it cannot rot).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's basecli, not an installed one

import torch  # noqa: E402

LLAMA3 = lambda f: {"rope_type": "llama3", "factor": f, "low_freq_factor": 1.0, "high_freq_factor": 4.0,  # noqa: E731
                    "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
SHAPES = {  # the published configs (hub config.json) of each model
    "GPT-2 124M": ("gpt2", dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)),
    "GPT-2 XL": ("gpt2", dict(vocab_size=50257, n_positions=1024, n_embd=1600, n_layer=48, n_head=25)),
    "Llama-3.2-1B": ("llama", dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
                                   max_position_embeddings=131072, tie_word_embeddings=True, rope_scaling=LLAMA3(32.0))),
    "Llama-3.1-8B": ("llama", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
                                   max_position_embeddings=131072, tie_word_embeddings=False, rope_scaling=LLAMA3(8.0))),
}
TINY = {
    "tiny GPT-2": ("gpt2", dict(vocab_size=512, n_positions=256, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)),
    "tiny Llama": ("llama", dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=0,
                                 eos_token_id=0)),
}
BANDWIDTH = [  # (name contains, bytes/s): the vendors' HBM figures
    ("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("GH200", 4.0e12),
    ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12), ("L40S", 0.864e12), ("A10G", 0.6e12),
]
PROMPT = 32


class ByteTokenizer:
    """What basecli's loop asks of a tokenizer: the end-of-text ids and each token's bytes."""

    eos_ids: set = set()

    def token_bytes(self, token_id: int) -> bytes:
        return b"x"


class StateWeights:
    """engine/mapped_weights.py's Weights over a transformers model's own tensors: both engines compute with the same weights."""

    def __init__(self, state: dict, drop=()):
        self.index = {k: v for k, v in state.items() if k not in drop}

    def read(self, names, dtype, device="cpu"):
        parts = [self.index[n] for n in names]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(device=device, dtype=dtype)

    def view(self, name):
        return self.index[name]

    def release(self, name) -> None:
        pass


def build(kind: str, cfg: dict, dtype, device, notes: list):
    """(transformers model, basecli lean model or None) with the same random weights."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    from basecli.engine import lean

    if kind == "llama":
        try:
            lean.check_supported({"model_type": "llama", **cfg})
        except lean.Unsupported as e:  # the scaling changes no shape and no cost
            notes.append(f"rope scaling left out of the Llama shapes ({e}): the lean engine here lacks it")
            cfg = {k: v for k, v in cfg.items() if k != "rope_scaling"}
    config = (LlamaConfig if kind == "llama" else GPT2Config)(**cfg)
    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    with torch.no_grad():  # an opinionated head, so that greedy ties between engines are not a worry
        hf.get_output_embeddings().weight.mul_(8.0 if device == "cpu" or dtype == torch.float32 else 1.0)
    state, cfg_dict = hf.state_dict(), {**config.to_dict(), "model_type": kind}
    if kind == "llama":
        drop = ("lm_head.weight",) if config.tie_word_embeddings else ()
        return hf, lean.LeanLlama(cfg_dict, StateWeights(state, drop), dtype, device).eval()
    if importlib.util.find_spec("basecli.engine.gpt2") is None:
        notes.append("GPT-2: basecli's row runs its loop on transformers' GPT2LMHeadModel (no lean GPT-2 in this checkout)")
        return hf, None
    from basecli.engine.gpt2 import LeanGPT2

    return hf, LeanGPT2(cfg_dict, StateWeights(state), dtype, device).eval()


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_basecli(model, batch: int, new: int, prompt: list[int], sampled: bool = False) -> None:
    from basecli.config import SamplingParams
    from basecli.engine.static_loop import generate_static, supports_static
    from basecli.engine.loop import generate

    if sampled:  # resample's way: a seed per row, nucleus sampling, all on the device
        params = [SamplingParams(max_tokens=new, temperature=1.0, top_p=0.9, seed=i, ignore_eos=True) for i in range(batch)]
    else:
        params = [SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)] * batch
    loop = generate_static if supports_static(model) else generate
    for _ in loop(model, ByteTokenizer(), [prompt] * batch, params):
        pass


def run_hf(model, batch: int, new: int, prompt: list[int], static: bool) -> None:
    ids = torch.tensor([prompt] * batch, device=model.device)
    extra = {"cache_implementation": "static"} if static else {}  # on CUDA transformers compiles the decode step itself
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                   pad_token_id=0, **extra)


def timed(fn, device, repeats: int = 2) -> float:
    """The best of `repeats` timed calls, after one untimed call (compiles, captures, allocator warm-up)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bytes_per_step(hf, batch: int, context: float) -> float:
    """Weights read by one decode step (every matrix; of the input embeddings only a row per token, not counted)
    plus the keys and values of `context` positions for every row."""
    seen, total = set(), 0
    skip = {id(hf.get_input_embeddings().weight)} - {id(hf.get_output_embeddings().weight)}
    if hasattr(hf, "transformer"):
        skip.add(id(hf.transformer.wpe.weight))
    for p in hf.parameters():
        if id(p) not in seen and id(p) not in skip:
            total += p.numel() * p.element_size()
        seen.add(id(p))
    c = hf.config
    layers = getattr(c, "num_hidden_layers", None) or c.n_layer
    heads = getattr(c, "num_attention_heads", None) or c.n_head
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or (getattr(c, "hidden_size", None) or c.n_embd) // heads
    element = next(hf.parameters()).element_size()
    return total + 2 * layers * kv * head_dim * context * batch * element


def card(device, override: float | None) -> tuple[str, float | None]:
    if torch.device(device).type != "cuda":
        return "CPU (dry run: no HBM bound)", override
    name = torch.cuda.get_device_name()
    found = next((bw for key, bw in BANDWIDTH if key in name), None)
    return name, override or found


def greedy_check(device, new: int) -> list[str]:
    """Greedy tokens of tiny fp32 models, basecli's static path (graph-captured on CUDA) against `generate`."""
    from basecli.config import SamplingParams
    from basecli.engine.static_loop import generate_static, supports_static

    lines = []
    for name, (kind, cfg) in TINY.items():
        hf, lean_model = build(kind, cfg, torch.float32, device, [])
        if lean_model is None or not supports_static(lean_model):
            lines.append(f"- {name}: no lean forward with a static cache in this checkout; not compared")
            continue
        prompt = torch.randint(1, cfg["vocab_size"], (PROMPT,), generator=torch.Generator().manual_seed(1)).tolist()
        want = hf.generate(torch.tensor([prompt], device=device), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           pad_token_id=0)[0, PROMPT:].tolist()
        params = [SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)] * 3
        got = {}
        with torch.inference_mode():
            for ev in generate_static(lean_model, ByteTokenizer(), [prompt] * 3, params):
                got.setdefault(ev.row, []).append(ev.token_id)
        same = all(got[r] == want for r in range(3))
        lines.append(f"- {name}, fp32, {new} tokens, 3 rows of one prompt: greedy tokens "
                     f"{'identical to' if same else 'DIFFER from'} `generate`")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, a few tokens")
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (1,16,64)")
    ap.add_argument("--compile-batches", default="1", help="batches that also run generate with static cache + compile")
    ap.add_argument("--bandwidth", type=float, default=None, help="the card's bandwidth in GB/s, if not known by name")
    ap.add_argument("--budget", type=float, default=330, help="seconds; compiled rows after it are skipped")
    args = ap.parse_args()

    start = time.perf_counter()
    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    if not args.dry_run and device == "cpu":
        print("bench/gpu.sh: no CUDA GPU here; use --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    shapes, dtype = (TINY, torch.float32) if args.dry_run else (SHAPES, torch.bfloat16)
    new = args.new_tokens or (6 if args.dry_run else 128)
    batches = [int(b) for b in (args.batches or ("1,2" if args.dry_run else "1,16,64")).split(",")]
    repeats = 1 if args.dry_run else 2
    compile_batches = {int(b) for b in args.compile_batches.split(",") if b}
    name, bandwidth = card(device, args.bandwidth * 1e9 if args.bandwidth else None)
    import transformers

    print(f"device: {name}; bandwidth bound: {f'{bandwidth / 1e12:.2f} TB/s' if bandwidth else 'unknown (pass --bandwidth)'}; "
          f"torch {torch.__version__}, transformers {transformers.__version__}; {str(dtype).split('.')[-1]}, prompt {PROMPT}, "
          f"{new} new tokens, greedy\n")
    print("| model | batch | engine | tok/s | ms/step | % of bound | decode-only % | vs eager |\n|---|---|---|---|---|---|---|---|")
    notes, results = [], {}
    for model_name, (kind, cfg) in shapes.items():
        hf, lean_model = build(kind, cfg, dtype, device, notes)
        basecli_model = lean_model if lean_model is not None else hf
        for batch in batches:
            prompt = torch.randint(1, cfg["vocab_size"], (PROMPT,), generator=torch.Generator().manual_seed(0)).tolist()
            engines = [("HF generate, eager", lambda n: run_hf(hf, batch, n, prompt, False))]
            if batch in compile_batches:
                engines.append(("HF generate, static cache + compile", lambda n: run_hf(hf, batch, n, prompt, True)))
            engines.append(("basecli", lambda n: run_basecli(basecli_model, batch, n, prompt)))
            if batch in (batches[0], batches[-1]):
                engines.append(("basecli, sampled (top-p 0.9)", lambda n: run_basecli(basecli_model, batch, n, prompt, True)))
            for engine, fn in engines:
                row = f"| {model_name} | {batch} | {engine} |"
                if "compile" in engine and time.perf_counter() - start > args.budget:
                    print(f"{row} skipped: past the {args.budget:.0f} s budget | | | | |")
                    continue
                try:
                    with torch.inference_mode():
                        full = timed(lambda: fn(new), device, repeats)
                        half = timed(lambda: fn(new // 2), device, repeats) if engine.startswith("basecli") else None
                except Exception as e:  # noqa: BLE001 - one failing row must not lose the table
                    print(f"{row} failed: {type(e).__name__}: {str(e)[:120]} | | | | |")
                    continue
                step = full / new
                share = bytes_per_step(hf, batch, PROMPT + new / 2) / step / bandwidth if bandwidth else None
                decode = None
                if half is not None and full > half:
                    decode_step = (full - half) / (new - new // 2)
                    decode = bytes_per_step(hf, batch, PROMPT + new * 3 / 4) / decode_step / bandwidth if bandwidth else None
                results[(model_name, batch, engine)] = rate = batch * new / full
                eager = results.get((model_name, batch, "HF generate, eager"))
                pct = lambda x: f"{100 * x:.0f}%" if x is not None else "–"  # noqa: E731
                print(f"{row} {rate:.1f} | {1000 * step:.2f} | {pct(share)} | {pct(decode)} | "
                      f"{'' if eager is None else f'{rate / eager:.2f}x'} |", flush=True)
        del hf, lean_model, basecli_model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    print()
    for line in greedy_check(device, 24 if not args.dry_run else new):
        print(line)
    for line in targets(results, shapes):
        print(line)
    for line in dict.fromkeys(notes):
        print(f"- note: {line}")
    print(f"- basecli rows: BASECLI_GRAPH={__import__('os').environ.get('BASECLI_GRAPH', 'auto')}; "
          f"whole run {time.perf_counter() - start:.0f} s")
    return 0


def targets(results: dict, shapes: dict) -> list[str]:
    """issue 18's targets, from this run's rows (the first model of each kind stands for GPT-2 124M / Llama-3.2-1B)."""
    names = list(shapes)
    small, one, eight = names[0], names[2 if len(names) > 2 else -1], names[-1]
    r = lambda m, b, e: results.get((m, b, e))  # noqa: E731
    out = []
    base, eager, comp = r(small, 1, "basecli"), r(small, 1, "HF generate, eager"), r(small, 1, "HF generate, static cache + compile")
    if base and eager:
        out.append(f"- {small}, batch 1: basecli {base / eager:.2f}x `generate` eager (target >= 5x)"
                   + (f", {base / comp:.2f}x static cache + compile (target >= 1.2x)" if comp else ""))
    batches = sorted({b for (m, b, e) in results if m == one and e == "basecli"})
    if len(batches) > 1 and r(one, 1, "basecli"):
        out.append(f"- {one}, {batches[-1]} rows of one prompt: {r(one, batches[-1], 'basecli') / r(one, 1, 'basecli'):.1f}x "
                   f"its batch 1, aggregate (target >= 20x at 64)")
    out.append(f"- {eight}, batch 1: see its basecli row's decode-only % (target >= 70%)")
    return out


if __name__ == "__main__":
    sys.exit(main())
