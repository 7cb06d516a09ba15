"""Attention over basecli's KV cache: the cache itself, and the causal attention of the lean forwards
(engine/lean.py's Llama, engine/gpt2.py's GPT-2), with the two paths that make a row's bits its own:
a prompt shared by every row of a resample read once, and left-padded prompts attended row by row."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class KVCache:
    """Keys and values of every layer in one buffer (layers, B, kv_heads, capacity, head_dim).

    Left padding keeps every row's next token in the same column, so one `length` serves all rows.
    After a shared prefill (resample: n samples of one prompt) the prompt's keys and values are
    kept once, in `prefix_k`/`prefix_v` (layers, 1, kv_heads, shared, head_dim), and the
    per-row buffers hold only what each row generated: attention reads the prompt once per
    step for all rows instead of once per row (at 16 rows it was a quarter of the step).
    """

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype, device, capacity: int = 256):
        self.shape = (layers, kv_heads, head_dim)
        self.dtype, self.device = dtype, device
        self.capacity = capacity
        self.k = self.v = None
        self.length = 0  # positions seen, shared ones included
        self.shared = 0  # of which in prefix_k/prefix_v
        self.prefix_k = self.prefix_v = None

    def reserve(self, batch: int, extra: int) -> None:
        """Room for `extra` more columns; doubling keeps the copies rare (log n of them)."""
        held = self.length - self.shared
        need = held + extra
        if self.k is not None and need <= self.k.shape[3]:
            return
        layers, heads, dim = self.shape
        size = max(self.capacity, need)
        while size < need * 2 and self.k is not None:
            size *= 2
        k = torch.empty(layers, batch, heads, size, dim, dtype=self.dtype, device=self.device)
        v = torch.empty_like(k)
        if self.k is not None:
            k[:, :, :, :held] = self.k[:, :, :, :held]
            v[:, :, :, :held] = self.v[:, :, :, :held]
        self.k, self.v = k, v

    def batch_select_indices(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (finished rows leave the batch)."""
        if self.k is None:  # rows that ended on their first token, right after a shared prefill: nothing per row yet
            return
        self.k, self.v = self.k.index_select(1, rows), self.v.index_select(1, rows)

    def batch_repeat_interleave(self, n: int) -> None:
        """Each row becomes n rows: one prefill shared by n samples of the same prompt."""
        # kept once on the CPU only: the merge needs the log-sum-exps that only the CPU flash kernel returns
        if self.k.shape[1] == 1 and self.shared == 0 and n > 1 and torch.device(self.device).type == "cpu":
            self.prefix_k, self.prefix_v = self.k[:, :, :, : self.length], self.v[:, :, :, : self.length]
            self.shared, self.k, self.v = self.length, None, None
            return
        self.unshare()
        self.k, self.v = self.k.repeat_interleave(n, dim=1), self.v.repeat_interleave(n, dim=1)

    def unshare(self) -> None:
        """Copy the shared prefix into every row's buffer (for steps the two-part attention does not cover)."""
        if not self.shared:
            return
        batch, held = self.k.shape[1], self.length - self.shared
        k, v = self.k[:, :, :, :held], self.v[:, :, :, :held]
        self.k = self.v = None
        self.length, shared = held, self.shared
        self.shared = 0
        self.reserve(batch, shared + held)
        self.k[:, :, :, :shared] = self.prefix_k
        self.v[:, :, :, :shared] = self.prefix_v
        self.k[:, :, :, shared : shared + held] = k
        self.v[:, :, :, shared : shared + held] = v
        self.length = shared + held
        self.prefix_k = self.prefix_v = None

    def get_seq_length(self, layer: int = 0) -> int:
        return self.length


def attend(cache: KVCache, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           start: int) -> torch.Tensor:
    """Causal attention of this pass's queries (B, T, heads, hd) over the cache and this pass's keys and values
    (B, T, kv, hd), which are written into the cache at columns start.. first; (B, T, heads * hd)."""
    if hasattr(cache, "attend"):
        return cache.attend(layer, q, k, v, mask)
    batch, steps, heads, hd = q.shape
    end = start + steps
    col, held = start - cache.shared, end - cache.shared  # this pass's columns in the per-row buffers
    cache.k[layer, :, :, col:held] = k.transpose(1, 2)  # (B, kv, T, hd)
    cache.v[layer, :, :, col:held] = v.transpose(1, 2)
    if cache.shared:
        return shared_prefix_attention(q[:, 0], cache, layer, held).view(batch, 1, heads * hd)
    # a left-padded prompt: the last query sees every real key, so its row of the mask is the padding
    starts = left_padding(mask[:, 0, -1]) if mask is not None and steps > 1 and start == 0 else None
    if starts is not None:
        o = rows_attention(q.transpose(1, 2), cache.k[layer, :, :, :end], cache.v[layer, :, :, :end], starts, k.shape[2] != heads)
        return o.transpose(1, 2).reshape(batch, steps, heads * hd)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), cache.k[layer, :, :, :end], cache.v[layer, :, :, :end], attn_mask=mask,
                                       is_causal=mask is None and steps > 1, enable_gqa=k.shape[2] != heads)
    return o.transpose(1, 2).reshape(batch, steps, heads * hd)  # (B, heads, T, hd) -> (B, T, heads * hd)


def shared_prefix_attention(q: torch.Tensor, cache: KVCache, layer: int, held: int) -> torch.Tensor:
    """One decode step's attention over a prefix every row shares plus each row's own keys, (B, heads * hd).

    The queries of all rows that use one kv head attend to the prefix as one block (the prefix
    is read once), each row attends to its own keys, and the two softmaxes are merged by their
    log-sum-exps: softmax over the union = each part's output weighted by exp(part lse - total lse).
    """
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    batch, heads, hd = q.shape
    kv = cache.shape[1]
    q = q.reshape(batch, kv, heads // kv, hd)  # query head h uses kv head h // (heads / kv), as in enable_gqa
    rows = q.transpose(0, 1).reshape(1, kv, -1, hd)  # (1, kv, B * group, hd): every row's queries, per kv head
    o1, lse1 = flash(rows, cache.prefix_k[layer], cache.prefix_v[layer])
    o1, lse1 = o1.view(kv, batch, -1, hd).transpose(0, 1), lse1.view(kv, batch, -1).transpose(0, 1)
    o2, lse2 = flash(q, cache.k[layer, :, :, :held], cache.v[layer, :, :, :held])
    lse = torch.logaddexp(lse1, lse2)  # fp32 whatever the model's dtype: the flash kernel returns its lse so
    # the merge is done in fp32 and the result handed back in the dtype of the weights it meets next
    # (bf16 outputs times fp32 weights made an fp32 tensor, which crashed the bf16 o_proj matmul)
    o = o1.float() * (lse1 - lse).exp_()[..., None] + o2.float() * (lse2 - lse).exp_()[..., None]
    return o.to(q.dtype).reshape(batch, heads * hd)


def left_padding(keys: torch.Tensor) -> list[int] | None:
    """Each row's first real column when every row of `keys` (B, L) is zeros then ones (basecli's left padding), else None."""
    keys = keys.long()
    first = keys.argmax(-1)
    if not bool((keys.sum(-1) == keys.shape[1] - first).all()):
        return None
    return first.tolist()


def rows_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: list[int], gqa: bool) -> torch.Tensor:
    """A left-padded prompt's causal attention (B, heads, T, hd), row by row over its real tokens only.

    One call with a padding mask gives a row other bits than the same prompt alone: the kernel's blocks of
    keys start at the padding, so its sums split elsewhere. In basecli's 4/8-bit path a difference of one
    rounding can move an activation across an int8 rounding edge, and a row's tokens then depended on
    its batch. Alone, each row is the very call its prompt makes by itself; padding queries get zeros.
    """
    out = q.new_zeros(q.shape)
    for b, first in enumerate(starts):
        out[b, :, first:] = F.scaled_dot_product_attention(q[b : b + 1, :, first:], k[b : b + 1, :, first:], v[b : b + 1, :, first:],
                                                           is_causal=True, enable_gqa=gqa)[0]
    return out


def attention_bias(keys: torch.Tensor, steps: int) -> torch.Tensor | None:
    """Boolean (B, 1, T, L) mask: a query sees real keys up to itself. None when nothing is masked but causality
    and the queries are all the keys (SDPA's is_causal aligns its triangle top-left: wrong for queries that
    follow cached keys, as the prefix cache's reads do).

    A padding query sees itself too, so its softmax never has an empty row (NaN that would
    flow into later layers' keys); no real query ever sees a padding key.
    """
    if (steps == 1 or steps == keys.shape[1]) and bool(keys.all()):
        return None
    total = keys.shape[1]
    cols = torch.arange(total, device=keys.device)
    rows = torch.arange(total - steps, total, device=keys.device)
    causal = cols[None, :] <= rows[:, None]  # (T, L)
    mask = causal[None] & keys[:, None, :]
    mask |= cols[None, None, :] == rows[None, :, None]
    return mask[:, None]
