"""Weight-only fp16 and int8 matrices for the lean engine on x86 CPUs (--quantize fp16|int8, BASECLI_QUANTIZE),
and the dispatch of every --quantize mode (q4 and q8 are engine/native.py's).

At batch 1 a decode step reads every weight once, so on a CPU its speed is memory bandwidth
divided by bytes per token: fewer bytes per weight, faster steps. fbgemm's fp16 and int8 weight
kernels are used; torch's `_weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu` were far slower
than fp32 on an AVX2 CPU (their fast kernels need AVX-512), so they are not (figures: bench/README.md).

- fp16: weights stored in fp16, products and sums in fp32. Within fp16 rounding of fp32.
- int8: weights per output channel in int8, and every input row quantised to 8 bits on its own
  scale (per_row), so no row depends on the others in its batch. Its cost in bits per byte is
  in bench/README.md.

The token embedding stays in the model's dtype: a lookup reads one row, not the matrix.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from basecli.config import NATIVE_MODES, QUANTIZE_MODES
from basecli.errors import UsageError

MODES = QUANTIZE_MODES  # q4 and q8: basecli's own kernels (engine/native.py)


class Packed:
    """A weight matrix in fbgemm's packed layout; `packed(x)` is F.linear(x, weight) for fp32 x.

    It also answers numel/element_size/data_ptr, so memory accounting counts its bytes like a tensor's,
    and `format`, what `basecli info` shows for it.
    """

    FORMATS = {"fp16": "fp16 (fbgemm)", "int8": "int8 per channel (fbgemm)"}

    def __init__(self, weight: torch.Tensor, mode: str):
        self.shape, self.mode = tuple(weight.shape), mode
        w = weight.float().contiguous()
        with warnings.catch_warnings():  # torch warns that quantized tensors are deprecated; fbgemm's packing needs one
            warnings.simplefilter("ignore")
            if mode == "fp16":
                self.params = torch.ops.quantized.linear_prepack_fp16(w, None)
                self._op, self._bytes = torch.ops.quantized.linear_dynamic_fp16, 2
            else:
                scale = (w.abs().amax(1) / 127).clamp(min=1e-12).double()
                w = F.pad(w, (0, 2))  # zero weights for per_row's two pinning columns
                q = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
                self.params = torch.ops.quantized.linear_prepack(q, None)
                self._op, self._bytes = (lambda x, p: torch.ops.quantized.linear_dynamic(x, p, False)), 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "int8":
            return per_row(x, self._op, self.params)
        return self._op(x, self.params)

    @property
    def format(self) -> str:
        return self.FORMATS[self.mode]

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def element_size(self) -> int:
        return self._bytes

    def data_ptr(self) -> int:
        return id(self)


def per_row(x: torch.Tensor, op, params) -> torch.Tensor:
    """op(x, params) with every row of x quantised on its own scale, whatever else is in the batch.

    fbgemm quantises its whole input with one scale, from the input's min and max: a token with
    a large activation would leave the other tokens of a prompt a few levels each (bits per
    byte of a test text: 5.2 instead of 0.8). So each row is divided by its largest magnitude
    and carries two extra columns, +1 and -1 (their weights are zero): every input then spans
    exactly [-1, 1], every row lands on the same grid, and no row depends on the others.
    """
    k = x.shape[-1]
    rows = x.reshape(-1, k)
    scale = rows.abs().amax(-1, keepdim=True).clamp_(min=torch.finfo(x.dtype).tiny)
    padded = _padded(rows.shape[0], k)
    torch.div(rows, scale, out=padded[:, :k])
    return op(padded, params).mul_(scale).view(*x.shape[:-1], -1)


_BUFFERS: dict[tuple[int, int], torch.Tensor] = {}


def _padded(n: int, k: int) -> torch.Tensor:
    """A reused (n, k + 2) input buffer whose last two columns hold +1 and -1.

    fbgemm quantises its input into its own buffer, so nothing keeps this one between calls
    (one model decoding at a time per process, as in every basecli command).
    """
    buf = _BUFFERS.get((n, k))
    if buf is None:
        if len(_BUFFERS) > 64:  # prompts of many lengths: keep memory bounded
            _BUFFERS.clear()
        with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
            buf = _BUFFERS[n, k] = torch.empty(n, k + 2)
            buf[:, k:] = torch.tensor([1.0, -1.0])
    return buf


def linear(x: torch.Tensor, w) -> torch.Tensor:
    """x @ w.T for a plain weight tensor or a Packed one."""
    return F.linear(x, w) if isinstance(w, torch.Tensor) else w(x)


def check(mode: str, model, device: str) -> None:
    """A UsageError saying what to change, unless `mode` can run for this model here."""
    from basecli.engine import native

    if mode in NATIVE_MODES:
        return native.check(mode, model, device)
    native.check_model(mode, model, device)
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise UsageError(f"--quantize {mode} needs torch's fbgemm kernels (x86 CPUs); this torch has none: try q4 or q8")


def apply(model, mode: str) -> None:
    """Replace every matrix of a lean model except the embedding lookup by its Packed form, in place."""
    if mode in NATIVE_MODES:
        from basecli.engine import native

        return native.apply(model, mode)
    check(mode, model, model.device.type)
    for layer in model.layers:
        for name in model.MATRICES:
            setattr(layer, name, Packed(getattr(layer, name), mode))
    model.head_tied = getattr(model, "head_tied", False) or model.head is model.embed  # still one matrix for counting (info), though now two objects
    model.head = Packed(model.head, mode)
    model.quantized = mode
