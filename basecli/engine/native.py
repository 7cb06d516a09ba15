"""4- and 8-bit weights with basecli's own CPU kernels (native.c): --quantize q4 or q8 (BASECLI_QUANTIZE).

- q4: the layer matrices in Q4_1 (5 bits a weight), the vocabulary head in Q8_0: the same
  formats, block for block, as the embedded SmolLM2 GGUF, so for that model the weights are
  exactly the file's (re-quantising its dequantised values gives back its blocks).
- q8: every matrix in Q8_0 (8.5 bits a weight).

A decode step (one new token per row) is a single call into C: norms, matmuls, rope, attention
over the lean engine's KV cache (its shared prompt prefix included) and the head. Prompts and
other multi-token passes stay on the lean engine's torch code, with these kernels as its
matmuls, so masks, padding and long prompts go through torch's attention as before.

The C source is compiled once per machine with the system's C compiler (CC, else cc) into
BASECLI_HOME/native/, keyed by the source, the flags and the CPU; the token embedding stays fp32
for the row lookups.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from basecli import config
from basecli.config import NATIVE_MODES
from basecli.errors import UsageError

MODES = NATIVE_MODES
F32_ROWS, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K = -1, 0, 1, 2, 3, 4  # native.c's block types
FORMAT_NAMES = {Q4_1: "Q4_1", Q8_0: "Q8_0", Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K"}  # llama.cpp's names for them
LAYER_TYPE = {"q4": Q4_1, "q8": Q8_0}
BLOCK = 32
ROW_MULTIPLE = {Q4_K: 256, Q5_K: 256, Q6_K: 256}  # a K-quant super-block is 256 weights of one row
SOURCE = Path(__file__).with_name("native.c")
SOURCES = (SOURCE, Path(__file__).with_name("kquants.c"))  # native.c includes kquants.c
FLAG_SETS = (  # the first that compiles is used: OpenMP threads and this CPU's vector units where there are
    ["-O3", "-ffp-contract=off", "-march=native", "-fopenmp"],
    ["-O3", "-ffp-contract=off", "-march=native"],
    ["-O3", "-ffp-contract=off", "-fopenmp"],
    ["-O3", "-ffp-contract=off"],
)

# BASECLI_NATIVE_BUILD: which code paths of native.c to build. native (the default): this CPU's vector units
# (-march=native: the AVX2 intrinsics, compiled with AVX-512 where the CPU has it); avx2: AVX2, FMA and F16C
# only, as on CPUs without AVX-512; portable: the plain C loops, as on CPUs without AVX2 or other
# architectures. Tests build each one and check that they give the same tokens.
BUILDS = ("native", "avx2", "portable")

_lib = None


def flag_sets(build: str = "native") -> tuple[list[str], ...]:
    """FLAG_SETS for one of BUILDS."""
    if build not in BUILDS:
        raise UsageError(f"unknown BASECLI_NATIVE_BUILD {build!r}; choose one of: {', '.join(BUILDS)}")
    if build == "native":
        return FLAG_SETS
    isa = ["-mavx2", "-mfma", "-mf16c"] if build == "avx2" else ["-DBASECLI_PORTABLE"]
    return tuple([*flags, *isa] for flags in FLAG_SETS if "-march=native" not in flags)


class NativeUnavailable(Exception):
    """The kernels cannot be built here; the message says why and what to do."""


def library() -> ctypes.CDLL:
    """The compiled kernels, built on first use (about a second) and kept in BASECLI_HOME.

    BASECLI_NATIVE_PROFILE=1 builds them with -DBASECLI_PROFILE (see `profile`); BASECLI_NATIVE_BUILD picks
    the code paths (BUILDS).
    """
    global _lib
    if _lib is None:
        extra = ["-DBASECLI_PROFILE"] if os.environ.get("BASECLI_NATIVE_PROFILE") else []
        sets = flag_sets(os.environ.get("BASECLI_NATIVE_BUILD") or "native")
        _lib = load(build(tuple([*flags, *extra] for flags in sets)))
    return _lib


def profile() -> dict[str, float]:
    """Seconds decode steps spent in matmuls, attention and everything else since the last call (a profiling build only)."""
    out = (ctypes.c_double * 3)()
    library().basecli_profile(out)
    return dict(zip(("matmul", "attention", "other"), out))


def load(path: Path) -> ctypes.CDLL:
    """A built kernel library, its functions declared for ctypes."""
    return _declare(ctypes.CDLL(str(path)))


def _cpu_key() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    return platform.machine() + platform.processor() + "".join(lines)


def build(flag_sets=FLAG_SETS) -> Path:
    """The shared library of native.c built with the first of `flag_sets` that compiles, cached in BASECLI_HOME."""
    source = b"".join(path.read_bytes() for path in SOURCES)
    compiler = os.environ.get("CC") or "cc"
    key = hashlib.sha256(source + compiler.encode() + _cpu_key().encode() + repr(flag_sets).encode()).hexdigest()[:16]
    folder = config.home() / "native"
    target = folder / f"basecli-native-{key}.so"
    if target.exists():
        return target
    if not shutil.which(compiler):
        raise NativeUnavailable(f"no C compiler ({compiler}) to build basecli's 4/8-bit kernels; "
                                "install gcc (or set CC), or leave --quantize q4/q8 unset")
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in flag_sets:
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            out = Path(tmp) / target.name
            run = subprocess.run([compiler, *flags, "-shared", "-fPIC", "-o", str(out), str(SOURCE), "-lm"],
                                 capture_output=True, text=True)
            if run.returncode == 0:
                os.replace(out, target)  # atomic: a concurrent build loses nothing
                return target
            lines = run.stderr.strip().splitlines()
            errors.append(next((ln for ln in lines if "error" in ln), lines[-1] if lines else "no message"))
    raise NativeUnavailable(f"{compiler} could not build basecli's 4/8-bit kernels ({errors[-1].strip()[:160]}); "
                            "leave --quantize q4/q8 unset")


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, p = ctypes.c_int64, ctypes.c_void_p
    lib.basecli_matrix_bytes.argtypes, lib.basecli_matrix_bytes.restype = [ctypes.c_int, i64, i64], i64
    lib.basecli_quantize.argtypes = [ctypes.c_int, p, p, i64, i64]
    lib.basecli_dequantize.argtypes = [ctypes.c_int, p, p, i64, i64]
    lib.basecli_linear.argtypes, lib.basecli_linear.restype = [ctypes.c_int, p, p, i64, i64, p, i64], ctypes.c_int
    lib.basecli_decode_step.argtypes = [ctypes.POINTER(ModelStruct), i64, p, p, p, ctypes.POINTER(CacheStruct), p]
    lib.basecli_decode_step.restype = ctypes.c_int
    lib.basecli_set_threads.argtypes = [ctypes.c_int]
    lib.basecli_profile.argtypes = [ctypes.POINTER(ctypes.c_double)]
    for name in ("basecli_quantize", "basecli_dequantize", "basecli_set_threads", "basecli_profile"):
        getattr(lib, name).restype = None
    return lib


class MatrixStruct(ctypes.Structure):
    """native.c's Matrix: up to three matrices stacked by rows, each in its own block type."""
    _fields_ = [("w", ctypes.c_void_p * 3), ("rows", ctypes.c_int64 * 3), ("type", ctypes.c_int * 3), ("parts", ctypes.c_int)]


class ModelStruct(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("dim", "hidden", "layers", "heads", "kv", "head_dim", "vocab")] + [
        ("eps", ctypes.c_float), ("etype", ctypes.c_int),
        ("embed", ctypes.c_void_p), ("norm", ctypes.c_void_p), ("head", ctypes.POINTER(MatrixStruct)), ("inv_freq", ctypes.c_void_p),
        ("norm1", ctypes.POINTER(ctypes.c_void_p)), ("norm2", ctypes.POINTER(ctypes.c_void_p)),
        ("qkv", ctypes.POINTER(MatrixStruct)), ("o", ctypes.POINTER(MatrixStruct)),
        ("gate_up", ctypes.POINTER(MatrixStruct)), ("down", ctypes.POINTER(MatrixStruct)),
        ("pos_embed", ctypes.c_void_p), ("norm_bias", ctypes.c_void_p),
        *((name, ctypes.POINTER(ctypes.c_void_p)) for name in ("norm1_bias", "norm2_bias", "qkv_bias", "o_bias", "up_bias", "down_bias")),
        ("gelu", ctypes.c_int),
    ]


class CacheStruct(ctypes.Structure):
    _fields_ = [("k", ctypes.c_void_p), ("v", ctypes.c_void_p), ("capacity", ctypes.c_int64), ("column", ctypes.c_int64),
                ("pk", ctypes.c_void_p), ("pv", ctypes.c_void_p), ("p_layer", ctypes.c_int64), ("p_head", ctypes.c_int64),
                ("shared", ctypes.c_int64)]


class QuantizedMatrix:
    """A (rows, cols) weight matrix in one of native.c's block types; `matrix(x)` is F.linear(x, weight) for fp32 x.

    Made by quantising an fp32 matrix (Q4_1, Q8_0), or from blocks already in that type (`from_blocks`:
    a GGUF file's own, where they lie in the mapped file). Answers numel/element_size/data_ptr like a
    tensor, so memory accounting counts it (element_size is bytes per weight, a fraction: 0.625 for
    Q4_1), and `format`, what `basecli info` shows for it.
    """

    dtype = torch.float32  # of what it computes (inputs, outputs, rows looked up), as a tensor's dtype says it

    def __init__(self, weight: torch.Tensor | None, kind: int, lib: ctypes.CDLL | None = None):
        if weight is None:  # from_blocks fills it in
            return
        rows, cols = weight.shape
        if kind in ROW_MULTIPLE:
            raise NativeUnavailable(f"{FORMAT_NAMES[kind]} blocks are read from GGUF files, not made here")
        check_columns(kind, cols)
        lib = lib or library()
        self.shape, self.kind, self.lib = (rows, cols), kind, lib
        self.blocks = torch.empty(lib.basecli_matrix_bytes(kind, rows, cols), dtype=torch.uint8)
        w = weight.float().contiguous()
        lib.basecli_quantize(kind, w.data_ptr(), self.blocks.data_ptr(), rows, cols)

    @classmethod
    def from_blocks(cls, blocks: torch.Tensor, kind: int, shape: tuple[int, int], lib: ctypes.CDLL | None = None):
        """The matrix these bytes hold (uint8, contiguous; kept, not copied) in block type `kind`."""
        rows, cols = shape
        check_columns(kind, cols)
        self = cls(None, kind)
        self.shape, self.kind, self.lib = (rows, cols), kind, lib or library()
        want = self.lib.basecli_matrix_bytes(kind, rows, cols)
        if blocks.numel() != want or blocks.dtype != torch.uint8 or not blocks.is_contiguous():
            raise ValueError(f"{FORMAT_NAMES.get(kind, kind)} matrix {rows}x{cols} needs {want} contiguous bytes, got {blocks.numel()}")
        self.blocks = blocks
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = self.shape
        flat = x.reshape(-1, cols).float().contiguous()
        out = torch.empty(flat.shape[0], rows)
        if self.lib.basecli_linear(self.kind, self.blocks.data_ptr(), flat.data_ptr(), flat.shape[0], cols, out.data_ptr(), rows):
            raise MemoryError("basecli's matmul could not allocate its activation blocks")
        return out.view(*x.shape[:-1], rows)

    def dequantize(self) -> torch.Tensor:
        """The fp32 matrix these blocks stand for."""
        out = torch.empty(self.shape)
        self.lib.basecli_dequantize(self.kind, self.blocks.data_ptr(), out.data_ptr(), *self.shape)
        return out

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """F.embedding(ids, weight): the rows `ids` dequantised, (*ids.shape, cols)."""
        flat = ids.reshape(-1).tolist()
        out = torch.empty(len(flat), self.shape[1])
        row_bytes = self.blocks.numel() // self.shape[0]
        for i, row in enumerate(flat):
            self.lib.basecli_dequantize(self.kind, self.blocks.data_ptr() + row * row_bytes, out[i].data_ptr(), 1, self.shape[1])
        return out.view(*ids.shape, self.shape[1])

    def struct(self) -> MatrixStruct:
        return MatrixStruct((ctypes.c_void_p * 3)(self.data_ptr()), (ctypes.c_int64 * 3)(self.shape[0]), (ctypes.c_int * 3)(self.kind), 1)

    @property
    def format(self) -> str:
        return FORMAT_NAMES[self.kind]

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def element_size(self) -> float:
        return self.blocks.numel() / self.numel()

    def data_ptr(self) -> int:
        return self.blocks.data_ptr()


class Stacked:
    """Matrices of one input stacked by rows, each in its own block type (q, k, v of a GGUF file whose v is
    Q6_K beside Q4_K q and k): `stacked(x)` is F.linear(x, the stacked weight). native.c runs each part in
    its own type into adjacent output columns."""

    dtype = torch.float32

    def __init__(self, parts: list[QuantizedMatrix]):
        if not 1 <= len(parts) <= 3 or len({p.shape[1] for p in parts}) != 1:
            raise ValueError("one to three matrices of the same width are stacked")
        self.parts = parts
        self.shape = (sum(p.shape[0] for p in parts), parts[0].shape[1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)

    def dequantize(self) -> torch.Tensor:
        return torch.cat([p.dequantize() for p in self.parts])

    @property
    def kind(self) -> int | None:
        kinds = {p.kind for p in self.parts}
        return kinds.pop() if len(kinds) == 1 else None

    @property
    def format(self) -> str:
        return "+".join(dict.fromkeys(p.format for p in self.parts))  # each format once, in order

    def struct(self) -> MatrixStruct:
        n = len(self.parts)
        return MatrixStruct((ctypes.c_void_p * 3)(*[p.data_ptr() for p in self.parts]), (ctypes.c_int64 * 3)(*[p.shape[0] for p in self.parts]),
                            (ctypes.c_int * 3)(*[p.kind for p in self.parts]), n)

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def element_size(self) -> float:
        return sum(p.blocks.numel() for p in self.parts) / self.numel()

    def data_ptr(self) -> int:
        return self.parts[0].data_ptr()


def check_columns(kind: int, cols: int) -> None:
    multiple = ROW_MULTIPLE.get(kind, BLOCK)
    if cols % multiple:
        raise NativeUnavailable(f"a matrix of {cols} columns (the kernels need a multiple of {multiple} for {FORMAT_NAMES[kind]})")


class NativeDecoder:
    """A lean model's decode step as one call into native.c; built by `apply`, which owns the matrices.

    LeanLlama (RMSNorm, rope, SiLU-gated MLP; Qwen2's q/k/v biases) and LeanGPT2 (learned positions,
    LayerNorm, GELU MLP, biases everywhere) name their layer fields alike, so one reading serves both.
    """

    def __init__(self, model, lib: ctypes.CDLL | None = None):
        self.model, self.lib = model, lib or library()
        layers = model.layers
        fp32 = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
        if isinstance(model.embed, torch.Tensor):
            self.embed, etype = fp32(model.embed), F32_ROWS
        else:  # a GGUF file's own blocks: a row dequantised per token
            self.embed, etype = model.embed, model.embed.kind
        self.kept = {"norm": fp32(model.norm), "norm_bias": fp32(getattr(model, "norm_bias", None)),
                     "inv_freq": fp32(getattr(model, "inv_freq", None)), "pos_embed": fp32(getattr(model, "positions", None))}
        for name in ("norm1", "norm2", "norm1_bias", "norm2_bias", "qkv_bias", "o_bias", "up_bias", "down_bias"):
            self.kept[name] = [fp32(getattr(layer, name, None)) for layer in layers]
        gelu = hasattr(layers[0], "up")  # GPT-2: one MLP input matrix, GELU
        ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731

        def arr(values):
            """A C array of per-layer pointers, or NULL when no layer has one."""
            return None if all(v is None for v in values) else (ctypes.c_void_p * len(values))(*values)

        def structs(matrices):
            """A C array of native.c's Matrix, one per layer (a matrix stacked from parts keeps its parts)."""
            return (MatrixStruct * len(matrices))(*[m.struct() for m in matrices])

        self._matrices = {name: structs([getattr(layer, name) for layer in layers]) for name in ("qkv", "o", "down")}
        self._matrices["gate_up"] = structs([layer.up if gelu else layer.gate_up for layer in layers])
        per_layer = {name: [ptr(t) for t in self.kept[name]] for name in ("norm1", "norm2", "norm1_bias", "norm2_bias", "qkv_bias",
                                                                         "o_bias", "up_bias", "down_bias")}
        self._arrays = {name: arr(values) for name, values in per_layer.items()}
        self._head = model.head.struct()
        self.struct = ModelStruct(
            model.dim, layers[0].down.shape[1], len(layers), model.n_heads, model.n_kv, model.head_dim, model.head.shape[0],
            model.eps, etype, self.embed.data_ptr(), ptr(self.kept["norm"]),
            ctypes.pointer(self._head), ptr(self.kept["inv_freq"]),
            self._arrays["norm1"], self._arrays["norm2"], *(self._matrices[n] for n in ("qkv", "o", "gate_up", "down")),
            ptr(self.kept["pos_embed"]), ptr(self.kept["norm_bias"]),
            *(self._arrays[n] for n in ("norm1_bias", "norm2_bias", "qkv_bias", "o_bias", "up_bias", "down_bias")), int(gelu))

    def step(self, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        """Logits (B, vocab) of one new token per row (tokens (B, 1), mask (B, length + 1), positions (B, 1)),
        writing each row's key and value at the cache's next column.

        The mask must be left padding (each row: zeros, then ones), as basecli's loop makes it; a row
        sees keys from its first one on.
        """
        batch = tokens.shape[0]
        first = mask.int().argmax(-1) if not bool(mask.all()) else torch.zeros(batch, dtype=torch.int64)
        if cache.shared and bool(first.any()):  # padding inside the shared prefix: give every row its own copy
            cache.unshare()
        cache.reserve(batch, 1)
        tokens, positions, first = (t.reshape(batch).to(torch.int64).contiguous() for t in (tokens, positions, first))
        cs = CacheStruct(cache.k.data_ptr(), cache.v.data_ptr(), cache.k.shape[3], cache.length - cache.shared)
        if cache.shared:
            pk, pv = cache.prefix_k, cache.prefix_v
            assert pk.stride() == pv.stride() and pk.stride(3) == self.model.head_dim and pk.stride(4) == 1
            cs.pk, cs.pv, cs.p_layer, cs.p_head, cs.shared = pk.data_ptr(), pv.data_ptr(), pk.stride(0), pk.stride(2), cache.shared
        logits = torch.empty(batch, self.struct.vocab)
        if self.lib.basecli_decode_step(ctypes.byref(self.struct), batch, tokens.data_ptr(), positions.data_ptr(),
                                        first.data_ptr(), ctypes.byref(cs), logits.data_ptr()):
            raise MemoryError("basecli's decode step could not allocate its buffers")
        cache.length += 1
        return logits


def _release(model, *names: str) -> None:
    """Drop the resident pages of mapped fp32 weights that were just quantised (they stay readable from the file)."""
    weights = getattr(model, "weights", None)
    for name in names:
        if weights is not None and name in weights.index:
            weights.release(name)


def check_model(mode: str, model, device: str) -> None:
    """What every --quantize mode needs (quant.py's fp16 and int8 too): the CPU, the lean engine, fp32 activations."""
    if device != "cpu":
        raise UsageError(f"--quantize {mode} runs on the CPU only; use --device cpu, or leave --quantize (BASECLI_QUANTIZE) unset")
    if not hasattr(model, "layers"):
        raise UsageError(f"--quantize {mode} needs basecli's lean engine (Llama, Qwen2 and GPT-2 models); this one runs on transformers' code (leave --quantize unset, and BASECLI_ENGINE unset or lean)")
    if model.embed.dtype != torch.float32:
        raise UsageError(f"--quantize {mode} needs float32 activations: use --dtype float32")


def check(mode: str, model, device: str) -> None:
    """A UsageError saying what to change, unless `mode` can run for this model here."""
    check_model(mode, model, device)
    try:
        library()
    except NativeUnavailable as e:
        raise UsageError(str(e)) from None


def converter(mode: str):
    """`convert(matrix, role)` for forwards.load: each matrix quantised as it is read (role "head": Q8_0)."""
    try:
        library()  # fails here, before any weight is read, when the kernels cannot be built
    except NativeUnavailable as e:
        raise UsageError(str(e)) from None
    kind = LAYER_TYPE[mode]

    def convert(matrix: torch.Tensor, role: str) -> QuantizedMatrix:
        try:
            return QuantizedMatrix(matrix, Q8_0 if role == "head" else kind)
        except NativeUnavailable as e:
            raise UsageError(f"--quantize {mode} cannot run this model: {e}") from None

    return convert


def apply(model, mode: str, threads: int | None = None) -> None:
    """Quantise every matrix of a lean model (engine/lean.py, engine/gpt2.py) but the embedding lookup, in place (those `converter` did at
    load are kept), and give it the one-call decode step."""
    check(mode, model, model.device.type)
    lib = library()
    lib.basecli_set_threads(threads or torch.get_num_threads())
    kind = LAYER_TYPE[mode]

    def convert(t, k: int, *names: str):
        """t quantised, its mapped fp32 pages released; a matrix `converter` quantised at load is kept as it is."""
        if isinstance(t, QuantizedMatrix):
            return t
        out = QuantizedMatrix(t, k)
        _release(model, *names)
        return out

    try:
        for i, layer in enumerate(model.layers):
            for field in model.MATRICES:  # a matrix fused at load is a copy whose pages went then; releasing again is harmless
                setattr(layer, field, convert(getattr(layer, field), kind, *model.source_names(field, i)))
        model.head_tied = getattr(model, "head_tied", False) or model.head is model.embed
        # the embedding is read a row per token from here on: its pages come back as rows are looked up
        model.head = convert(model.head, Q8_0, *model.source_names("head"))
    except NativeUnavailable as e:
        raise UsageError(f"--quantize {mode} cannot run this model: {e}") from None
    if {getattr(layer, field).kind for layer in model.layers for field in model.MATRICES} != {kind}:
        raise UsageError(f"this model was loaded with other quantised weights than --quantize {mode}")
    model.native = NativeDecoder(model)
    model.quantized = mode
