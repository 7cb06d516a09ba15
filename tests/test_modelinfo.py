"""Parameter counts against the tensors in the weights file, with tied weights counted once."""

from __future__ import annotations

import json

import pytest

from basecli.weights.modelinfo import component, describe, memory_bytes, parameter_counts
from conftest import invoke


def tensor_sizes(folder) -> dict[str, int]:
    """Every tensor in the safetensors file (save_pretrained writes a tied tensor once) and its element count."""
    from math import prod

    from safetensors import safe_open

    out = {}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            out[name] = prod(f.get_slice(name).get_shape())
    return out


def test_counts_equal_the_tensors_in_the_file(tiny_backend, reference):
    b = tiny_backend
    sizes = tensor_sizes(b.folder)
    counts = parameter_counts(b.model)
    tied = b.model.config.tie_word_embeddings
    assert counts["total"] == sum(sizes.values()) == reference(b.folder).num_parameters()
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
    head = b.model.get_output_embeddings().weight.numel()
    if tied:
        assert counts["output head"] == 0  # the head is the embedding matrix, counted under embeddings
        assert not any("lm_head" in k for k in sizes)
    else:
        assert counts["output head"] == head == sizes["lm_head.weight"]


@pytest.mark.parametrize("name,part", [
    ("model.layers.0.self_attn.q_proj.weight", "attention"),
    ("model.layers.0.post_attention_layernorm.weight", "norms"),
    ("model.layers.3.mlp.down_proj.weight", "MLP"),
    ("model.embed_tokens.weight", "embeddings"),
    ("transformer.wpe.weight", "embeddings"),
    ("transformer.h.1.ln_2.bias", "norms"),
    ("transformer.h.1.attn.c_proj.weight", "attention"),
    ("transformer.ln_f.weight", "norms"),
    ("lm_head.weight", "output head"),
])
def test_components_by_name(name, part):
    assert component(name) == part


def test_memory_equals_transformers_footprint(tiny_backend, reference):
    """The weights' bytes as transformers counts them; buffers (rotary tables) are each engine's own."""
    buffers = sum(b.numel() * b.element_size() for b in tiny_backend.model.buffers())
    assert memory_bytes(tiny_backend.model) - buffers == reference(tiny_backend.folder).get_memory_footprint(return_buffers=False)


def test_cli_json_describes_the_model(tiny_dirs, tiny_backends):
    code, out, err = invoke("info", "-m", str(tiny_dirs["llama"]), "--json", "--device", "cpu", "--dtype", "float32")
    assert code == 0, err
    d = json.loads(out)
    cfg = tiny_backends["llama"].model.config
    a = d["architecture"]
    assert (a["layers"], a["attention_heads"], a["key_value_heads"], a["hidden_size"], a["context_length"], a["vocab_size"]) == (
        cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size, cfg.max_position_embeddings, cfg.vocab_size)
    from basecli.weights.models import sha256_file

    assert d["source"]["files"] == {"model.safetensors": sha256_file(tiny_dirs["llama"] / "model.safetensors")}
    assert d["runtime"]["dtype"] == "float32"
    assert d["code"]["source_bytes"] == len(open(d["code"]["source_file"], "rb").read())
    code, out, _ = invoke("info", "-m", str(tiny_dirs["llama"]), "--dtype", "bfloat16")
    assert code == 0 and "dtype: bfloat16" in out and f"total: {d['parameters']['total']:,}" in out


@pytest.mark.slow
def test_the_embedded_model_has_134_515_008_parameters(real_model):
    d = describe(real_model)
    assert d["parameters"]["total"] == 134_515_008 == sum(tensor_sizes(real_model.folder).values())
    assert d["source"]["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert d["source"]["licence"].startswith("Apache-2.0")
