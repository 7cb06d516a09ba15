"""A KV cache preallocated for the whole run, so that a decode step has the same shapes every time.

The lean forwards (engine/lean.py's Llama and Qwen2, engine/gpt2.py's GPT-2) take it in place of
the growing KVCache: LeanModel.forward (engine/lean.py) and `attend` (engine/attention.py), which they
all go through, hand over to it. Where the next column is
and which columns hold real keys live in device tensors (`col`, `keys`), never in Python
numbers, so a decode step reads nothing back to the host and can be replayed as a CUDA graph
(engine/static_loop.py). Attention covers the whole capacity every step, with the columns
not yet written (and the left padding) masked out: fixed shapes cost reading a few unused
columns, which is why the capacity is the run's own need (prompt + max tokens), rounded.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

ROUND = 64  # capacity is a multiple of this: aligned rows for the attention kernels, few distinct shapes


def capacity_for(width: int, max_tokens: int) -> int:
    """Columns for a run: the prompt, then one per generated token (the last forward writes one more)."""
    need = width + max_tokens
    return -(-need // ROUND) * ROUND


class StaticCache:
    """Keys and values (layers, B, kv_heads, capacity, head_dim), written at column `col` (a (1,) device tensor).

    `keys` (B, capacity) says which columns hold a real token: the prompt's (not its left
    padding) and every generated one. The driver sets them before each pass and advances
    `col` after it (engine/static_loop.py); the forward only reads them.
    """

    def __init__(self, layers: int, kv_heads: int, head_dim: int, batch: int, capacity: int, dtype, device):
        self.shape = (layers, kv_heads, head_dim)
        self.capacity = capacity
        self.k = torch.zeros(layers, batch, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.keys = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.col = torch.zeros(1, dtype=torch.long, device=device)
        self.columns = torch.arange(capacity, device=device)
        self.length = 0  # the lean forwards set it; nothing here reads it (it would be frozen in a graph)
        self._folded = (None, None)  # (a pass's mask, it repeated for grouped query heads)

    @classmethod
    def for_model(cls, model, batch: int, capacity: int) -> "StaticCache":
        return cls(model.n_layers, model.n_kv, model.head_dim, batch, capacity, model.embed.dtype, model.device)

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def open_step(self, attention_mask, steps: int) -> tuple[torch.Tensor, int]:
        """The (B, 1, T, capacity) boolean mask of a pass of `steps` tokens at columns col..col+steps-1.

        A query sees the real keys up to its own column; a padding query sees itself too, so its
        softmax never has an empty row (NaN that would flow into later layers' keys)."""
        here = self.col + self.columns[:steps]  # (T,) this pass's columns
        upto = self.columns[None, :] <= here[:, None]  # (T, C)
        mask = upto[None] & self.keys[:, None, :]
        mask = mask | (self.columns[None, None, :] == here[None, :, None])
        return mask[:, None], 0

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Write this pass's keys and values (B, T, kv, hd) at col.., attend with queries (B, T, heads, hd); (B, T, heads * hd).

        Grouped-query heads are folded into the query length ((B, kv, group * T, hd)) rather than
        asking sdpa for enable_gqa, so every backend's masked kernel applies."""
        batch, steps, heads, hd = q.shape
        kv = k.shape[2]
        cols = self.col + self.columns[:steps]
        self.k[layer].index_copy_(2, cols, k.transpose(1, 2))
        self.v[layer].index_copy_(2, cols, v.transpose(1, 2))
        group = heads // kv
        q = q.transpose(1, 2).reshape(batch, kv, group * steps, hd)  # head h uses kv head h // group, as enable_gqa does
        if group > 1 and steps > 1:  # one query per row (decode) broadcasts over the group as it is
            if self._folded[0] is not mask:  # folded once per pass, not once per layer
                self._folded = (mask, mask[:, :, None].expand(batch, 1, group, steps, self.capacity)
                                .reshape(batch, 1, group * steps, self.capacity))
            mask = self._folded[1]
        o = F.scaled_dot_product_attention(q, self.k[layer], self.v[layer], attn_mask=mask)
        return o.view(batch, heads, steps, hd).transpose(1, 2).reshape(batch, steps, heads * hd)

    def advance(self, steps: int) -> None:
        """After a pass: the next one writes `steps` columns further on."""
        self.col += steps
        self._folded = (None, None)

    def fill_prompt(self, mask: torch.Tensor) -> None:
        """Before the prefill: the prompt's real columns (mask (B, width), 1 = token, 0 = left padding)."""
        self.keys[:, : mask.shape[1]] = mask.bool()

    def mark_next(self) -> None:
        """Before a decode pass: the column it writes holds a real token in every row."""
        self.keys.index_fill_(1, self.col, True)

    def share(self, one: "StaticCache") -> None:
        """After a one-row prefill (into `one`) of a prompt every row shares (resample): every row gets its keys."""
        self.k.copy_(one.k.expand_as(self.k))
        self.v.copy_(one.v.expand_as(self.v))
        self.keys.copy_(one.keys.expand_as(self.keys))
        self.col.copy_(one.col)

    def reset(self) -> None:
        """Empty, for the next run over the same buffers (what the columns hold is masked until written again)."""
        self.keys.zero_()
        self.col.zero_()

    def select(self, rows: torch.Tensor) -> "StaticCache":
        """A cache of only `rows` (finished rows leave the batch): new buffers, so the decode step has a new shape."""
        out = copy.copy(self)
        out.k, out.v = self.k.index_select(1, rows), self.v.index_select(1, rows)
        out.keys, out.col, out._folded = self.keys.index_select(0, rows), self.col.clone(), (None, None)
        return out
