"""Typer option types shared by the commands, named as users know them from llama.cpp and the OpenAI API."""

from __future__ import annotations

from typing import List, Optional

import typer
from typing import Annotated

from basecli.config import SamplingParams, quantize_mode


def _quantize(ctx: typer.Context, param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
    """Check the mode while the flags are parsed, before anything loads (one stderr line, exit 2).

    A value from BASECLI_QUANTIZE is checked, then passed on as None: LocalBackend reads the
    variable itself, and a shell-wide setting must not make --base-url an error, only the flag does.
    """
    from_env = getattr(ctx.get_parameter_source(param.name), "name", None) == "ENVIRONMENT"
    quantize_mode(value, "BASECLI_QUANTIZE" if from_env else "--quantize")
    return None if from_env else value


Model = Annotated[Optional[str], typer.Option("--model", "-m", envvar="BASECLI_MODEL", show_envvar=True,
                  help="Alias (gpt2, smollm2-135m, ...), hub id, model directory or .gguf file. Default: the embedded SmolLM2-135M-Instruct.")]
BaseUrl = Annotated[Optional[str], typer.Option("--base-url", envvar="BASECLI_BASE_URL", show_envvar=True,
                    help="An OpenAI-compatible server (vLLM, llama.cpp) to use instead of a local model, e.g. http://localhost:8000/v1.", rich_help_panel="Model")]
Device = Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda or mps.", rich_help_panel="Model")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto (bf16 on CUDA and bf16-capable CPUs, else fp32), float32, bfloat16, float16.", rich_help_panel="Model")]
TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Run model code from the hub (only if you trust it).", rich_help_panel="Model")]
Quantize = Annotated[Optional[str], typer.Option("--quantize", envvar="BASECLI_QUANTIZE", show_envvar=True, callback=_quantize,
                     help="Weight format of a local Llama on the CPU (lean engine, fp32): q4 or q8 (basecli's own kernels; "
                          "q4 is the embedded GGUF's own format, about 7x faster than fp32), fp16 or int8 (torch fbgemm).",
                     rich_help_panel="Model")]
AllowPickle = Annotated[bool, typer.Option("--allow-pickle", help="Allow .bin (pickle) weights; default is safetensors or GGUF only.", rich_help_panel="Model")]

MaxTokens = Annotated[int, typer.Option("--max-tokens", "-n", help="New tokens at most.", rich_help_panel="Sampling")]
Temperature = Annotated[float, typer.Option("--temperature", "-t", help="0 = greedy; < 1 sharper, > 1 flatter.", rich_help_panel="Sampling")]
TopK = Annotated[int, typer.Option("--top-k", help="Keep the k most likely tokens (0 = off).", rich_help_panel="Sampling")]
TopP = Annotated[float, typer.Option("--top-p", help="Keep the smallest set of tokens with mass >= p (1 = off).", rich_help_panel="Sampling")]
MinP = Annotated[float, typer.Option("--min-p", help="Drop tokens below min-p x p(top token) (0 = off).", rich_help_panel="Sampling")]
RepetitionPenalty = Annotated[float, typer.Option("--repetition-penalty", help="> 1 discourages tokens already in the text (1 = off).", rich_help_panel="Sampling")]
Seed = Annotated[Optional[int], typer.Option("--seed", "-s", help="Make sampling reproducible.", rich_help_panel="Sampling")]
Stop = Annotated[Optional[List[str]], typer.Option("--stop", help="Stop when this text appears (repeatable); it is not printed. Escapes like \\n work.", rich_help_panel="Sampling")]
IgnoreEos = Annotated[bool, typer.Option("--ignore-eos", help="Keep going past the end-of-text token.", rich_help_panel="Sampling")]
Truncate = Annotated[bool, typer.Option("--truncate", help="Cut a prompt longer than the context window from the left instead of failing.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON record (see docs/json.md) instead of text.")]


def unescape(s: str) -> str:
    """'\\n' typed on a command line means a newline in a stop string."""
    return s.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8") if "\\" in s else s


def sampling(max_tokens: int, temperature: float, top_k: int, top_p: float, min_p: float,
             repetition_penalty: float, seed: Optional[int], stop: Optional[List[str]], ignore_eos: bool) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                          repetition_penalty=repetition_penalty, seed=seed,
                          stop=tuple(unescape(s) for s in stop or ()), ignore_eos=ignore_eos)
