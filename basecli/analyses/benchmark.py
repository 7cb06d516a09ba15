"""How fast a model loads and generates here: the measurement behind `basecli bench` and bench/.

Every figure is a wall-clock time read after a warm-up run and after the device is
synchronised, so queued GPU work is never mistaken for finished work. Decode speed is
measured from the first generated token to the last, so prefill is not counted twice.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

# A fixed text to cut prompts from, so every run and every engine sees the same tokens.
SAMPLE_TEXT = (
    "The history of the city begins with a small settlement on the banks of the river, where fishermen "
    "and traders built wooden houses and a market square. Over the centuries the town grew into a busy "
    "port, its streets lined with warehouses, churches and the tall houses of merchants who traded wool, "
    "salt and wine with distant countries. A university was founded, then a cathedral, and by the time "
    "the railway arrived the old walls had been torn down to make room for wide avenues and parks. "
)


@dataclass
class DecodeFigure:
    batch: int
    tokens: int  # generated after the first step, all rows together
    tokens_per_s: float  # all rows together, first token excluded
    row_tokens_per_s: float  # one row's rate: tokens_per_s / batch
    first_token_s: float  # prefill of every row plus the first sample


@dataclass
class Report:
    model: str
    engine: str  # transformers, or lean (basecli's own Llama forward, engine/lean.py)
    device: str
    dtype: str  # of activations, and of the weights unless quantized
    threads: int
    prompt_tokens: int
    new_tokens: int
    load_s: float  # this process, modules already imported, weights in the OS page cache
    prefill_tokens_per_s: float
    first_token_s: float  # batch 1, prompt of prompt_tokens
    decode: list[DecodeFigure]
    peak_rss_mb: float  # of this process so far (loads included)
    weights_mb: float  # parameters as held: in the chosen dtype, or quantised blocks at their own size
    gpu_peak_mb: float | None = None
    conversion_s: float | None = None  # the one-time GGUF -> safetensors conversion, as recorded when it ran
    startup: dict = field(default_factory=dict)  # fresh-process figures, see startup_figures
    versions: dict = field(default_factory=dict)
    quantize: str | None = None  # the weight format measured (--quantize, BASECLI_QUANTIZE), None for plain `dtype`
    weights: str | None = None  # each component's format, e.g. "float32 embeddings and norms, Q4_1 attention and MLP"

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_ids(tokenizer, n: int) -> list[int]:
    """Exactly n token ids of SAMPLE_TEXT, repeated as often as needed."""
    once = tokenizer.encode(SAMPLE_TEXT)
    ids = (tokenizer.prefix_ids or [])[:]
    while len(ids) < n:
        ids += once
    return ids[:n]


def synchronize(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def weights_mb(model) -> float:
    seen, total = set(), 0
    weights = model.tensors() if hasattr(model, "tensors") else model.parameters()  # engine/lean.py, or torch's
    for p in weights:  # tied weights are one tensor, counted once
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total / 2**20


def timed_generation(model, tokenizer, prompts: Sequence[Sequence[int]], new_tokens: int, *, device: str,
                     sampled: bool = False) -> tuple[float, float, int]:
    """Run the engine; return (seconds to the first step's tokens, seconds from there to the last, tokens after the first step)."""
    from basecli.config import SamplingParams
    from basecli.engine.static_loop import generate_static, pick_generate

    if sampled:
        params = [SamplingParams(max_tokens=new_tokens, temperature=1.0, seed=i, ignore_eos=True) for i in range(len(prompts))]
    else:
        params = [SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)] * len(prompts)
    generate = pick_generate(model)
    if generate is generate_static:  # tokens come back a few steps at a time: the first step is a run of its own
        one = [p.with_(max_tokens=1) for p in params]
        # Untimed first: the first run allocates the static buffers (and captures the graph on CUDA), which the
        # timed runs then reuse; timing it would make the first step look longer than the whole run.
        timed_events(generate(model, tokenizer, prompts, one), device)
        first, _ = timed_events(generate(model, tokenizer, prompts, one), device)
        total, count = timed_events(generate(model, tokenizer, prompts, params), device)
        return first, total - first, count - len(prompts)
    synchronize(device)
    t0 = time.perf_counter()
    first = None
    count = 0
    for ev in generate(model, tokenizer, prompts, params):
        if first is None:
            synchronize(device)
            first = time.perf_counter()
        count += 1
    synchronize(device)
    end = time.perf_counter()
    return first - t0, end - first, count - len(prompts)


def timed_events(events, device: str) -> tuple[float, int]:
    """(seconds, count) of running an Event iterator to its end."""
    synchronize(device)
    t0 = time.perf_counter()
    count = sum(1 for _ in events)
    synchronize(device)
    return time.perf_counter() - t0, count


def measure_decode(backend, batch: int, prompt: Sequence[int], new_tokens: int, *, sampled: bool = False,
                   repeats: int = 1) -> DecodeFigure:
    """Aggregate decode speed of `batch` rows of the same prompt (the resample case when sampled)."""
    runs = [timed_generation(backend.model, backend.tokenizer, [prompt] * batch, new_tokens, device=backend.device, sampled=sampled)
            for _ in range(repeats)]
    first_s, decode_s, tokens = min(runs, key=lambda r: r[1])
    rate = tokens / decode_s if decode_s > 0 else float("nan")
    return DecodeFigure(batch, tokens, round(rate, 2), round(rate / batch, 2), round(first_s, 4))


def measure_prefill(backend, prompt: Sequence[int], repeats: int = 3) -> tuple[float, float]:
    """(prompt tokens per second, time to first token) at batch 1, the median of `repeats` runs."""
    times = [timed_generation(backend.model, backend.tokenizer, [prompt], 1, device=backend.device)[0] for _ in range(repeats)]
    ttft = statistics.median(times)
    return len(prompt) / ttft, ttft


def run(model: str | None = None, *, batches: Sequence[int] = (1, 8, 32), prompt_tokens: int = 128, new_tokens: int = 128,
        device: str = "auto", dtype: str = "auto", engine: str | None = None, quantize: str | None = None,
        threads: int | None = None, startup: bool = True, progress: Callable[[str], None] = lambda s: None) -> Report:
    """The whole `basecli bench` measurement of one model."""
    if startup:  # first, before this process loads anything that could warm caches it should not
        progress("startup: fresh processes (help, load, first token)")
        start = startup_figures(model, device=device, dtype=dtype, engine=engine, quantize=quantize, threads=threads)
    else:
        start = {}
    import torch

    from basecli.weights import models
    from basecli.backends.local import LocalBackend

    progress("loading the model")
    LocalBackend(model, device=device, dtype=dtype, engine=engine, quantize=quantize)  # the first load pays for imports and reads the file
    t0 = time.perf_counter()
    backend = LocalBackend(model, device=device, dtype=dtype, engine=engine, quantize=quantize)
    load_s = time.perf_counter() - t0
    if threads:  # after loading: LocalBackend sets threads from what else is running, which would undo --threads
        torch.set_num_threads(threads)
    prompt = prompt_ids(backend.tokenizer, prompt_tokens)
    if len(prompt) + new_tokens > backend.context_length:
        from basecli.errors import UsageError

        raise UsageError(f"--prompt-tokens + --new-tokens is {len(prompt) + new_tokens}, more than {backend.name}'s "
                         f"context window of {backend.context_length}; ask for fewer")
    progress("warm-up")
    timed_generation(backend.model, backend.tokenizer, [prompt[:16]] * 2, 4, device=backend.device)
    progress(f"prefill: {prompt_tokens} prompt tokens")
    pp, ttft = measure_prefill(backend, prompt)
    figures = []
    for b in batches:
        progress(f"decode: batch {b}, {new_tokens} new tokens")
        figures.append(measure_decode(backend, b, prompt, new_tokens))
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if backend.device.startswith("cuda") else None
    from importlib.metadata import version

    from basecli.weights.modelinfo import weight_formats, weights_summary

    return Report(
        model=backend.name, engine=backend.engine, device=backend.device, dtype=str(backend.dtype).removeprefix("torch."), threads=torch.get_num_threads(),
        prompt_tokens=len(prompt), new_tokens=new_tokens, load_s=round(load_s, 3), prefill_tokens_per_s=round(pp, 1),
        first_token_s=round(ttft, 4), decode=figures, peak_rss_mb=round(peak_rss_mb(), 1), weights_mb=round(weights_mb(backend.model), 3),
        gpu_peak_mb=round(gpu_peak, 1) if gpu_peak is not None else None, startup=start,
        conversion_s=models.manifest(backend.folder).get("converted_s"),
        versions={"torch": torch.__version__, "transformers": version("transformers"), "python": sys.version.split()[0]},
        quantize=backend.quantize, weights=weights_summary(weight_formats(backend.model)),
    )


# --- fresh processes: what a user waits for at the prompt -------------------------------------


def run_process(args: Sequence[str], env: dict | None = None, timeout: float = 600) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, stdout) of one child process."""
    wall, _, rss, out = run_process_timed(args, env, timeout)
    return wall, rss, out


def run_process_timed(args: Sequence[str], env: dict | None = None, timeout: float = 600) -> tuple[float, float | None, float, str]:
    """(wall seconds, seconds to its first byte on stdout or None, peak RSS in MiB, stdout) of one child process.

    `complete` in a pipe prints nothing but the continuation, flushed token by token, so its
    first byte is the first token: what a user waits for, without the exit's clean-up.
    """
    full_env = dict(os.environ, **(env or {}))
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=full_env)
    chunks, first = [], None
    while chunk := os.read(proc.stdout.fileno(), 1 << 16):
        if first is None:
            first = time.perf_counter() - t0
        chunks.append(chunk)
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        from basecli.errors import BasecliError

        raise BasecliError(f"a timed run failed ({' '.join(args[-6:])} exited with {proc.returncode}); "
                           f"run that command alone to see why")
    return wall, first, usage.ru_maxrss / 1024, b"".join(chunks).decode("utf-8", errors="replace")


def best_wall(args: Sequence[str], repeats: int = 5) -> float:
    """The fastest of a few runs: start-up noise on a shared machine only ever adds time."""
    return min(run_process(args)[0] for _ in range(repeats))


LOAD_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import torch
from basecli.backends.local import LocalBackend
t1 = time.perf_counter()
b = LocalBackend(sys.argv[1] or None, device=sys.argv[2], dtype=sys.argv[3], engine=sys.argv[4], quantize=sys.argv[5] or None)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""


def entry_point() -> list[str]:
    """The `basecli` script installed next to this Python, as a user starts it; `python -m basecli`
    (runpy's own imports, ~20 ms more) where there is none."""
    from pathlib import Path

    script = Path(sys.executable).with_name("basecli")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "basecli"]


def startup_figures(model: str | None, *, device: str = "auto", dtype: str = "auto", engine: str | None = None,
                    quantize: str | None = None, threads: int | None = None, repeats: int = 3) -> dict:
    """Fresh-process figures: --help, import torch + load, and `complete -n 1`: start to first token
    (the fastest of `repeats`), start to exit, peak RSS, and the peak RSS of `import torch` alone."""
    py = entry_point()
    out: dict = {"help_s": round(best_wall([*py, "--help"], repeats=3), 3),
                 "tokenize_s": round(best_wall([*py, "tokenize", "-e", "cl100k_base", "hi"], repeats=3), 3)}
    engine = engine or os.environ.get("BASECLI_ENGINE") or "auto"
    # a mode not given is left to BASECLI_QUANTIZE, which the children inherit as this process saw it
    load = json.loads(run_process([sys.executable, "-c", LOAD_PROBE, model or "", device, dtype, engine, quantize or ""])[2])
    out["import_s"] = round(load["import_s"], 3)
    out["load_fresh_process_s"] = round(load["load_s"], 3)
    args = [*py, "complete", "Hello", "-n", "1", "-t", "0", "--device", device, "--dtype", dtype]
    if model:
        args += ["--model", model]
    env = {"BASECLI_ENGINE": engine, **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
           **({"BASECLI_QUANTIZE": quantize} if quantize else {})}
    runs = [run_process_timed(args, env) for _ in range(max(1, repeats))]
    wall, first, rss, _ = min(runs, key=lambda r: r[1] if r[1] is not None else r[0])  # noise only ever adds time
    out["complete_first_token_s"] = round(wall, 3)  # start to exit (the name predates the next figure)
    out["complete_first_output_s"] = round(first, 3) if first is not None else None
    out["complete_peak_rss_mb"] = round(max(r[2] for r in runs), 1)
    # what `import torch` alone keeps resident: the floor under any torch engine's peak
    out["torch_import_rss_mb"] = round(run_process([sys.executable, "-c", "import torch"])[1], 1)
    return out
