"""A lean Llama forward pass for decoding, the default engine for Llama models (BASECLI_ENGINE=transformers turns it off).

On a small model every decode step is a few hundred tiny kernels, so the cost per kernel,
not the arithmetic, decides the speed. This module computes the same function as
transformers' LlamaForCausalLM with about 20 kernels per layer: q, k and v in one matmul,
gate and up in one matmul, torch's fused rms_norm and sdpa, and keys and values written
in place into a cache that grows by doubling (transformers' DynamicCache concatenates,
copying the whole cache, on every step). It needs only torch and safetensors, so loading
skips `import transformers` as well.

It accepts the same call as transformers models as far as basecli's loop uses it:
model(input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep).logits
Qwen2's q/k/v biases and Llama 3's rope scaling are covered; GPT-2 has its own forward (engine/gpt2.py)
over the same cache and attention. Other architectures stay on transformers.
"""

from __future__ import annotations

import json
import math
import mmap
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from basecli.engine.quant import linear


# Layer fields and the checkpoint tensors they hold (q, k, v and gate, up are fused on load).
CHECKPOINT_NAMES = {
    "norm1": "input_layernorm.weight",
    "qkv": "self_attn.q_k_v_proj.weight",
    "qkv_bias": "self_attn.q_k_v_proj.bias",
    "o": "self_attn.o_proj.weight",
    "o_bias": "self_attn.o_proj.bias",
    "norm2": "post_attention_layernorm.weight",
    "gate_up": "mlp.gate_up_proj.weight",
    "down": "mlp.down_proj.weight",
}


# The checkpoint tensors of each fused layer matrix, in the order they are stacked.
SOURCES = {"qkv": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"), "o": ("self_attn.o_proj.weight",),
           "gate_up": ("mlp.gate_proj.weight", "mlp.up_proj.weight"), "down": ("mlp.down_proj.weight",)}


class Unsupported(Exception):
    """This model needs transformers' own code."""


@dataclass
class LeanOutput:
    logits: torch.Tensor  # (B, T, vocab)


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


class LeanModel(torch.nn.Module):
    """What basecli's loop, scorer and kernels ask of a lean forward (LeanLlama here, LeanGPT2 in engine/gpt2.py).

    A subclass sets embed, head, layers, n_layers, n_kv, head_dim, _device and native, and computes
    `blocks` (the embeddings and every layer) and `final_norm`.
    """

    native = None  # engine/native.py's one-call decode step, when BASECLI_QUANTIZE=q4|q8

    @property
    def device(self) -> torch.device:
        return self._device

    def get_output_embeddings(self):
        return SimpleNamespace(weight=self.head)

    def new_cache(self) -> KVCache:
        return KVCache(self.n_layers, self.n_kv, self.head_dim, self.embed.dtype, self._device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                past_key_values: KVCache | None = None, use_cache: bool = True, logits_to_keep: int = 0, **_) -> LeanOutput:
        """transformers' call as far as basecli uses it; the defaults filled in as transformers fills them."""
        batch, steps = input_ids.shape
        cache = past_key_values if past_key_values is not None else self.new_cache()
        start = cache.length
        if attention_mask is None:
            attention_mask = torch.ones(batch, start + steps, dtype=torch.long, device=input_ids.device)
        if position_ids is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, start:]
        if steps == 1 and self.native is not None:  # engine/native.py: the whole step in one call
            return LeanOutput(self.native.step(input_ids, attention_mask, position_ids, cache)[:, None])
        if hasattr(cache, "open_step"):  # engine/static.py's preallocated cache: fixed shapes, nothing read back to the host
            mask, start = cache.open_step(attention_mask, steps)
        else:
            mask = attention_bias(attention_mask.bool(), steps)
            if cache.shared and (steps > 1 or mask is not None):
                cache.unshare()
            cache.reserve(batch, steps)
        x = self.blocks(input_ids, position_ids, cache, mask, start)  # (B, T, dim)
        cache.length = start + steps
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return LeanOutput(linear(self.final_norm(x), self.head))


class LeanLlama(LeanModel):
    MATRICES = ("qkv", "o", "gate_up", "down")  # the layer fields engine/quant.py and engine/native.py replace

    def __init__(self, cfg: dict, weights: "Weights", dtype, device, convert=None):
        super().__init__()
        check_supported(cfg)
        self.config = SimpleNamespace(**cfg)
        self.n_layers = cfg["num_hidden_layers"]
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads") or self.n_heads
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // self.n_heads
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        self.dim = cfg["hidden_size"]
        self.register_buffer("inv_freq", rope_frequencies(cfg, self.head_dim).to(device), persistent=False)

        self.weights = weights  # the mapped files, so quantising can release the pages of what it replaced
        take = lambda *names: weights.read(names, dtype, device)  # noqa: E731
        in_place = getattr(weights, "in_place", None)  # a GGUF file's own blocks (weights/gguf_blocks.py), or None

        def matrix(*names, role="layer", tensor=None):
            """A weight matrix, or what `convert(matrix, role)` makes of it (engine/native.py quantising as it loads:
            each fp32 matrix is resident only until its quantised form exists)."""
            if in_place is not None and (blocks := in_place(names)) is not None:
                return blocks
            t = take(*names) if tensor is None else tensor
            if convert is None:
                return t
            out = convert(t, role)
            for name in names:
                weights.release(name)
            return out

        self.embed = matrix("model.embed_tokens.weight") if in_place is not None else take("model.embed_tokens.weight")

        def bias(*names):
            """The biases of a (fused) matrix: Qwen2's q, k and v, Llama's with attention_bias; None when it has none."""
            return take(*names) if all(n in weights.index for n in names) else None

        self.layers = []
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            self.layers.append(SimpleNamespace(
                norm1=take(p + "input_layernorm.weight"),
                qkv=matrix(*self.source_names("qkv", i)),
                qkv_bias=bias(a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"),
                o=matrix(*self.source_names("o", i)),
                o_bias=bias(a + "o_proj.bias"),
                norm2=take(p + "post_attention_layernorm.weight"),
                gate_up=matrix(*self.source_names("gate_up", i)),
                down=matrix(*self.source_names("down", i)),
            ))
        self.norm = take("model.norm.weight")
        if "lm_head.weight" in weights.index:
            self.head = matrix("lm_head.weight", role="head")
        else:  # tied: the head is the embedding, which stays for lookups (its pages come back a row at a time)
            self.head = self.embed if convert is None or in_place is not None else matrix("model.embed_tokens.weight", role="head", tensor=self.embed)
            self.head_tied = True
        self._device = torch.device(device)

    def source_names(self, field: str, layer: int | None = None) -> tuple[str, ...]:
        """The checkpoint tensors a matrix was read from (engine/native.py releases their pages once it is quantised)."""
        if layer is None:
            return ("lm_head.weight", "model.embed_tokens.weight")
        return tuple(f"model.layers.{layer}.{name}" for name in SOURCES[field])

    def tensors(self):
        """Every weight (they are plain tensors, not Parameters: nothing here is trained)."""
        yield from (self.embed, self.norm, self.head)
        for layer in self.layers:
            yield from (t for t in vars(layer).values() if t is not None)

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """Every weight once, named as in the checkpoint; fused matrices are named for what they hold.

        What torch's `parameters()` answers for transformers' models, so `info`, the batch planner
        and anything else that asks a model for its weights works on this one too.
        """
        yield "model.embed_tokens.weight", self.embed
        for i, layer in enumerate(self.layers):
            for field, value in vars(layer).items():
                if value is not None:
                    yield f"model.layers.{i}.{CHECKPOINT_NAMES.get(field, field)}", value
        yield "model.norm.weight", self.norm
        if self.head is not self.embed and not getattr(self, "head_tied", False):  # tied: the embedding, already listed
            yield "lm_head.weight", self.head

    def blocks(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: KVCache, mask, start: int) -> torch.Tensor:
        batch, steps = input_ids.shape
        cos, sin = self.rope(position_ids)
        x = F.embedding(input_ids, self.embed) if isinstance(self.embed, torch.Tensor) else self.embed.rows(input_ids)
        heads, kv, hd = self.n_heads, self.n_kv, self.head_dim
        for i, layer in enumerate(self.layers):
            h = F.rms_norm(x, (self.dim,), layer.norm1, self.eps)
            qkv = affine(h, layer.qkv, layer.qkv_bias).view(batch, steps, heads + 2 * kv, hd)
            qk = qkv[:, :, : heads + kv]
            # rope on q and k at once: x cos + rotate_half(x) sin, where rotate_half(x) = roll(x) with the first half negated
            qk = torch.addcmul(qk * cos, qk.roll(hd // 2, -1), sin)
            o = attend(cache, i, qk[:, :, :heads], qk[:, :, heads:], qkv[:, :, heads + kv :], mask, start)
            x = x + affine(o, layer.o, layer.o_bias)
            h = F.rms_norm(x, (self.dim,), layer.norm2, self.eps)
            gate, up = linear(h, layer.gate_up).chunk(2, dim=-1)
            x = x + linear(F.silu(gate, inplace=True) * up, layer.down)
        return x

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.dim,), self.norm, self.eps)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sign-folded sin for every position, (B, T, 1, head_dim), as transformers computes them (in fp32).

        sin's first half is negated so that rotate_half(x) * sin == x.roll(head_dim / 2) * this sin.
        """
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, hd/2)
        cos, sin = freqs.cos(), freqs.sin()
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)
        return cos[:, :, None].to(self.embed.dtype), sin[:, :, None].to(self.embed.dtype)


def affine(x: torch.Tensor, w, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ w.T + bias, for a plain or a quantised (engine/quant.py, engine/native.py) weight."""
    if bias is None:
        return linear(x, w)
    return F.linear(x, w, bias) if isinstance(w, torch.Tensor) else w(x).add_(bias)


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


def rope_parameters(cfg: dict) -> dict:
    """rope_theta and the scaling fields, wherever the config keeps them (rope_scaling before transformers 5)."""
    return {"rope_theta": cfg.get("rope_theta"), **(cfg.get("rope_scaling") or {}), **(cfg.get("rope_parameters") or {})}


def rope_frequencies(cfg: dict, head_dim: int) -> torch.Tensor:
    """inv_freq (head_dim / 2) as transformers computes it: default, or Llama 3's ("llama3") smooth scaling of
    the low frequencies for a longer context (modeling_rope_utils._compute_llama3_parameters)."""
    rope = rope_parameters(cfg)
    half = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (rope["rope_theta"] or 10000.0) ** half
    if rope.get("rope_type", rope.get("type")) != "llama3":
        return inv_freq
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)  # long wavelengths: divided by factor
    smooth = (old / wavelen - low) / (high - low)  # between the two: interpolated
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) * ~(wavelen > old / low)
    return torch.where(medium, smoothed, scaled)


def check_supported(cfg: dict) -> None:
    rope = rope_parameters(cfg)
    kind = cfg.get("model_type")
    reasons = [
        (kind not in ("llama", "qwen2"), f"model_type {kind!r}"),
        (cfg.get("mlp_bias"), "MLP biases"),
        (kind == "qwen2" and cfg.get("use_sliding_window"), "sliding-window attention"),
        (cfg.get("hidden_act", "silu") != "silu", f"activation {cfg.get('hidden_act')!r}"),
        (rope.get("rope_type", rope.get("type", "default")) not in ("default", "llama3"), "rope scaling"),
        (rope.get("partial_rotary_factor", 1.0) != 1.0, "partial rotary embeddings"),
    ]
    found = [why for bad, why in reasons if bad]
    if found:
        raise Unsupported(", ".join(found))


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
