"""Keys and values of recent prompts, kept between generations and found again by token ids.

A loom generates again and again from paths that share most of their text: the children of
one node, then the children of a child. Reading a path anew each time costs a prefill of the
whole path; with the cache only the tokens after the longest prefix already seen are read.
The cache holds a few single-row snapshots (the states right after a prefill); a hit is
copied, so what a generation appends never changes a snapshot.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from basecli.engine.loop import cache_keyword, new_cache


class PrefixCache:
    def __init__(self, entries: int = 4):
        self.entries: list[tuple[tuple[int, ...], object]] = []  # (ids, cache after reading them), newest last
        self.limit = entries
        self.reused = 0  # tokens not read again, over the cache's life (what tests and the benchmark look at)
        self.read = 0  # tokens read

    def prefill(self, model, ids: Sequence[int], batch: int):
        """Read `ids` into a cache for `batch` rows that all continue it; (cache, last logits (batch, vocab))."""
        ids = tuple(ids)
        # at least one token is read, for the logits of the next one
        common, found = max(((_common(ids, key, len(ids) - 1), snap) for key, snap in self.entries),
                            key=lambda e: e[0], default=(0, None))
        if common and found is not None:
            cache = _copy(found, common)
        else:
            cache, common = new_cache(model), 0
        device = model.device
        rest = torch.tensor([ids[common:]], device=device)
        out = model(input_ids=rest, attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                    position_ids=torch.arange(common, len(ids), device=device)[None], use_cache=True, logits_to_keep=1,
                    **{cache_keyword(model): cache})
        self.reused += common
        self.read += len(ids) - common
        self._keep(ids, _copy(cache, len(ids)))
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache, out.logits[:, -1, :].float().expand(batch, -1).contiguous()

    def _keep(self, ids: tuple[int, ...], snapshot) -> None:
        # an entry that is a prefix of the new one is covered by it
        self.entries = [(k, s) for k, s in self.entries if ids[: len(k)] != k]
        self.entries.append((ids, snapshot))
        del self.entries[: -self.limit]


def _common(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n





def _copy(cache, length: int):
    """A single-row cache holding the first `length` positions of `cache`, sharing no memory with it."""
    if hasattr(cache, "prefix_k"):  # engine/attention.py's KVCache (never shared right after a one-row prefill)
        out = copy.copy(cache)
        out.k = cache.k[:, :, :, :length].clone()
        out.v = cache.v[:, :, :, :length].clone()
        out.length, out.shared, out.prefix_k, out.prefix_v = length, 0, None, None
        return out
    out = copy.deepcopy(cache)  # transformers' DynamicCache
    extra = out.get_seq_length() - length
    if extra > 0:
        out.crop(-extra)  # a negative count removes that many positions, in old and new transformers alike
    return out
