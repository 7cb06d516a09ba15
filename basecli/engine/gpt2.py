"""GPT-2's forward pass (gpt2 .. gpt2-xl, distilgpt2) on the lean engine's KV cache and attention.

The same function as transformers' GPT2LMHeadModel, in the shape of nanoGPT's model.py:
token plus learned position embeddings, then per block x += attn(ln_1(x)) and x += mlp(ln_2(x))
with LayerNorms that have biases, q, k and v in one matmul with a bias (c_attn), GELU with the
tanh approximation ("gelu_new"), and the head tied to the token embedding. It answers the same
call as engine/lean.py's LeanLlama, so basecli's loop, shared-prefix resample and score drive it
unchanged, and engine/quant.py and engine/native.py replace its matrices (--quantize).

GPT-2 checkpoints store their matrices as (in, out) (transformers' Conv1D); they are used as
transposed views of the mapped file, so fp32 loading copies nothing.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from basecli.engine.attention import KVCache, attend
from basecli.engine.lean import LeanModel, affine
from basecli.engine.mapped_weights import Unsupported

# activation_function values that are GELU with the tanh approximation, and the exact one
GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}
# layer field -> the checkpoint tensor it is (below transformer.h.{i}.); the matrices come with a .bias
# (named as LeanLlama's, so engine/native.py's decode step reads both; "up" is GPT-2's whole MLP input matrix)
CHECKPOINT_NAMES = {"norm1": "ln_1", "qkv": "attn.c_attn", "o": "attn.c_proj", "norm2": "ln_2", "up": "mlp.c_fc", "down": "mlp.c_proj"}


def check_supported(cfg: dict) -> None:
    act = cfg.get("activation_function", "gelu_new")
    reasons = [
        (act not in GELU, f"activation {act!r}"),
        (cfg.get("add_cross_attention"), "cross-attention"),
        (cfg.get("n_embd", 768) % cfg.get("n_head", 12), "n_embd not a multiple of n_head"),
        # attention scaled otherwise than by 1/sqrt(head_dim): no released GPT-2 does
        (not cfg.get("scale_attn_weights", True) or cfg.get("scale_attn_by_inverse_layer_idx"), "attention scaling"),
    ]
    found = [why for bad, why in reasons if bad]
    if found:
        raise Unsupported(", ".join(found))


class LeanGPT2(LeanModel):
    MATRICES = ("qkv", "o", "up", "down")  # the layer fields engine/quant.py and engine/native.py replace

    def __init__(self, cfg: dict, weights, dtype, device, convert=None):
        super().__init__()
        check_supported(cfg)
        cfg = {"n_positions": 1024, "layer_norm_epsilon": 1e-5, "n_embd": 768, "n_layer": 12, "n_head": 12, **cfg}
        # and the generic names GPT2Config answers too (its attribute_map), which `basecli info` reads
        aliases = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
                   "max_position_embeddings": "n_positions"}
        self.config = SimpleNamespace(**cfg, **{alias: cfg[name] for alias, name in aliases.items()})
        self.dim, self.n_heads, self.n_layers = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
        self.n_kv, self.head_dim = self.n_heads, self.dim // self.n_heads
        self.eps, self.approximate = cfg["layer_norm_epsilon"], GELU[cfg.get("activation_function", "gelu_new")]
        # hub checkpoints name their tensors with or without transformers' "transformer." prefix
        self.root = "transformer." if "transformer.wte.weight" in weights.index else ""
        self.weights = weights
        take = lambda name: weights.read((self.root + name,), dtype, device)  # noqa: E731

        def matrix(name: str):
            """A stored (in, out) matrix as (out, in), or what `convert(matrix, "layer")` makes of it (engine/native.py)."""
            t = take(name).t()
            if convert is None:
                return t
            out = convert(t, "layer")
            weights.release(self.root + name)
            return out

        self.embed, self.positions = take("wte.weight"), take("wpe.weight")
        self.layers = []
        for i in range(self.n_layers):
            p = f"h.{i}."
            self.layers.append(SimpleNamespace(**{
                field: matrix(p + name + ".weight") if field in self.MATRICES else take(p + name + ".weight")
                for field, name in CHECKPOINT_NAMES.items()
            }, **{f"{field}_bias": take(p + name + ".bias") for field, name in CHECKPOINT_NAMES.items()}))
        self.norm, self.norm_bias = take("ln_f.weight"), take("ln_f.bias")
        self.head_tied = "lm_head.weight" not in weights.index or cfg.get("tie_word_embeddings", True)
        self.head = self.embed if self.head_tied else weights.read(("lm_head.weight",), dtype, device)
        if convert is not None:  # a tied head's embedding stays for lookups: its pages come back a row at a time
            self.head = convert(self.head, "head")
            weights.release(*self.source_names("head"))
        self._device = torch.device(device)

    def source_names(self, field: str, layer: int | None = None) -> tuple[str, ...]:
        """The checkpoint tensors a matrix was read from (engine/native.py releases their pages once it is quantised)."""
        if layer is None:
            return (self.root + "wte.weight",) if self.head_tied else ("lm_head.weight",)
        return (f"{self.root}h.{layer}.{CHECKPOINT_NAMES[field]}.weight",)

    def tensors(self):
        """Every weight (plain tensors, not Parameters: nothing here is trained)."""
        yield from (self.embed, self.positions, self.norm, self.norm_bias, self.head)
        for layer in self.layers:
            yield from vars(layer).values()

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """Every weight once, named as in the checkpoint (what torch's `parameters()` gives for transformers' models)."""
        r = self.root
        yield from ((r + "wte.weight", self.embed), (r + "wpe.weight", self.positions))
        for i, layer in enumerate(self.layers):
            for field, name in CHECKPOINT_NAMES.items():
                yield f"{r}h.{i}.{name}.weight", getattr(layer, field)
                yield f"{r}h.{i}.{name}.bias", getattr(layer, field + "_bias")
        yield from ((r + "ln_f.weight", self.norm), (r + "ln_f.bias", self.norm_bias))
        if not self.head_tied:
            yield "lm_head.weight", self.head

    def blocks(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: KVCache, mask, start: int) -> torch.Tensor:
        batch, steps = input_ids.shape
        x = F.embedding(input_ids, self.embed) + F.embedding(position_ids, self.positions)  # (B, T, dim)
        heads, hd, dim = self.n_heads, self.head_dim, (self.dim,)
        for i, layer in enumerate(self.layers):
            h = F.layer_norm(x, dim, layer.norm1, layer.norm1_bias, self.eps)
            q, k, v = affine(h, layer.qkv, layer.qkv_bias).view(batch, steps, 3, heads, hd).unbind(2)  # (B, T, heads, hd) each
            x = x + affine(attend(cache, i, q, k, v, mask, start), layer.o, layer.o_bias)
            h = F.layer_norm(x, dim, layer.norm2, layer.norm2_bias, self.eps)
            x = x + affine(F.gelu(affine(h, layer.up, layer.up_bias), approximate=self.approximate), layer.down, layer.down_bias)
        return x

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), self.norm, self.norm_bias, self.eps)
