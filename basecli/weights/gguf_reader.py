"""Reading a GGUF file without transformers: metadata, the tensor table, and tensors as float32.

The metadata is parsed with `struct` from a memory map. gguf's own GGUFReader builds a numpy
view for every one of the ~100k vocabulary and merge strings, which takes seconds; this takes
a tenth of one. Tensor data stays in the map until a tensor is dequantised.

Dequantisation is vectorised numpy for the block types small models ship in (Q4_0, Q4_1,
Q8_0), the K-quants of the files people download (Q4_K, Q5_K, Q6_K: the blocks of Q4_K_M and
Q5_K_M files; layouts in engine/kquants.c) and the float types, computing exactly what
`gguf.quants.dequantize` computes (`d * q + m` in float32, same order), so the values are
bit-identical to transformers' conversion; other block types go through `gguf.quants.dequantize`.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from basecli.errors import UsageError

F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 8, 12, 13, 14, 30
FLOATS = {F32: np.float32, F16: np.float16}
# type -> (values per block, bytes per block)
BLOCKS = {Q4_0: (32, 18), Q4_1: (32, 20), Q8_0: (32, 34), Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210)}

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


class BrokenGGUF(UsageError):
    """A file that cannot be read as GGUF: the user gave it, so exit 2 with what is wrong."""


def _why(e: Exception) -> str:
    if isinstance(e, struct.error):
        return "its header runs past the end of the file"
    text = " ".join(str(e).split())[:100]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order: rows first
    ggml_type: int
    start: int  # absolute byte offset in the file
    nbytes: int


class GGUFFile:
    """A GGUF file's metadata (`.metadata`, plain Python values) and tensors (`.tensors`, in file order)."""

    def __init__(self, path: str | Path):
        """Raises BrokenGGUF (a usage error) for a file that is not a whole GGUF: truncated, too short, not GGUF."""
        self.path = Path(path)
        try:
            self._read()
        except BrokenGGUF:
            raise
        except (struct.error, ValueError, IndexError, OverflowError, MemoryError, UnicodeError) as e:
            raise BrokenGGUF(f"{self.path} is not a readable GGUF file ({_why(e)}); it may be truncated or corrupt: "
                             f"download it again") from None

    def _read(self) -> None:
        if self.path.stat().st_size < 24:
            raise BrokenGGUF(f"{self.path} is {self.path.stat().st_size} bytes, too short to be a GGUF file")
        with open(self.path, "rb") as f:
            # mmap slices are bytes, which parse ~10x faster than numpy memmap slices
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.blob = np.frombuffer(self._map, dtype=np.uint8)
        if self._map[:4] != b"GGUF":
            raise BrokenGGUF(f"{self.path} is not a GGUF file (it does not start with the GGUF magic bytes)")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", self._map, 4)
        if version not in (2, 3):
            raise BrokenGGUF(f"{self.path} is GGUF version {version}; only versions 2 and 3 are read")
        pos = 24
        self.metadata: dict = {}
        for _ in range(n_kv):
            key, pos = self._string(pos)
            (kind,) = struct.unpack_from("<I", self._map, pos)
            self.metadata[key], pos = self._value(pos + 4, kind)
        table = []
        for _ in range(n_tensors):
            name, pos = self._string(pos)
            (ndim,) = struct.unpack_from("<I", self._map, pos)
            dims = struct.unpack_from(f"<{ndim}Q", self._map, pos + 4)
            ggml_type, offset = struct.unpack_from("<IQ", self._map, pos + 4 + 8 * ndim)
            pos += 4 + 8 * ndim + 12
            table.append((name, tuple(reversed(dims)), ggml_type, offset))  # ggml lists the fastest dimension first
        align = int(self.metadata.get("general.alignment", 32))
        data = (pos + align - 1) // align * align
        self.tensors = [TensorInfo(n, s, t, data + off, byte_count(t, prod(s))) for n, s, t, off in table]
        end = max((t.start + t.nbytes for t in self.tensors), default=0)
        if end > len(self._map):
            raise BrokenGGUF(f"{self.path} is truncated: its tensors need {end} bytes but the file has {len(self._map)}; "
                             f"download it again")

    def _string(self, pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", self._map, pos)
        return self._map[pos + 8 : pos + 8 + n].decode("utf-8", errors="replace"), pos + 8 + n

    def _strings(self, pos: int, count: int) -> tuple[list[str], int]:
        """A vocabulary or merge table: ~100k strings, so the loop is kept tight."""
        data, unpack, out = self._map, struct.Struct("<Q").unpack_from, []
        append = out.append
        for _ in range(count):
            (n,) = unpack(data, pos)
            pos += 8
            append(data[pos : pos + n].decode("utf-8", errors="replace"))
            pos += n
        return out, pos

    def _value(self, pos: int, kind: int):
        if kind in _SCALARS:
            return struct.unpack_from(_SCALARS[kind], self._map, pos)[0], pos + struct.calcsize(_SCALARS[kind])
        if kind == _STRING:
            return self._string(pos)
        if kind != _ARRAY:
            raise ValueError(f"{self.path}: metadata value of unknown type {kind}")
        item, count = struct.unpack_from("<IQ", self._map, pos)
        pos += 12
        if item in _NUMPY:  # token types, scores: one read, not a loop
            values = np.frombuffer(self.blob, dtype=_NUMPY[item], count=count, offset=pos)
            return values.tolist(), pos + values.nbytes
        if item == _STRING:
            return self._strings(pos, count)
        out = []
        for _ in range(count):
            value, pos = self._value(pos, item)
            out.append(value)
        return out, pos

    def raw(self, info: TensorInfo) -> np.ndarray:
        return self.blob[info.start : info.start + info.nbytes]


def byte_count(ggml_type: int, elements: int) -> int:
    if ggml_type in FLOATS:
        return elements * np.dtype(FLOATS[ggml_type]).itemsize
    if ggml_type == BF16:
        return elements * 2
    per_block, nbytes = block_size(ggml_type)
    return elements // per_block * nbytes


def block_size(ggml_type: int) -> tuple[int, int]:
    if ggml_type in BLOCKS:
        return BLOCKS[ggml_type]
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise ValueError(f"unknown ggml tensor type {ggml_type}") from None


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor as a new float32 array of `shape`."""
    if ggml_type == F32:
        return np.array(raw.view(np.float32)).reshape(shape)
    if ggml_type == F16:
        return raw.view(np.float16).astype(np.float32).reshape(shape)
    if ggml_type == BF16:
        return (raw.view(np.int16).astype(np.int32) << 16).view(np.float32).reshape(shape)
    if ggml_type not in BLOCKS:
        from gguf.quants import dequantize as gguf_dequantize
        from gguf.constants import GGMLQuantizationType

        return gguf_dequantize(np.asarray(raw), GGMLQuantizationType(ggml_type)).reshape(shape)
    per_block, nbytes = BLOCKS[ggml_type]
    blocks = raw.reshape(-1, nbytes)
    out = np.empty((blocks.shape[0], per_block), dtype=np.float32)
    # Rows in slices of ~1 MB of output, so the temporaries stay in cache.
    step = 8192 * 32 // per_block
    for at in range(0, blocks.shape[0], step):
        _BLOCK_FNS[ggml_type](blocks[at : at + step], out[at : at + step])
    return out.reshape(shape)


def _half(column_pair: np.ndarray) -> np.ndarray:
    """A float16 scale stored in two bytes of each block, as float32 (n, 1)."""
    return np.ascontiguousarray(column_pair).view(np.float16).astype(np.float32)


def _q8_0(blocks: np.ndarray, out: np.ndarray) -> None:
    np.multiply(blocks[:, 2:].view(np.int8), _half(blocks[:, 0:2]), out=out)


def _q4_0(blocks: np.ndarray, out: np.ndarray) -> None:
    qs = blocks[:, 2:]
    d = _half(blocks[:, 0:2])
    # low nibbles are values 0-15 of the block, high nibbles 16-31; both stored offset by 8
    np.multiply((qs & 0x0F).view(np.int8) - np.int8(8), d, out=out[:, :16])
    np.multiply((qs >> 4).view(np.int8) - np.int8(8), d, out=out[:, 16:])


def _q4_1(blocks: np.ndarray, out: np.ndarray) -> None:
    qs = blocks[:, 4:]
    d, m = _half(blocks[:, 0:2]), _half(blocks[:, 2:4])
    np.multiply(qs & 0x0F, d, out=out[:, :16])
    np.multiply(qs >> 4, d, out=out[:, 16:])
    out += m


def _k_scales(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: d * sc and dmin * m per sub-block of 32, float32 (n, 8, 1); the 6-bit packing is in engine/kquants.c."""
    s = blocks[:, 4:16]
    low, high, mixed = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([low & 63, (mixed & 15) | ((low >> 6) << 4)], axis=1).astype(np.float32)
    m = np.concatenate([high & 63, (mixed >> 4) | ((high >> 6) << 4)], axis=1).astype(np.float32)
    return (_half(blocks[:, 0:2]) * sc)[:, :, None], (_half(blocks[:, 2:4]) * m)[:, :, None]


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """128 bytes of 4-bit values -> (n, 8, 32): per 32 bytes, their low nibbles, then their high nibbles."""
    chunks = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([chunks & 15, chunks >> 4], axis=2).reshape(-1, 8, 32)


def _q4_k(blocks: np.ndarray, out: np.ndarray) -> None:
    d, dm = _k_scales(blocks)
    q = _nibbles(blocks[:, 16:144]).astype(np.float32)
    np.subtract(d * q, dm, out=out.reshape(-1, 8, 32))


def _q5_k(blocks: np.ndarray, out: np.ndarray) -> None:
    d, dm = _k_scales(blocks)
    qh = blocks[:, 16:48]  # bit j of byte l: the fifth bit of value l of sub-block j
    high = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = (_nibbles(blocks[:, 48:176]) | (high << 4)).astype(np.float32)
    np.subtract(d * q, dm, out=out.reshape(-1, 8, 32))


def _q6_k(blocks: np.ndarray, out: np.ndarray) -> None:
    ql, qh = blocks[:, 0:128].reshape(-1, 2, 1, 64), blocks[:, 128:192].reshape(-1, 2, 1, 32)
    low = np.concatenate([ql & 15, ql >> 4], axis=2).reshape(-1, 2, 4, 32)  # per half of 128: 4 groups of 32
    high = (qh >> np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]) & 3
    q = ((low | (high << 4)).astype(np.int8) - np.int8(32)).reshape(-1, 16, 16).astype(np.float32)
    d = _half(blocks[:, 208:210]) * blocks[:, 192:208].view(np.int8).astype(np.float32)  # (n, 16)
    np.multiply(d[:, :, None], q, out=out.reshape(-1, 16, 16))


_BLOCK_FNS = {Q8_0: _q8_0, Q4_0: _q4_0, Q4_1: _q4_1, Q4_K: _q4_k, Q5_K: _q5_k, Q6_K: _q6_k}
