"""A model on this machine: basecli's own Llama forward (engine/lean.py) where it applies, else transformers'
model code, driven by basecli's own decode loop."""

from __future__ import annotations

import os
import sys
import time
from typing import Iterator, Sequence

from basecli.backends import Backend
from basecli.weights import models
from basecli.weights.integrity import cache_hint, check_folder
from basecli.config import FILE_MODE, NATIVE_MODES, SamplingParams, env_number, quantize_mode, usable_cpus
from basecli.errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# auto (the default): basecli's own Llama forward (engine/lean.py) where it applies, transformers' model code elsewhere;
# lean: the same, but saying so when it falls back; transformers: always transformers (BASECLI_ENGINE=transformers).
ENGINES = ("transformers", "lean", "auto")


def pick_device(name: str = "auto") -> str:
    import torch

    if name not in DEVICES and not name.startswith("cuda:"):
        raise UsageError(f"unknown --device {name!r}; choose one of: {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for but is not available; use --device cpu")
    return name


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (x86 "flags", Arm "Features"); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("flags", "Features"))][:1]
    except OSError:
        return set()
    return set(lines[0].partition(":")[2].split()) if lines else set()


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX on x86; bf16 on recent Arm)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def pick_threads() -> int | None:
    """CPU threads for torch (and basecli's kernels): BASECLI_THREADS if set; none chosen if OMP_NUM_THREADS is
    set (torch reads it); else the cores that no other process is running on right now, at least one.

    Why: OpenMP workers wait on each other at every op, so a thread on a core another process holds
    slows every step (bench/README.md, "Figures behind the code"). "Right now" comes from the kernel's
    count of runnable tasks (Linux); the 1-minute load average, used where that is missing, still counts
    a basecli run that ended seconds ago, and so would give the next run too few threads.
    """
    if os.environ.get("BASECLI_THREADS"):
        return env_number("BASECLI_THREADS")
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = usable_cpus()
    busy = others_running()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except OSError:
            return None
    return max(1, min(cores, round(cores - busy)))


def others_running(samples: int = 3, gap: float = 0.002) -> int | None:
    """How many tasks besides this one are running or waiting for a core, the most seen in a few looks
    a couple of milliseconds apart (one look can fall between another process's time slices); None
    where /proc/stat is not there."""
    seen = []
    for i in range(samples):
        try:
            with open("/proc/stat", "rb") as f:
                line = next((ln for ln in f if ln.startswith(b"procs_running ")), None)
        except OSError:
            return None
        if line is None:
            return None
        seen.append(int(line.split()[1]) - 1)  # this process is one of them
        if i + 1 < samples:
            time.sleep(gap)
    return max(0, max(seen))


def pick_dtype(name: str, device: str):
    import torch

    if name not in DTYPES:
        raise UsageError(f"unknown --dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


class LocalBackend(Backend):
    local = True
    def __init__(self, model: str | None = None, *, device: str = "auto", dtype: str = "auto",
                 trust_remote_code: bool = False, allow_pickle: bool = False, engine: str | None = None,
                 quantize: str | None = None, prefix_cache: bool = False):
        t0 = time.perf_counter()
        # the argument wins, else BASECLI_QUANTIZE; checked now, not after the weights have loaded
        if quantize:
            self.quantize = quantize_mode(quantize)
        else:
            self.quantize = quantize_mode(os.environ.get("BASECLI_QUANTIZE") or None, "BASECLI_QUANTIZE")
        self.source = models.resolve(model)
        if self.quantize == FILE_MODE:
            file_blocks(self.source)  # a usage error, before any conversion, unless the file's blocks run as they are
        # a K-quant GGUF (Q4_K_M, Q5_K_M...) runs in its own blocks (weights/gguf_blocks.py) unless told otherwise
        in_file = in_file_format(self.source, self.quantize, device, dtype, engine)
        self.folder = models.model_dir(self.source, allow_pickle=allow_pickle, weights=not in_file)
        check_folder(self.folder)
        self.name = self.source.name
        self.tokenizer = models.tokenizer_for(self.folder, self.name)
        return_free_memory()  # before the weights arrive, or the peak is already set
        import_torch()  # after the tokenizer: the other way round left 5 MiB more in the heap at the peak
        self.engine = engine or os.environ.get("BASECLI_ENGINE") or "auto"
        if self.engine not in ENGINES:
            raise UsageError(f"unknown engine {self.engine!r} (BASECLI_ENGINE); choose one of: {', '.join(ENGINES)}")
        # 4/8-bit and fbgemm weights run on the CPU with fp32 activations only: that is what auto means with them
        self.device = pick_device("cpu" if self.quantize not in (None, "none") and device == "auto" else device)
        from basecli.backends import weight_path

        self.weight_path = weight_path.choose(self.source, self.folder, quantize=self.quantize, device=self.device,
                                              dtype=dtype, engine=self.engine)
        self.quantize = self.weight_path.quantize
        if self.weight_path.default and not native_builds():
            self.weight_path = weight_path.WeightPath(None, "dequantised: basecli's kernels do not build here (no C compiler)")
            self.quantize = None
            print("basecli: note: no C compiler to build basecli's kernels, so the GGUF's weights run dequantised "
                  "(slower); install gcc (or set CC) for its own block formats", file=sys.stderr)
        if self.quantize == FILE_MODE and self.weight_path.default and not in_file:
            self.weight_path = weight_path.WeightPath(None, "dequantised: basecli's kernels do not run this GGUF's blocks as they are")
            self.quantize = None
        if in_file and self.quantize != FILE_MODE:  # its float32 weights were not written, its blocks expected: now they are
            self.folder = models.model_dir(self.source, allow_pickle=allow_pickle)
        if self.device == "cpu" and (threads := pick_threads()):
            import torch

            torch.set_num_threads(threads)
        self.dtype = pick_dtype("float32" if self.quantize and dtype == "auto" else dtype, self.device)
        if self.quantize == FILE_MODE and (self.device != "cpu" or dtype not in ("auto", "float32")):
            raise UsageError(f"--quantize {FILE_MODE} runs on the CPU with float32 activations; "
                             "leave --device and --dtype unset (or cpu and float32)")
        self.model = None
        if self.quantize == FILE_MODE:  # weights/gguf_blocks.py: the lean engine over the file's blocks where they lie
            from basecli.weights import gguf_blocks

            self.model, self.engine = gguf_blocks.load(file_blocks(self.source), self.folder), "lean"
        elif self.engine != "transformers":
            self.model = load_lean(self.folder, self.dtype, self.device, quiet=self.engine == "auto", populate=not self.quantize,
                                   convert=native_converter(self.quantize, self.device, self.dtype))
            self.engine = "lean"  # what runs, not what was asked: auto resolves to one of the two
        if self.model is None:
            self.engine = "transformers"
            self.model = load_weights(self.folder, self.dtype, self.device, trust_remote_code, allow_pickle)
            if self.weight_path.default:  # the file's blocks need the lean engine, which does not run this architecture
                self.weight_path = weight_path.WeightPath(None, "dequantised: basecli's kernels run Llama-architecture models only")
                self.quantize = None
        if self.quantize and self.quantize != FILE_MODE:  # engine/quant.py (fp16, int8) or engine/native.py (q4, q8)
            from basecli.engine import quant

            quant.apply(self.model, self.quantize)
        cfg = self.model.config
        self.context_length = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 1024))
        # kept between generations on request (loom): a prompt that extends an earlier one reads only what is new
        self.prefix_cache = None
        if prefix_cache:
            from basecli.engine.prefix_cache import PrefixCache

            self.prefix_cache = PrefixCache()
        self.load_seconds = time.perf_counter() - t0

    def encode(self, text: str, *, truncate: bool = False, reserve: int = 1) -> list[int]:
        """Prompt ids as the model sees them; too long is an error, or cut from the left with --truncate."""
        ids = self.tokenizer.prefix_ids + self.tokenizer.encode(text)
        if not ids:  # an empty prompt: start a fresh document
            ids = [self.tokenizer.bos_id if self.tokenizer.bos_id is not None else min(self.tokenizer.eos_ids)]
        room = self.context_length - reserve
        if len(ids) > room:
            if not truncate:
                raise UsageError(
                    f"the prompt is {len(ids)} tokens but {self.name}'s context window is {self.context_length} "
                    f"(with {reserve} kept for the answer); shorten it or pass --truncate to cut it from the left"
                )
            print(f"basecli: warning: prompt cut from {len(ids)} to its last {room} tokens to fit the context window",
                  file=sys.stderr)
            ids = ids[len(ids) - room :]
        return ids

    def stream(self, prompts: Sequence[str], params: Sequence[SamplingParams], *, alternatives: int = 0,
               entropy: bool = False, seeds: Sequence[int] | None = None, truncate: bool = False) -> Iterator:
        from basecli.engine.static_loop import pick_generate

        generate = pick_generate(self.model)
        # --truncate cuts a long prompt so that --max-tokens still fits after it (at most half the window)
        encoded = [self.encode(pr, truncate=truncate, reserve=min(p.max_tokens, self.context_length // 2) if truncate else 1)
                   for pr, p in zip(prompts, params)]
        # a row never runs past the context window: it ends with finish_reason "length" there
        fitted = [p.with_(max_tokens=max(1, min(p.max_tokens, self.context_length - len(ids)))) for p, ids in zip(params, encoded)]
        cut = [(p.max_tokens, f.max_tokens) for p, f in zip(params, fitted) if f.max_tokens < p.max_tokens]
        if cut:
            print(f"basecli: warning: the prompt leaves room for {cut[0][1]} of the {cut[0][0]} new tokens asked for "
                  f"({self.name}'s context window is {self.context_length})", file=sys.stderr)
        return self._checked(generate(self.model, self.tokenizer, encoded, fitted, alternatives=alternatives, entropy=entropy,
                                      seeds=seeds, prefix_cache=self.prefix_cache))

    def _checked(self, events):
        """The events; damaged weights (NaN logits) named with the directory they came from."""
        from basecli.engine.loop import NonFinite

        try:
            yield from events
        except NonFinite as e:
            raise UsageError(f"{e} ({self.folder}){cache_hint(self.folder) or '; replace the damaged files'}") from None

    def score(self, text: str, *, context: str | None = None, alternatives: int = 0, stride: int | None = None,
              window: int | None = None, progress=None) -> list:
        """Teacher-forced ScoredTokens of `text`, the first conditioned on `context` or the start token."""
        from basecli.engine.score import score_text

        return score_text(self.model, self.tokenizer, self.context_length, text, context=context, alternatives=alternatives,
                          stride=stride, window=window, progress=progress)


def import_torch() -> None:
    """Import torch, then freeze what it made so the garbage collector never walks it again.

    Importing torch leaves about 166,000 tracked objects (modules, functions: they live as long
    as the process), which the collector's first full pass would otherwise walk. Pausing the
    collector during the import as well is faster still but raises the peak memory of `complete`
    (the import's garbage piles up before it is freed), so it is not done; figures in bench/README.md.
    """
    import gc

    if "torch" in sys.modules:
        return
    import torch  # noqa: F401

    gc.freeze()


def return_free_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc keeps them by default).

    Building the tokenizer parses a multi-megabyte JSON file in Rust; what that freed would stay
    resident and add to the peak (bench/README.md). Not glibc (musl, macOS): nothing to do.
    """
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols, libc's among them
    except (OSError, AttributeError):
        pass


def in_file_format(source, quantize: str | None, device: str, dtype: str, engine: str | None) -> bool:
    """Whether the model will run in its GGUF file's own K-quant blocks (--quantize gguf, or by default when nothing
    asks for another format: backends/weight_path.py), so its float32 weights need not be written at all."""
    if source.kind != "gguf" or quantize not in (None, FILE_MODE) or device not in ("auto", "cpu"):
        return False
    if quantize is None and (dtype != "auto" or (engine or os.environ.get("BASECLI_ENGINE") or "auto") == "transformers"):
        return False
    from basecli.weights import gguf_blocks

    return gguf_blocks.runs_in_place(source.location)


def file_blocks(source) -> str:
    """The GGUF file whose blocks --quantize gguf runs, or a UsageError saying why it cannot."""
    from basecli.weights import gguf_blocks

    path = str(models.embedded_gguf()) if source.kind == "embedded" else source.location
    if source.kind not in ("gguf", "embedded") or not gguf_blocks.runs_in_place(path, k_quants=False):
        raise UsageError(f"--quantize {FILE_MODE} runs a Llama GGUF file's own blocks ({', '.join(gguf_blocks.NAMES)}); "
                         f"{source.name} is not one: use q4 or q8")
    return path


def native_converter(quantize: str | None, device: str, dtype):
    """For q4/q8 on the CPU in fp32, the function that quantises each matrix as the lean engine reads it
    (the fp32 matrices are then never all resident at once); None otherwise (quant.apply does it after
    loading, or says why it cannot)."""
    import torch

    if quantize not in NATIVE_MODES or device != "cpu" or dtype != torch.float32:
        return None
    from basecli.engine import native

    return native.converter(quantize)


def native_builds() -> bool:
    """Whether basecli's kernels are built, or can be built, here."""
    from basecli.engine import native

    try:
        native.library()
    except native.NativeUnavailable:
        return False
    return True


def load_lean(folder, dtype, device: str, *, quiet: bool, populate: bool = True, convert=None):
    """basecli's own forward pass where it supports the model, else None (and transformers is used)."""
    from basecli.engine import forwards

    try:
        return forwards.load(folder, dtype, device, populate=populate, convert=convert)
    except forwards.Unsupported as e:
        if not quiet:
            print(f"basecli: note: the lean engine does not run this model ({e}); using transformers", file=sys.stderr)
        return None


def load_weights(folder, dtype, device: str, trust_remote_code: bool, allow_pickle: bool):
    import logging

    from transformers import AutoModelForCausalLM

    logging.getLogger("transformers").setLevel(logging.ERROR)  # load reports are noise on a CLI
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=None if allow_pickle else True
        )
    except ValueError as e:
        msg = str(e).splitlines()[0]
        if "trust_remote_code" in msg:
            raise UsageError(f"this model needs its own code from the hub; pass --trust-remote-code if you trust it") from None
        raise UsageError(f"cannot load the model in {folder}: {msg[:200]}") from None
    except OSError as e:
        msg = str(e).splitlines()[0]
        hint = " (pass --allow-pickle to load .bin weights)" if not allow_pickle else ""
        raise UsageError(f"cannot load the model in {folder}: {msg[:200]}{hint}") from None
    except Exception as e:
        import pickle

        # torch's weights-only loader refuses a pickle that would run code or build other objects
        if isinstance(e, pickle.UnpicklingError) or "weights only load failed" in str(e).lower():
            raise UsageError(f"refused the pickle weights in {folder}: they hold more than tensors (code or other objects), "
                             f"which basecli never runs; get safetensors weights for this model") from None
        raise
    return model.to(device).eval()
