"""Sampling that stays on the device: per-row processors and a per-row seeded draw with nothing read back.

engine/loop.py draws each row's uniform number from the row's own torch.Generator, one call
per row, and its processors read a few values back to the host; neither can be replayed as a
CUDA graph. Here the uniform number of row r at step s is a hash of (seed_r, s), computed
on the device for all rows at once: a counter-based generator (as Philox is), so a row's draws
depend only on its seed and its step, never on the batch it runs in. The same seed gives the
same tokens on this path every time, but other tokens than the plain path's generators give.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from basecli.engine.loop import sampled_entropy
from basecli.engine.processors import RowParams, invert_cdf, process

MASK32 = 0xFFFFFFFF
MIX = 0x45D9F3B  # a 32-bit integer hash multiplier (below 2**31: products of 32-bit values stay inside int64)
STEP_MIX = 0x2545F491


def seed_tensor(seeds: Sequence[int], device) -> torch.Tensor:
    """Each row's seed folded to 32 bits, as int64 on the device."""
    return torch.tensor([(s ^ (s >> 32)) & MASK32 for s in seeds], dtype=torch.long, device=device)


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = ((x >> 16) ^ x) * MIX & MASK32
    x = ((x >> 16) ^ x) * MIX & MASK32
    return (x >> 16) ^ x


def uniform(seeds: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """(B,) float32 in [0, 1): row r's number at step `step` ((1,) int64), from the top 24 bits of hash(seed_r, step)."""
    x = _mix(_mix(seeds) ^ (step * STEP_MIX & MASK32))
    return (x >> 8).float() * (1.0 / (1 << 24))


class DeviceDraw:
    """One step's process-and-sample for a fixed batch, written into per-step output buffers.

    The chosen token, its log-probability (before any processor), the top `alternatives` and
    the entropy of what was sampled from go to column `step` of (B, steps) buffers that the
    host copies in one go every few steps."""

    def __init__(self, cfg: RowParams, seeds: torch.Tensor, steps: int, *, alternatives: int, entropy: bool):
        batch, device = len(seeds), seeds.device
        self.cfg, self.seeds, self.alternatives, self.entropy = cfg, seeds, alternatives, entropy
        self.all_greedy = bool(cfg.greedy.all())  # read once, here: no draw to make at any step
        self.tokens = torch.zeros(batch, steps, dtype=torch.long, device=device)
        self.logprobs = torch.zeros(batch, steps, device=device)
        self.alt_ids = torch.zeros(batch, steps, max(alternatives, 1), dtype=torch.long, device=device)
        self.alt_logprobs = torch.zeros(batch, steps, max(alternatives, 1), device=device)
        self.entropies = torch.zeros(batch, steps, device=device)

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None, step: torch.Tensor) -> torch.Tensor:
        """The (B,) tokens drawn from (B, V) fp32 logits at `step` ((1,) int64 on the device)."""
        logp = logits.log_softmax(-1)  # a row at a time, as engine/loop.py's draw: a row's bits in any batch
        processed = process(logits, self.cfg, seen, on_device=True)
        if self.all_greedy:
            tokens = processed.argmax(-1)
        else:
            tokens = torch.where(self.cfg.greedy, processed.argmax(-1), invert_cdf(processed, uniform(self.seeds, step)))
        self.tokens.index_copy_(1, step, tokens[:, None])
        self.logprobs.index_copy_(1, step, logp.gather(1, tokens[:, None]))
        if self.alternatives:
            top = torch.topk(logits, self.alternatives, dim=-1).indices
            self.alt_ids.index_copy_(1, step, top[:, None])
            self.alt_logprobs.index_copy_(1, step, logp.gather(1, top)[:, None])
        if self.entropy:
            self.entropies.index_copy_(1, step, sampled_entropy(processed, self.cfg.greedy)[:, None])
        return tokens

    def load(self, cfg: RowParams, seeds: torch.Tensor) -> None:
        """Another run's settings and seeds, written into this one's tensors (a captured step reads them where they are).
        The host-side choices (which processors run, top-k's bound) must be the same: the caller's key says so."""
        for name, value in vars(cfg).items():
            if isinstance(value, torch.Tensor):
                getattr(self.cfg, name).copy_(value)
        self.seeds.copy_(seeds)

    def select(self, rows: torch.Tensor) -> "DeviceDraw":
        """A draw for only `rows` (finished rows leave the batch), in new tensors."""
        out = copy.copy(self)
        out.cfg, out.seeds = self.cfg.select(rows), self.seeds.index_select(0, rows)
        for name in ("tokens", "logprobs", "alt_ids", "alt_logprobs", "entropies"):
            setattr(out, name, getattr(self, name).index_select(0, rows))
        return out

    def read(self, first: int, last: int) -> tuple[list, list, list | None, list | None]:
        """Steps first..last-1 of every row on the host: tokens, logprobs, alternatives, entropies (one copy each)."""
        cols = slice(first, last)
        alts = None
        if self.alternatives:
            ids, lps = self.alt_ids[:, cols].tolist(), self.alt_logprobs[:, cols].tolist()
            alts = [[list(zip(i, lp)) for i, lp in zip(row_ids, row_lps)] for row_ids, row_lps in zip(ids, lps)]
        ent = self.entropies[:, cols].tolist() if self.entropy else None
        return self.tokens[:, cols].tolist(), self.logprobs[:, cols].tolist(), alts, ent
