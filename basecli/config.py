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
        checks = [
            (self.max_tokens >= 1, f"--max-tokens must be at least 1, got {self.max_tokens}"),
            (self.temperature >= 0, f"--temperature must be >= 0, got {self.temperature}"),
            (self.top_k >= 0, f"--top-k must be >= 0 (0 turns it off), got {self.top_k}"),
            (0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}"),
            (0 <= self.min_p < 1, f"--min-p must be in [0, 1), got {self.min_p}"),
            (self.repetition_penalty > 0, f"--repetition-penalty must be > 0, got {self.repetition_penalty}"),
            (all(self.stop), "--stop strings must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
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


def default_model() -> str:
    return os.environ.get("BASECLI_MODEL") or DEFAULT_MODEL


def fresh_seed() -> int:
    """A random seed, recorded so that any sampled run can be repeated with --seed."""
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
