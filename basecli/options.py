"""The command-line options, declared once per concern: a command takes the model choice and the sampling
settings as one value each (`ModelChoice`, `SamplingParams`), and `grouped` lists their flags for typer.

Names are the ones users know from llama.cpp and the OpenAI API. Nothing heavy is imported here: every
command's `--help` reads this module.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, fields
from typing import Annotated, Callable, List, Optional

import typer

from basecli.config import SamplingParams, fresh_seed, quantize_mode


def _quantize(ctx: typer.Context, param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
    """Check the mode while the flags are parsed, before anything loads (one stderr line, exit 2).

    A value from BASECLI_QUANTIZE is checked, then passed on as None: LocalBackend reads the
    variable itself, and a shell-wide setting must not make --base-url an error, only the flag does.
    """
    from_env = getattr(ctx.get_parameter_source(param.name), "name", None) == "ENVIRONMENT"
    quantize_mode(value, "BASECLI_QUANTIZE" if from_env else "--quantize")
    return None if from_env else value


def _text_argument(what: str):
    return Annotated[Optional[str], typer.Argument(help=f"{what}, '-' for stdin, or @FILE. Read from stdin when omitted and piped.")]


PromptArg = _text_argument("The prompt text")
TextArg = _text_argument("The text")
Truncate = Annotated[bool, typer.Option("--truncate", help="Cut a prompt longer than the context window from the left instead of failing.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON record (see docs/json.md) instead of text.")]


# --- the model choice ---------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """Which model answers, and how a local one is loaded: --model and the Model panel."""

    model: Optional[str] = None
    base_url: Optional[str] = None
    device: str = "auto"
    dtype: str = "auto"
    quantize: Optional[str] = None
    trust_remote_code: bool = False
    allow_pickle: bool = False

    def open(self, *, prefix_cache: bool = False):
        """The backend: a server for --base-url or a saved profile, else the local model (basecli.backends.Backend).
        `prefix_cache`: a local model keeps recent prompts' keys and values between generations (loom)."""
        from basecli.backends import open_backend

        return open_backend(self.model, base_url=self.base_url, device=self.device, dtype=self.dtype, quantize=self.quantize,
                            trust_remote_code=self.trust_remote_code, allow_pickle=self.allow_pickle, prefix_cache=prefix_cache)


MODEL_OPTIONS = {
    "model": Annotated[Optional[str], typer.Option("--model", "-m", envvar="BASECLI_MODEL", show_envvar=True,
                       help="Alias (gpt2, smollm2-135m, ...), hub id, model directory or .gguf file. Default: the embedded SmolLM2-135M-Instruct.")],
    "base_url": Annotated[Optional[str], typer.Option("--base-url", envvar="BASECLI_BASE_URL", show_envvar=True,
                          help="An OpenAI-compatible server (vLLM, llama.cpp) to use instead of a local model, e.g. http://localhost:8000/v1.",
                          rich_help_panel="Model")],
    "device": Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda or mps.", rich_help_panel="Model")],
    "dtype": Annotated[str, typer.Option("--dtype", help="auto (bf16 on CUDA and bf16-capable CPUs, else fp32), float32, bfloat16, float16.",
                       rich_help_panel="Model")],
    "quantize": Annotated[Optional[str], typer.Option("--quantize", envvar="BASECLI_QUANTIZE", show_envvar=True, callback=_quantize,
                          help="Weight format of a local Llama on the CPU (lean engine, fp32): q4 or q8 (basecli's own kernels; "
                               "q4 is the embedded GGUF's own format, about 7x faster than fp32), fp16 or int8 (torch fbgemm), "
                               "gguf (a GGUF file's own blocks where they lie: Q4_K_M, Q5_K_M, Q6_K files), none (dequantised). "
                               "Default: a GGUF's own blocks where a kernel runs them (`info` says which).",
                          rich_help_panel="Model")],
    "trust_remote_code": Annotated[bool, typer.Option("--trust-remote-code", help="Run model code from the hub (only if you trust it).",
                                   rich_help_panel="Model")],
    "allow_pickle": Annotated[bool, typer.Option("--allow-pickle", help="Allow .bin (pickle) weights; default is safetensors or GGUF only.",
                              rich_help_panel="Model")],
}


# --- sampling -------------------------------------------------------------------------------

SAMPLING_HELP = {
    "max_tokens": "New tokens at most.",
    "temperature": "0 = greedy; < 1 sharper, > 1 flatter.",
    "top_k": "Keep the k most likely tokens (0 = off).",
    "top_p": "Keep the smallest set of tokens with mass >= p (1 = off).",
    "min_p": "Drop tokens below min-p x p(top token) (0 = off).",
    "repetition_penalty": "> 1 discourages tokens already in the text (1 = off).",
    "seed": "Make sampling reproducible.",
    "stop": "Stop when this text appears (repeatable); it is not printed. Escapes like \\n work.",
    "ignore_eos": "Keep going past the end-of-text token.",
}
# chat and fewshot: a value not given comes from the template's front matter, then from the command's fallback
TEMPLATE_HELP = {**SAMPLING_HELP, "temperature": "0 = greedy.", "top_p": "Nucleus sampling (1 = off).",
                 "min_p": "Drop tokens below min-p x p(top) (0 = off).", "repetition_penalty": "> 1 discourages repeats (1 = off)."}
SAMPLING_FLAGS = {"max_tokens": ("--max-tokens", "-n"), "temperature": ("--temperature", "-t"), "seed": ("--seed", "-s")}
SAMPLING_TYPES = {"max_tokens": int, "temperature": float, "top_k": int, "top_p": float, "min_p": float,
                  "repetition_penalty": float, "seed": int, "stop": List[str], "ignore_eos": bool}


def at_most_one(**given) -> None:
    """Flags that each choose the output are refused together (`--json --show-probs` used to ignore one).
    Keyword names are the flags without their dashes, underscores for dashes."""
    from basecli.errors import UsageError

    chosen = ["--" + name.replace("_", "-") for name, on in given.items() if on]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} each choose what is printed; give one of them")


def _in_range(ctx: typer.Context, param: typer.CallbackParam, value):
    """A sampling value outside its range (config.RANGES, listed in docs/errors.md) is refused while the
    flags are parsed, before anything loads."""
    from basecli.config import RANGES, out_of_range
    from basecli.errors import UsageError

    if value is None:
        return value
    if param.name == "stop":
        if not all(value):
            raise UsageError("--stop strings must not be empty")
    elif param.name in RANGES and (problem := out_of_range(param.name, value)):
        raise UsageError(problem)
    return value


def _sampling_option(name: str, help: str, optional: bool):
    kind = SAMPLING_TYPES[name]
    flags = SAMPLING_FLAGS.get(name, ("--" + name.replace("_", "-"),))
    return Annotated[Optional[kind] if optional or name in ("seed", "stop") else kind,
                     typer.Option(*flags, help=help, rich_help_panel="Sampling", callback=_in_range)]


def unescape(s: str) -> str:
    """'\\n' typed on a command line means a newline in a stop string."""
    return s.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8") if "\\" in s else s


@dataclass(frozen=True)
class SamplingFlags:
    """The sampling flags of chat and fewshot as given (None: not given), before the template is read."""

    given: dict
    fallback: dict
    fresh_seed: bool

    def resolve(self, settings: dict) -> SamplingParams:
        """Each value from its flag, else the template's front matter, else the command's fallback."""
        values = {k: v if v is not None else settings.get(k, self.fallback.get(k)) for k, v in self.given.items()}
        values["stop"] = tuple(unescape(s) for s in self.given["stop"]) if self.given["stop"] is not None \
            else tuple(settings.get("stop", self.fallback.get("stop", ())))
        if values.get("seed") is None and self.fresh_seed:
            values["seed"] = fresh_seed()
        return SamplingParams(**{k: v for k, v in values.items() if v is not None})


# --- groups ---------------------------------------------------------------------------------


class Group:
    """A parameter's default that stands for several options; `grouped` lists them and builds the value."""

    def __init__(self, options: dict, defaults: dict, build: Callable[[dict], object], listed_last: tuple = ()):
        self.options, self.defaults, self.build, self.listed_last = options, defaults, build, listed_last

    def parameters(self, kind) -> tuple[list, list]:
        made = [inspect.Parameter(name, kind, annotation=annotation, default=self.defaults[name])
                for name, annotation in self.options.items()]
        return [p for p in made if p.name not in self.listed_last], [p for p in made if p.name in self.listed_last]

    def collect(self, kwargs: dict):
        return self.build({name: kwargs.pop(name) for name in self.options if name in kwargs})


def model_choice(*only: str) -> Group:
    """The model options (all of them, or `only` these); --model is listed where the command puts it, the
    Model panel last, after the command's own options."""
    names = only or tuple(MODEL_OPTIONS)
    defaults = {f.name: f.default for f in fields(ModelChoice)}
    return Group({n: MODEL_OPTIONS[n] for n in names}, defaults, lambda values: ModelChoice(**values),
                 listed_last=tuple(n for n in names if n != "model"))


def sampling(*, without: tuple = (), only: tuple | None = None, **defaults) -> Group:
    """The sampling options as a SamplingParams, with this command's defaults. A seed not given is a fresh one,
    recorded in the output, so any run can be repeated; knobs `without` keep SamplingParams' neutral values."""
    names = [n for n in (only or SAMPLING_TYPES) if n not in without]
    base = {f.name: f.default for f in fields(SamplingParams)} | {"stop": None} | defaults

    def build(values: dict) -> SamplingParams:
        stop = tuple(unescape(s) for s in values.pop("stop", None) or ())
        seed = values.pop("seed", None)
        return SamplingParams(**values, stop=stop, seed=seed if seed is not None else fresh_seed())

    return Group({n: _sampling_option(n, SAMPLING_HELP[n], False) for n in names}, {n: base[n] for n in names}, build)


def template_sampling(*, help: dict | None = None, fresh_seed: bool, **fallback) -> Group:
    """chat's and fewshot's sampling options: flag > template front matter > `fallback` (SamplingFlags.resolve)."""
    names = [n for n in SAMPLING_TYPES if n != "ignore_eos"]
    neutral = {f.name: f.default for f in fields(SamplingParams)}
    texts = {n: TEMPLATE_HELP[n] + (f" Default: template, else {fallback[n]:g}." if isinstance(fallback.get(n), (int, float)) else "")
             for n in names} | (help or {})
    return Group({n: _sampling_option(n, texts[n], True) for n in names}, dict.fromkeys(names),
                 lambda given: SamplingFlags(given, {**neutral, **fallback}, fresh_seed))


def grouped(command):
    """Let typer see each Group parameter as its options, and hand the command the group's one value.

    typer reads a command's parameters with inspect.signature, so the wrapper carries the expanded
    signature; its options are collected back into the value before the command runs."""
    signature = inspect.signature(command, eval_str=True)
    listed, last, groups = [], [], {}
    for p in signature.parameters.values():
        if isinstance(p.default, Group):
            head, tail = p.default.parameters(p.kind)
            listed += head
            last += tail
            groups[p.name] = p.default
        else:
            listed.append(p)

    @functools.wraps(command)
    def run(*args, **kwargs):
        for name, group in groups.items():
            kwargs[name] = group.collect(kwargs)
        return command(*args, **kwargs)

    run.__signature__ = signature.replace(parameters=listed + last)
    run.__annotations__ = {p.name: p.annotation for p in listed + last}
    return run
