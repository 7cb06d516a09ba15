"""Sampling parameters, environment variables and cache paths. Standard library only."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from basecli.errors import UsageError

DEFAULT_MODEL = "smollm2-135m-instruct"

# Weight formats for the lean engine (--quantize, BASECLI_QUANTIZE): fp16 and int8 in engine/quant.py,
# q4 and q8 in engine/native.py. Named here, away from torch, so a bad value is refused before
# anything heavy is imported; engine/quant.py takes its MODES from here.
NATIVE_MODES = ("q4", "q8")  # basecli's own kernels (engine/native.py); fp16 and int8 are torch's fbgemm
FILE_MODE = "gguf"  # a GGUF file's own blocks (K-quants too) on the same kernels, where they lie (weights/gguf_blocks.py)
QUANTIZE_MODES = ("fp16", "int8", *NATIVE_MODES, FILE_MODE)


# The range of every numeric setting: (lowest, highest, lowest excluded, highest excluded). The
# command-line options (basecli/options.py) and template front matter are checked against these.
# Seeds stop at 2**63 - 1 so that resample's S+i still fits the 64-bit generator.
RANGES = {
    "max_tokens": (1, 1_000_000, False, False),
    "temperature": (0.0, 100.0, False, False),
    "top_k": (0, 1_000_000, False, False),  # beyond the vocabulary it keeps every token
    "top_p": (0.0, 1.0, True, False),
    "min_p": (0.0, 1.0, False, True),
    "repetition_penalty": (0.01, 10000.0, False, False),  # below 0.01, logits / p overflow float32
    "seed": (0, 2**63 - 1, False, False),
}
FLAGS = {"max_tokens": "--max-tokens", "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
         "min_p": "--min-p", "repetition_penalty": "--repetition-penalty", "seed": "--seed"}


def describe_range(name: str) -> str:
    lo, hi, open_lo, open_hi = RANGES[name]
    if isinstance(lo, int) and not open_lo and not open_hi:
        return f"a whole number from {lo} to {hi}"
    return f"in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"


def out_of_range(name: str, value) -> str | None:
    """What is wrong with `value` for setting `name`, or None when it is inside its range."""
    lo, hi, open_lo, open_hi = RANGES[name]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok and isinstance(lo, int) and not isinstance(value, int):
        ok = False
    if ok:
        ok = (lo < value if open_lo else lo <= value) and (value < hi if open_hi else value <= hi)
    if ok:
        return None
    return f"{FLAGS[name]} must be {describe_range(name)}, got {value!r}"


@dataclass(frozen=True)
class SamplingParams:
    """How one row is sampled. Neutral values switch a control off."""

    max_tokens: int = 64  # new tokens at most
    temperature: float = 1.0  # 0 = greedy; < 1 sharper, > 1 flatter
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # keep the smallest set with mass >= p; 1 = off
    min_p: float = 0.0  # drop tokens below min_p * p(most likely); 0 = off
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the text (CTRL paper)
    seed: int | None = None  # None = fresh randomness each run
    stop: tuple[str, ...] = ()  # stop strings, matched on decoded text
    ignore_eos: bool = False  # keep going past end-of-text

    def __post_init__(self):
        for name in ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed"):
            value = getattr(self, name)
            if name == "seed" and value is None:
                continue
            problem = out_of_range(name, value)
            if problem:
                raise UsageError(problem)
        if not all(self.stop):
            raise UsageError("--stop strings must not be empty")
        if isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def with_(self, **changes) -> "SamplingParams":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


def quantize_mode(mode: str | None, where: str = "--quantize") -> str | None:
    """`mode` if it names a weight format (None: none asked for; "none": the dequantised weights, not the
    GGUF's own blocks), else a UsageError naming the choices."""
    if mode is not None and mode not in (*QUANTIZE_MODES, "none"):
        raise UsageError(f"unknown quantisation {mode!r} ({where}); choose one of: {', '.join(QUANTIZE_MODES)}, none")
    return mode


# BASECLI_* numbers: (type, lowest, highest, default, what). Read with env_number(), which says
# in one line what is wrong with a value outside its range (docs/errors.md lists them).
ENV_NUMBERS = {
    "BASECLI_RETRIES": (int, 0, 20, 4, "retries of a failed request"),
    "BASECLI_TIMEOUT": (float, 0.1, 86400.0, 300.0, "seconds to wait for a server's next bytes"),
    "BASECLI_CONNECT_TIMEOUT": (float, 0.1, 3600.0, 10.0, "seconds to wait for a connection"),
    "BASECLI_DOWNLOAD_TIMEOUT": (float, 0.1, 86400.0, None, "seconds to wait for a download"),
    "BASECLI_THREADS": (int, 1, 4096, None, "CPU threads"),
    "BASECLI_MAX_INPUT_MB": (float, 0.001, 4096.0, 32.0, "MiB of text read from a file, stdin or a template"),
}


def env_number(name: str):
    """BASECLI_<name> as a number inside its range; its default when unset or empty."""
    kind, lo, hi, default, what = ENV_NUMBERS[name]
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value != value or not lo <= value <= hi:
        kind_name = "a whole number" if kind is int else "a number"
        raise UsageError(f"{name} ({what}) must be {kind_name} from {lo:g} to {hi:g}, got {raw!r}")
    return value


def home() -> Path:
    """BASECLI_HOME, else $XDG_CACHE_HOME/basecli, else ~/.cache/basecli."""
    if os.environ.get("BASECLI_HOME"):
        return Path(os.environ["BASECLI_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "basecli"


def config_dir() -> Path:
    """Where user settings (model profiles) live: $XDG_CONFIG_HOME/basecli, or BASECLI_HOME/config."""
    if os.environ.get("BASECLI_HOME"):
        return home() / "config"
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "basecli"


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (a container's or taskset's share), not the host's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_model() -> str:
    return os.environ.get("BASECLI_MODEL") or DEFAULT_MODEL


def fresh_seed() -> int:
    """A random seed, recorded so that any sampled run can be repeated with --seed."""
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
