"""Logits processors with one value per batch row, so a sweep of settings runs as one batch.

Order as in transformers: repetition penalty, temperature, top-k, top-p, min-p.
Each takes and returns (B, V) float logits; filtered-out tokens become -inf.
A processor is applied only when some row uses a non-neutral value.
"""

from __future__ import annotations

from typing import Sequence

import torch

from basecli.config import SamplingParams


MIN_TEMPERATURE = 1e-20


class RowParams:
    """The sampling settings of every row as tensors on the model's device."""

    def __init__(self, params: Sequence[SamplingParams], device):
        f = lambda xs: torch.tensor(xs, dtype=torch.float32, device=device)  # noqa: E731
        # below MIN_TEMPERATURE, logits / t overflows float32 to inf (and softmax to NaN); the
        # distribution is one-hot long before that, so nothing is lost by stopping there
        self.temperature = f([max(p.temperature, MIN_TEMPERATURE) if p.temperature > 0 else 1.0 for p in params])
        self.greedy = torch.tensor([p.greedy for p in params], device=device)
        self.top_k = torch.tensor([p.top_k for p in params], dtype=torch.long, device=device)
        self.top_p = f([p.top_p for p in params])
        self.min_p = f([p.min_p for p in params])
        self.penalty = f([p.repetition_penalty for p in params])
        self.use_penalty = any(p.repetition_penalty != 1.0 for p in params)
        self.use_temperature = any(p.temperature not in (0.0, 1.0) for p in params)
        self.use_top_k = any(p.top_k > 0 for p in params)
        self.kmax = max(p.top_k for p in params)  # known on the host: top-k without reading k back (engine/static_loop.py)
        self.use_top_p = any(p.top_p < 1.0 for p in params)
        self.use_min_p = any(p.min_p > 0 for p in params)

    def select(self, rows: torch.Tensor) -> "RowParams":
        """Keep only `rows` (finished rows leave the batch)."""
        out = object.__new__(RowParams)
        for k, v in vars(self).items():
            setattr(out, k, v.index_select(0, rows) if isinstance(v, torch.Tensor) else v)
        return out


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """CTRL (Keskar et al. 2019): a seen token's logit is divided by p if positive, multiplied if negative."""
    p = penalty[:, None]
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalised, logits)


def temperature(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return logits / t[:, None]


def top_k(logits: torch.Tensor, k: torch.Tensor, kmax: int | None = None) -> torch.Tensor:
    """Keep the k highest logits of each row (ties at the k-th value are kept); k = 0 keeps all.

    kmax: at least k.max(), when known without reading k back from the device."""
    kmax = min(int(k.max()) if kmax is None else kmax, logits.shape[-1])
    if kmax == 0:  # the rows that used top-k have left the batch
        return logits
    top = torch.topk(logits, kmax, dim=-1).values  # (B, kmax), descending
    kth = top.gather(1, (k.clamp(1, kmax) - 1)[:, None])
    kth = torch.where(k[:, None] > 0, kth, torch.full_like(kth, -float("inf")))
    return logits.masked_fill(logits < kth, -float("inf"))


def top_p(logits: torch.Tensor, p: torch.Tensor, candidates: int | None = None) -> torch.Tensor:
    """Nucleus sampling: keep the smallest set of most likely tokens whose mass reaches p.

    Only the TOP_P_CANDIDATES most likely tokens are sorted when they already hold mass p in
    every row (sorting the whole vocabulary of every row each step costs far more: bench/README.md);
    otherwise the whole vocabulary is sorted. candidates=0 sorts it all at once (no host round-trip).
    """
    probs = logits.softmax(-1)
    k = min(TOP_P_CANDIDATES if candidates is None else candidates or logits.shape[-1], logits.shape[-1])
    top, order = probs.topk(k, dim=-1)  # descending
    cum = top.cumsum(-1)
    if k < logits.shape[-1] and bool((cum[:, -1] < p).any()):  # some nucleus reaches past the candidates
        top, order = probs.sort(dim=-1, descending=True)
        cum = top.cumsum(-1)
    mass_before = cum - top  # mass of the strictly more likely tokens
    keep_sorted = (mass_before < p[:, None]) | (p[:, None] >= 1)  # p = 1 keeps all, whatever the rounding of the sums
    keep_sorted[:, 0] = True  # the most likely token always stays
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, order, keep_sorted)  # tokens past the candidates: dropped
    return logits.masked_fill(~keep, -float("inf"))


TOP_P_CANDIDATES = 1024


def min_p(logits: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Keep tokens whose probability is at least min_p times the top token's (Nguyen et al. 2024)."""
    probs = logits.softmax(-1)
    threshold = m[:, None] * probs.max(-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, -float("inf"))


def process(logits: torch.Tensor, rows: RowParams, seen: torch.Tensor | None, *, on_device: bool = False) -> torch.Tensor:
    """All processors in order. Greedy rows go through them too: argmax is unchanged by them.

    on_device: read nothing back to the host (a CUDA graph cannot), at the price of sorting the whole vocabulary for top-p."""
    if rows.use_penalty and seen is not None:
        logits = repetition_penalty(logits, seen, rows.penalty)
    if rows.use_temperature:
        logits = temperature(logits, rows.temperature)
    if rows.use_top_k:
        logits = top_k(logits, rows.top_k, rows.kmax if on_device else None)
    if rows.use_top_p:
        logits = top_p(logits, rows.top_p, 0 if on_device else None)
    if rows.use_min_p:
        logits = min_p(logits, rows.min_p)
    return logits


def sample(logits: torch.Tensor, greedy: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row: argmax for greedy rows, else a draw from softmax(logits).

    The draw inverts the cumulative distribution at one uniform number from the row's own
    generator, so each row's randomness depends only on its seed, not on its batch. (One
    number per row: exponential noise over the whole vocabulary, argmax(p / E), costs more
    than the rest of sampling together.)
    """
    if bool(greedy.all()):
        return logits.argmax(-1)
    u = torch.cat([torch.rand(1, generator=g, device=logits.device) for g in generators])
    sampled = invert_cdf(logits, u)
    if not bool(greedy.any()):
        return sampled
    return torch.where(greedy, logits.argmax(-1), sampled)


def invert_cdf(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The token of each row whose cumulative probability under softmax(logits) first exceeds u (B,) in [0, 1)."""
    cdf = logits.softmax(-1).cumsum_(-1)  # (B, V), non-decreasing
    total = cdf[:, -1]
    # strictly below the total, so the first column past it always has probability > 0
    target = torch.minimum(u * total, total.nextafter(torch.zeros_like(total)))
    return torch.searchsorted(cdf, target[:, None], right=True)[:, 0]
