"""The tensors of safetensors files, memory-mapped, for the lean forwards (and map_file for GGUF's blocks)."""

from __future__ import annotations

import json
import mmap
import sys
from pathlib import Path

import torch

class Unsupported(Exception):
    """This model needs transformers' own code (the lean forwards cannot run it)."""


SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class Weights:
    """The tensors of safetensors files, memory-mapped.

    A weight stored in the dtype wanted, on the CPU, is used where it lies: a view of the
    mapped file, so the OS page cache holds the only copy and loading costs no copy and no
    page faults of fresh memory (0.05 s to map SmolLM2-135M's 513 MiB, where reading it into
    new tensors took 0.4-0.7 s, mostly faulting in the new pages). Fused matrices (q, k, v),
    dtype conversions and weights bound for a GPU are copied out, and the mapped pages they
    came from are released at once, so no weight is ever resident twice.
    """

    def __init__(self, files: list[Path], dtype=None, device="cpu", populate: bool = True):
        self.index = {}
        self.maps = {}
        for path in files:
            with open(path, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(size))
            header.pop("__metadata__", None)
            for name, entry in header.items():
                self.index[name] = (path, 8 + size, entry)
        # Map every page up front only when most weights will be used in place; when they are all
        # converted (bf16 from an fp32 file) or copied to a GPU, pages come in as each tensor is
        # copied and leave right after, so the whole file is never resident at once.
        in_place = populate and torch.device(device).type == "cpu" and all(
            SAFETENSORS_DTYPES.get(e["dtype"]) == dtype for _, _, e in self.index.values())
        for path in files:
            with open(path, "rb") as f:
                self.maps[path] = map_file(f, populate=in_place)

    def view(self, name: str) -> torch.Tensor:
        """The stored tensor, where it lies in the mapped file."""
        path, base, e = self.index[name]
        stored = SAFETENSORS_DTYPES.get(e["dtype"])
        if stored is None:
            raise Unsupported(f"weights stored as {e['dtype']}")
        begin, end = e["data_offsets"]
        flat = torch.frombuffer(self.maps[path], dtype=stored, count=(end - begin) // stored.itemsize, offset=base + begin)
        return flat.view(e["shape"])

    def read(self, names: tuple[str, ...], dtype, device="cpu") -> torch.Tensor:
        """The tensors `names`, stacked along their first dimension, in `dtype` on `device`."""
        parts = [self.view(n) for n in names]
        if len(parts) == 1 and parts[0].dtype == dtype and torch.device(device).type == "cpu":
            return parts[0]
        out = torch.empty(sum(t.shape[0] for t in parts), *parts[0].shape[1:], dtype=dtype, device=device)
        at = 0
        for name, t in zip(names, parts):
            out[at : at + t.shape[0]].copy_(t)
            at += t.shape[0]
            self.release(name)
        return out

    def release(self, name: str) -> None:
        """Drop the mapped pages of a tensor that was copied out (they would count as resident memory)."""
        path, base, e = self.index[name]
        begin, end = (base + o for o in e["data_offsets"])
        page = mmap.PAGESIZE
        first, last = -(-begin // page) * page, end // page * page  # whole pages only: neighbours may still be in use
        if last > first and hasattr(mmap, "MADV_DONTNEED"):
            self.maps[path].madvise(mmap.MADV_DONTNEED, first, last - first)


def map_file(f, *, populate: bool) -> mmap.mmap:
    """The whole file mapped copy-on-write: reads share the OS page cache, and a write (nothing here
    writes to weights) would make a private copy of the page instead of failing or changing the file.
    With `populate`, every page is mapped in one go (Linux's MADV_POPULATE_READ, 0.05 s for 513 MiB)
    rather than one fault at a time during the first forward pass."""
    if not hasattr(mmap, "MAP_PRIVATE"):  # Windows
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    if populate and sys.platform == "linux":
        try:
            m.madvise(getattr(mmap, "MADV_POPULATE_READ", 22))
        except OSError:  # kernels before 5.14: pages come in on first use instead
            pass
    return m
