"""A GGUF file's weight matrices in their own block formats, used where they lie in the mapped file.

A Q4_K_M file (Q4_K and Q6_K blocks) of an 8B model is 4.9 GB; dequantised to fp32 it is 32 GB.
Here the lean engine reads its matrices through engine/native.py's kernels in the file's formats:
`IN_PLACE` says which GGUF block types the kernels take. The norms (F32 in every llama.cpp file)
are read as fp32; q and k are the only copies, their rows put back in Hugging Face's rotary order
(llama.cpp interleaves each head's halves), a row of blocks at a time. The token embedding is one of
those matrices too: a decode step dequantises the rows of its tokens only.

The converted directory (models.py) still supplies config.json and tokenizer.json.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np

from basecli.weights.gguf_convert import Unsupported, check_supported, hf_name, reverse_permute
from basecli.weights.gguf_reader import GGUFFile, dequantize

# GGUF (ggml) block type -> the name of native.c's type for it (engine/native.py), and the row width its blocks need;
# torch and the kernels are imported only once a model is loaded, so deciding costs a read of the file's header
IN_PLACE = {3: ("Q4_1", 32), 8: ("Q8_0", 32), 12: ("Q4_K", 256), 13: ("Q5_K", 256), 14: ("Q6_K", 256)}
K_TYPES = {12, 13, 14}
NAMES = [name for name, _ in IN_PLACE.values()]
MATRIX_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head", "embed_tokens")


def _is_matrix(name: str) -> bool:
    return any(f"{part}." in name for part in MATRIX_PARTS)


def runs_in_place(path: str | Path, *, k_quants: bool = True) -> bool:
    """Whether every weight matrix of this GGUF is in a block type the native kernels take, at least one a K-quant
    unless k_quants=False (by default, files of Q4_1/Q8_0 blocks run as --quantize q4/q8), and every row fits its
    blocks' width; and
    basecli's own converter reads its configuration and tokenizer (which also makes it a model the lean engine runs)."""
    gguf = GGUFFile(path)
    if gguf.metadata.get("general.architecture") != "llama":
        return False
    try:
        check_supported(gguf)
    except Unsupported:
        return False
    types = []
    for info in gguf.tensors:
        name = hf_name(info.name)
        if name and _is_matrix(name):
            if info.ggml_type not in IN_PLACE or info.shape[-1] % IN_PLACE[info.ggml_type][1]:
                return False
            types.append(info.ggml_type)
    return not k_quants or any(t in K_TYPES for t in types)


class GGUFWeights:
    """What mapped_weights.Weights answers (index, read, release), from a GGUF file, and `in_place(names)`: the
    matrices `names` stacked, in the file's blocks, or None when a block type is not one the kernels take."""

    def __init__(self, path: str | Path, cfg: dict):
        from basecli.engine import native
        from basecli.engine.mapped_weights import map_file

        self.file = GGUFFile(path)
        self.infos = {n: info for info in self.file.tensors if (n := hf_name(info.name))}
        self.index = self.infos
        with open(path, "rb") as f:
            self.map = map_file(f, populate=False)  # writable copy-on-write: torch views it without a warning
        self.heads = cfg["num_attention_heads"]
        self.kv = cfg.get("num_key_value_heads") or self.heads
        self.lib = native.library()

    def _permuted(self, name: str) -> int | None:
        """The head count whose rotary halves llama.cpp interleaved in this tensor's rows, if it did."""
        return self.heads if ".q_proj." in name else self.kv if ".k_proj." in name else None

    def read(self, names: tuple[str, ...], dtype, device="cpu"):
        import torch

        parts = []
        for name in names:
            info = self.infos[name]
            w = dequantize(self.file.raw(info), info.ggml_type, info.shape)
            if (heads := self._permuted(name)) is not None:
                w = reverse_permute(w, heads)
            parts.append(torch.from_numpy(np.ascontiguousarray(w)))
        return torch.cat(parts).to(dtype=dtype, device=device) if len(parts) > 1 else parts[0].to(dtype=dtype, device=device)

    def release(self, name: str) -> None:
        info = self.infos[name]
        page = mmap.PAGESIZE
        first, last = -(-info.start // page) * page, (info.start + info.nbytes) // page * page
        if last > first and hasattr(mmap, "MADV_DONTNEED"):
            self.map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def _matrix(self, name: str):
        import torch

        from basecli.engine import native

        info = self.infos[name]
        if info.ggml_type not in IN_PLACE or len(info.shape) != 2:
            return None
        kind = getattr(native, IN_PLACE[info.ggml_type][0])
        blocks = torch.frombuffer(self.map, dtype=torch.uint8, count=info.nbytes, offset=info.start)
        if (heads := self._permuted(name)) is not None:  # whole rows of blocks move: a copy of this matrix's bytes only
            order = reverse_permute(np.arange(info.shape[0]), heads)
            blocks = blocks.view(info.shape[0], -1)[torch.from_numpy(order)].reshape(-1)
            self.release(name)
        return native.QuantizedMatrix.from_blocks(blocks, kind, info.shape, self.lib)

    def in_place(self, names: tuple[str, ...]):
        parts = [self._matrix(n) for n in names]
        if any(p is None for p in parts):
            return None
        if len(parts) == 1:
            return parts[0]
        from basecli.engine.native import Stacked

        return Stacked(parts)


def load(gguf_path: str | Path, folder: Path | None = None, threads: int | None = None):
    """The lean engine over this GGUF's own blocks (runs_in_place must hold), its decode step native.c's;
    the configuration from `folder`'s config.json, else from the file's metadata."""
    if folder is None:
        from basecli.weights.gguf_convert import model_config

        cfg = model_config(GGUFFile(gguf_path))
    else:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    import torch

    from basecli.engine import lean, native

    model = lean.LeanLlama(cfg, GGUFWeights(gguf_path, cfg), torch.float32, "cpu").eval()
    native.library().basecli_set_threads(threads or torch.get_num_threads())
    model.native = native.NativeDecoder(model)
    model.quantized = "gguf"  # the file's own formats; `info` lists them per component
    return model
