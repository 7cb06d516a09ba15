"""basecli's own forward passes, one module per architecture family, and the one that runs a model folder.

Llama and Qwen2 run on engine/lean.py's LeanLlama, GPT-2 on engine/gpt2.py's LeanGPT2; both answer
the call basecli's loop and scorer make, over engine/attention.py's KV cache. Anything else raises
Unsupported saying why, and backends/local.py runs transformers' model code instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from basecli.engine import gpt2, lean
from basecli.engine.mapped_weights import Unsupported, Weights


def forward_for(cfg: dict) -> type:
    """The forward class for a config.json, or Unsupported saying why none fits."""
    if cfg.get("model_type") == "gpt2":
        gpt2.check_supported(cfg)
        return gpt2.LeanGPT2
    lean.check_supported(cfg)
    return lean.LeanLlama


def load(folder: Path, dtype, device, *, populate: bool = True, convert=None) -> torch.nn.Module:
    """The model in `folder` (config.json + safetensors): a LeanLlama or a LeanGPT2, or Unsupported.

    populate=False when the weights are about to be replaced (BASECLI_QUANTIZE): their pages then
    come in as each matrix is read and go right after, so the fp32 file is never resident whole.
    `convert(matrix, role)` ("layer" or "head") replaces each matrix as it is read.
    """
    cfg = json.loads((folder / "config.json").read_text())
    model_class = forward_for(cfg)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise Unsupported("no safetensors weights")
    return model_class(cfg, Weights(files, dtype, device, populate=populate), dtype, device, convert).eval()
