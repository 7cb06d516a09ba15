"""Which weights a local model runs on: the GGUF file's own blocks through basecli's kernels, or dequantised.

A GGUF model on the CPU runs its own block formats by default (engine/native.py), when every
layer matrix is in a format one --quantize mode holds exactly: re-quantising the dequantised
values gives back the file's blocks, so nothing is lost, and a decode step reads 4-8 bits a
weight instead of 32. Anything else (a GPU, an explicit --dtype, --quantize none, the
transformers engine, block formats with no kernel) runs the dequantised weights, and
`basecli info` says why.

Standard library only at import time; the GGUF's tensor table is read once and remembered in
the converted model's manifest.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from basecli.config import FILE_MODE, NATIVE_MODES

# GGUF block type of a model's layer matrices -> the --quantize mode whose kernels run exactly those blocks.
# K-quants run as --quantize gguf: the file's own blocks where they lie (weights/gguf_blocks.py), Q4_1/Q8_0 beside them too.
GGUF_NATIVE = {"Q4_1": "q4", "Q8_0": "q8", **dict.fromkeys(("Q4_K", "Q5_K", "Q6_K"), FILE_MODE)}

# ggml's type numbers (gguf.GGMLQuantizationType) and llama.cpp's names for them
GGML_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
              11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 30: "BF16"}
LAYER_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_gate", "ffn_up", "ffn_down")  # attn_qkv: GPT-2


@dataclass(frozen=True)
class WeightPath:
    quantize: str | None  # the --quantize mode that runs, None: the weights in --dtype
    why: str  # one line for `basecli info`
    default: bool = False  # chosen by basecli, not asked for: fall back (with a note) when it cannot run


def choose(source, folder: Path, *, quantize: str | None, device: str, dtype: str, engine: str) -> WeightPath:
    """The weights to run, from what was asked (`quantize`, `dtype` and `engine` as given; `device` resolved)."""
    if quantize == "none":
        return WeightPath(None, "dequantised, as --quantize none asks")
    if quantize:
        return WeightPath(quantize, f"--quantize {quantize}")
    if source.kind not in ("gguf", "embedded"):
        return WeightPath(None, "the checkpoint's own weights")
    blocks = block_types(folder)
    if not blocks:
        return WeightPath(None, "dequantised: the GGUF's block formats could not be read")
    own = f"the file's own {describe(blocks)}"
    if device != "cpu":
        return WeightPath(None, f"dequantised: {own} run on the CPU only, this runs on {device}")
    if dtype != "auto":
        return WeightPath(None, f"dequantised, as --dtype {dtype} asks ({own} run by default)")
    if engine == "transformers":
        return WeightPath(None, f"dequantised: BASECLI_ENGINE=transformers ({own} run on the lean engine)")
    modes = {GGUF_NATIVE.get(t) for t in blocks["layers"]}
    if FILE_MODE in modes and modes <= {FILE_MODE, *NATIVE_MODES}:  # K-quants beside Q4_1/Q8_0: all read in place
        modes = {FILE_MODE}
    if len(modes) != 1 or None in modes:
        kinds = ", ".join(sorted(set(blocks["layers"])))
        return WeightPath(None, f"dequantised: no kernel of basecli's runs these layers' blocks as they are ({kinds})")
    mode = modes.pop()
    return WeightPath(mode, f"{own} on basecli's kernels (--quantize {mode}; --quantize none for the dequantised weights)",
                      default=True)


def describe(blocks: dict) -> str:
    """'Q4_1 layers and Q8_0 head', as llama.cpp names the formats."""
    counts = Counter(blocks["layers"])
    layers = " + ".join(t for t, _ in counts.most_common())
    return f"{layers} layers and {blocks['head']} head" if blocks.get("head") else f"{layers} layers"


def block_types(folder: Path) -> dict | None:
    """{"layers": [type of each layer matrix], "head": type of the output matrix} of the GGUF a converted
    directory came from, remembered in its manifest (the GGUF's metadata takes a tenth of a second to parse)."""
    from basecli.weights import models

    manifest = models.manifest(folder)
    if "block_types" in manifest:
        return manifest["block_types"]
    try:
        blocks = read_block_types(Path(manifest["source"]))
    except (KeyError, OSError, ValueError):
        return None
    manifest["block_types"] = blocks
    try:
        models._atomic_write(folder / models.MANIFEST, json.dumps(manifest, indent=2))
    except OSError:  # a read-only cache: read the file again next time
        pass
    return blocks


def read_block_types(gguf: Path) -> dict:
    from basecli.weights.gguf_reader import GGUFFile

    tensors = {t.name: GGML_NAMES.get(t.ggml_type, f"type {t.ggml_type}") for t in GGUFFile(gguf).tensors}
    # the matrices' blocks; their biases (Qwen2's q/k/v, all of GPT-2's) are F32 vectors whatever the file's format
    layers = [kind for name, kind in tensors.items()
              if name.startswith("blk.") and name.endswith(".weight") and name.split(".")[2] in LAYER_MATRICES]
    return {"layers": layers, "head": tensors.get("output.weight") or tensors.get("token_embd.weight")}
