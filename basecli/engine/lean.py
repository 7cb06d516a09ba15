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

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from basecli.engine.attention import KVCache, attend, attention_bias
from basecli.engine.mapped_weights import Unsupported, Weights
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


@dataclass
class LeanOutput:
    logits: torch.Tensor  # (B, T, vocab)


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

    def __init__(self, cfg: dict, weights: Weights, dtype, device, convert=None):
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
