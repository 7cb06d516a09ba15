"""A lean Llama forward pass for decoding, with a preallocated KV cache. Opt-in: BASECLI_ENGINE=lean.

On a small model every decode step is a few hundred tiny kernels, so the cost per kernel,
not the arithmetic, decides the speed. This module computes the same function as
transformers' LlamaForCausalLM with about 20 kernels per layer: q, k and v in one matmul,
gate and up in one matmul, torch's fused rms_norm and sdpa, and keys and values written
in place into a cache that grows by doubling (transformers' DynamicCache concatenates,
copying the whole cache, on every step). It needs only torch and safetensors, so loading
skips `import transformers` as well.

It accepts the same call as transformers models as far as basecli's loop uses it:
model(input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep).logits
Other architectures, and Llama variants with rope scaling or biases, stay on transformers.
"""

from __future__ import annotations

import json
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
    "o": "self_attn.o_proj.weight",
    "norm2": "post_attention_layernorm.weight",
    "gate_up": "mlp.gate_up_proj.weight",
    "down": "mlp.down_proj.weight",
}


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


class LeanLlama(torch.nn.Module):
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
        theta = (cfg.get("rope_parameters") or {}).get("rope_theta") or cfg.get("rope_theta") or 10000.0
        half = torch.arange(0, self.head_dim, 2, dtype=torch.int64).to(torch.float32) / self.head_dim
        self.register_buffer("inv_freq", (1.0 / theta**half).to(device), persistent=False)

        self.weights = weights  # the mapped files, so quantising can release the pages of what it replaced
        take = lambda *names: weights.read(names, dtype, device)  # noqa: E731

        def matrix(*names, role="layer", tensor=None):
            """A weight matrix, or what `convert(matrix, role)` makes of it (engine/native.py quantising as it loads:
            each fp32 matrix is resident only until its quantised form exists)."""
            t = take(*names) if tensor is None else tensor
            if convert is None:
                return t
            out = convert(t, role)
            for name in names:
                weights.release(name)
            return out

        self.embed = take("model.embed_tokens.weight")
        self.layers = []
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            a, m = p + "self_attn.", p + "mlp."
            self.layers.append(SimpleNamespace(
                norm1=take(p + "input_layernorm.weight"),
                qkv=matrix(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"),
                o=matrix(a + "o_proj.weight"),
                norm2=take(p + "post_attention_layernorm.weight"),
                gate_up=matrix(m + "gate_proj.weight", m + "up_proj.weight"),
                down=matrix(m + "down_proj.weight"),
            ))
        self.norm = take("model.norm.weight")
        if "lm_head.weight" in weights.index:
            self.head = matrix("lm_head.weight", role="head")
        else:  # tied: the head is the embedding, which stays for lookups (its pages come back a row at a time)
            self.head = self.embed if convert is None else matrix("model.embed_tokens.weight", role="head", tensor=self.embed)
            self.head_tied = True
        self._device = torch.device(device)
        self.native = None  # engine/native.py's one-call decode step, when BASECLI_QUANTIZE=q4|q8

    @property
    def device(self) -> torch.device:
        return self._device

    def tensors(self):
        """Every weight (they are plain tensors, not Parameters: nothing here is trained)."""
        yield from (self.embed, self.norm, self.head)
        for layer in self.layers:
            yield from vars(layer).values()

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """Every weight once, named as in the checkpoint; fused matrices are named for what they hold.

        What torch's `parameters()` answers for transformers' models, so `info`, the batch planner
        and anything else that asks a model for its weights works on this one too.
        """
        yield "model.embed_tokens.weight", self.embed
        for i, layer in enumerate(self.layers):
            for field, value in vars(layer).items():
                yield f"model.layers.{i}.{CHECKPOINT_NAMES.get(field, field)}", value
        yield "model.norm.weight", self.norm
        if self.head is not self.embed and not getattr(self, "head_tied", False):  # tied: the embedding, already listed
            yield "lm_head.weight", self.head

    def get_output_embeddings(self):
        return SimpleNamespace(weight=self.head)

    def new_cache(self) -> KVCache:
        return KVCache(self.n_layers, self.n_kv, self.head_dim, self.embed.dtype, self._device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                past_key_values: KVCache | None = None, use_cache: bool = True, logits_to_keep: int = 0, **_) -> LeanOutput:
        batch, steps = input_ids.shape
        cache = past_key_values if past_key_values is not None else self.new_cache()
        start = cache.length
        if attention_mask is None:
            attention_mask = torch.ones(batch, start + steps, dtype=torch.long, device=input_ids.device)
        if position_ids is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, start:]
        if steps == 1 and self.native is not None:  # engine/native.py: the whole step in one call
            return LeanOutput(self.native.step(input_ids, attention_mask, position_ids, cache)[:, None])
        mask = attention_bias(attention_mask.bool(), steps)
        if cache.shared and (steps > 1 or mask is not None):
            cache.unshare()
        cache.reserve(batch, steps)
        cos, sin = self.rope(position_ids)
        x = F.embedding(input_ids, self.embed)
        end = start + steps
        col, held = start - cache.shared, end - cache.shared  # this step's columns in the per-row buffers
        heads, kv, hd = self.n_heads, self.n_kv, self.head_dim
        causal, gqa = mask is None and steps > 1, kv != heads
        starts = left_padding(attention_mask) if mask is not None and steps > 1 and start == 0 else None
        for i, layer in enumerate(self.layers):
            h = F.rms_norm(x, (self.dim,), layer.norm1, self.eps)
            qkv = linear(h, layer.qkv).view(batch, steps, heads + 2 * kv, hd)
            qk = qkv[:, :, : heads + kv]
            # rope on q and k at once: x cos + rotate_half(x) sin, where rotate_half(x) = roll(x) with the first half negated
            qk = torch.addcmul(qk * cos, qk.roll(hd // 2, -1), sin)
            cache.k[i, :, :, col:held] = qk[:, :, heads:].transpose(1, 2)  # (B, kv, T, hd)
            cache.v[i, :, :, col:held] = qkv[:, :, heads + kv :].transpose(1, 2)
            if cache.shared:
                o = shared_prefix_attention(qk[:, 0, :heads], cache, i, held)  # (B, heads * hd)
            elif starts is not None:
                o = rows_attention(qk[:, :, :heads].transpose(1, 2), cache.k[i, :, :, :end], cache.v[i, :, :, :end], starts, gqa)
                o = o.transpose(1, 2).reshape(batch, steps, heads * hd)
            else:
                o = F.scaled_dot_product_attention(qk[:, :, :heads].transpose(1, 2), cache.k[i, :, :, :end], cache.v[i, :, :, :end],
                                                   attn_mask=mask, is_causal=causal, enable_gqa=gqa)  # (B, heads, T, hd)
                o = o.transpose(1, 2).reshape(batch, steps, heads * hd)
            x = x + linear(o.view(batch, steps, heads * hd), layer.o)
            h = F.rms_norm(x, (self.dim,), layer.norm2, self.eps)
            gate, up = linear(h, layer.gate_up).chunk(2, dim=-1)
            x = x + linear(F.silu(gate, inplace=True) * up, layer.down)
        cache.length = end
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return LeanOutput(linear(F.rms_norm(x, (self.dim,), self.norm, self.eps), self.head))

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sign-folded sin for every position, (B, T, 1, head_dim), as transformers computes them (in fp32).

        sin's first half is negated so that rotate_half(x) * sin == x.roll(head_dim / 2) * this sin.
        """
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, hd/2)
        cos, sin = freqs.cos(), freqs.sin()
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)
        return cos[:, :, None].to(self.embed.dtype), sin[:, :, None].to(self.embed.dtype)


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


def left_padding(mask: torch.Tensor) -> list[int] | None:
    """Each row's first real column when every row of `mask` (B, L) is zeros then ones (basecli's left padding), else None."""
    first = mask.argmax(-1)
    if not bool((mask.sum(-1) == mask.shape[1] - first).all()):
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


def check_supported(cfg: dict) -> None:
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    reasons = [
        (cfg.get("model_type") != "llama", f"model_type {cfg.get('model_type')!r}"),
        (cfg.get("attention_bias") or cfg.get("mlp_bias"), "biases"),
        (cfg.get("hidden_act", "silu") != "silu", f"activation {cfg.get('hidden_act')!r}"),
        (rope.get("rope_type", rope.get("type", "default")) != "default", "rope scaling"),
    ]
    found = [why for bad, why in reasons if bad]
    if found:
        raise Unsupported(", ".join(found))


def load(folder: Path, dtype, device, *, populate: bool = True, convert=None) -> LeanLlama:
    """The model in `folder` (config.json + safetensors), or Unsupported.

    populate=False when the weights are about to be replaced (BASECLI_QUANTIZE): their pages then
    come in as each matrix is read and go right after, so the fp32 file is never resident whole.
    `convert(matrix, role)` ("layer" or "head") replaces each matrix as it is read.
    """
    cfg = json.loads((folder / "config.json").read_text())
    check_supported(cfg)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise Unsupported("no safetensors weights")
    return LeanLlama(cfg, Weights(files, dtype, device, populate=populate), dtype, device, convert).eval()


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
