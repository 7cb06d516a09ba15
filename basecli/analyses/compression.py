"""How many bits a text costs: under the model (teacher-forced log-probs) and under general-purpose compressors.

A model that assigns probability p to the next token can encode it in -log2(p) bits with an
arithmetic coder, so the sum of surprisals is the size of the text compressed by the model.
Next to it, the same UTF-8 bytes under gzip -9, bz2 -9 and xz -9, headers included, as the
files those tools write would be.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
from dataclasses import asdict, dataclass
from typing import Sequence

LN2 = math.log(2)


@dataclass(frozen=True)
class Summary:
    tokens: int  # tokens of the text
    scored: int  # tokens that had a probability (all, unless nothing preceded the first)
    bits: float  # total surprisal, -sum(log2 p)
    bytes: int  # UTF-8 bytes of the scored text
    chars: int  # characters of the scored text
    bits_per_token: float
    bits_per_byte: float
    bits_per_char: float
    perplexity: float  # exp(mean negative log-likelihood per token)

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(logprobs: Sequence[float | None], scored_text: str) -> Summary:
    """Figures of a text from its tokens' natural-log probabilities; `scored_text` is the text those tokens cover."""
    lps = [lp for lp in logprobs if lp is not None]
    if not lps:
        raise ValueError("no scored tokens")
    nats = -sum(lps)
    bits = nats / LN2
    n_bytes = len(scored_text.encode("utf-8"))
    n_chars = len(scored_text)
    return Summary(
        tokens=len(logprobs),
        scored=len(lps),
        bits=bits,
        bytes=n_bytes,
        chars=n_chars,
        bits_per_token=bits / len(lps),
        bits_per_byte=bits / n_bytes if n_bytes else math.nan,
        bits_per_char=bits / n_chars if n_chars else math.nan,
        perplexity=math.exp(nats / len(lps)),
    )


def compressed_sizes(data: bytes) -> dict[str, int]:
    """Bytes of `data` after each compressor at its strongest setting."""
    return {
        "gzip -9": len(gzip.compress(data, compresslevel=9, mtime=0)),
        "bz2 -9": len(bz2.compress(data, compresslevel=9)),
        "xz -9": len(lzma.compress(data, format=lzma.FORMAT_XZ, preset=9)),
    }


def compression_table(text: str, model_bits: float | None = None) -> dict[str, dict]:
    """{name: {bytes, bits_per_byte}} for each compressor, and for the model when its bits are given."""
    data = text.encode("utf-8")
    n = len(data)
    table = {name: {"bytes": size, "bits_per_byte": round(8 * size / n, 5)} for name, size in compressed_sizes(data).items()}
    if model_bits is not None:
        table = {"model": {"bytes": math.ceil(model_bits / 8), "bits_per_byte": round(model_bits / n, 5)}, **table}
    return table
