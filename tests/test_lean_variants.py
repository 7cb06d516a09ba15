"""The Llama variants the lean engine took from transformers: Qwen2 (q/k/v biases), Llama 3's rope scaling
(rope_type "llama3") and Llama with attention biases, each on a tiny random model against transformers'
own model code: logits, greedy tokens through the loop, shared-prefix resample, and q8 weights."""

from __future__ import annotations

import pytest
import torch

from basecli.backends.local import LocalBackend
from basecli.config import SamplingParams
from basecli.engine import lean
from tests.conftest import build_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["The quick brown fox", "def add(a, b):\n"]
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256, bos_token_id=0, eos_token_id=0)
# llama3 with a short original context, so the tiny model's frequencies fall in all three bands (kept, smoothed, divided)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
          "rope_theta": 10000.0}


def build(kind: str, path):
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    path.mkdir(parents=True)
    vocab = Tokenizer.from_file(str(build_tokenizer(path))).get_vocab_size()
    torch.manual_seed(0)
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, **SHAPE))
    elif kind == "llama3":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, rope_parameters=LLAMA3, **SHAPE))
    else:  # llama with biases on q, k, v and o
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, attention_bias=True, **SHAPE))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):  # transformers starts biases at zero: make them count
                p.normal_(0, 0.5)
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="module", params=["qwen2", "llama3", "llama-bias"])
def pair(request, tmp_path_factory):
    d = build(request.param, tmp_path_factory.mktemp(request.param) / "model")
    plain = LocalBackend(str(d), device="cpu", dtype="float32", engine="transformers")
    fast = LocalBackend(str(d), device="cpu", dtype="float32")
    assert type(fast.model).__name__ == "LeanLlama" and fast.engine == "lean"
    return d, plain, fast


def tokens(backend, prompts, params):
    out = {}
    for ev in backend.stream(prompts, params):
        out.setdefault(ev.row, []).append(ev.token_id)
    return [out[i] for i in range(len(prompts))]


def test_the_variant_is_what_it_claims(pair):
    _, plain, fast = pair
    rope = lean.rope_parameters(vars(fast.model.config))
    if rope.get("rope_type") == "llama3":
        # the frequencies are the scaled ones transformers uses, and they differ from the default ones
        torch.testing.assert_close(fast.model.inv_freq, plain.model.model.rotary_emb.inv_freq, atol=0, rtol=0)
        assert not torch.equal(fast.model.inv_freq, lean.rope_frequencies({"rope_theta": 10000.0}, fast.model.head_dim))
    else:
        assert fast.model.layers[0].qkv_bias is not None


def test_logits_at_long_positions_equal_transformers(pair):
    _, plain, fast = pair
    ids = torch.randint(1, 300, (2, 200), generator=torch.Generator().manual_seed(0))  # past the original 64 positions
    with torch.no_grad():
        torch.testing.assert_close(fast.model(ids).logits, plain.model(ids).logits, atol=2e-5, rtol=1e-4)


def test_greedy_and_sampled_rows_equal_transformers(pair):
    _, plain, fast = pair
    params = [SamplingParams(max_tokens=n, temperature=t, seed=s, ignore_eos=True) for n, t, s in [(12, 0, None), (20, 1.0, 3)]]
    assert tokens(fast, PROMPTS, params) == tokens(plain, PROMPTS, params)


def test_shared_prefix_resample_equals_separate_runs(pair):
    _, _, fast = pair
    params = [SamplingParams(max_tokens=10, temperature=1.0, seed=s, ignore_eos=True) for s in (1, 2, 3)]
    assert tokens(fast, [PROMPTS[0]] * 3, params) == [tokens(fast, [PROMPTS[0]], [p])[0] for p in params]


def test_q8_keeps_the_greedy_tokens(pair):
    d, plain, _ = pair
    q8 = LocalBackend(str(d), device="cpu", dtype="float32", quantize="q8")
    assert q8.model.layers[0].qkv.format == "Q8_0"
    assert q8.model.native is not None  # the one-call C step, biases and scaled rope included
    p = [SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)]
    assert tokens(q8, PROMPTS[:1], p) == tokens(plain, PROMPTS[:1], p)


def test_other_rope_scalings_and_mlp_biases_stay_on_transformers():
    for cfg, why in [({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling"), ({"mlp_bias": True}, "MLP biases"),
                     ({"model_type": "qwen2", "use_sliding_window": True}, "sliding-window")]:
        with pytest.raises(lean.Unsupported, match=why):
            lean.check_supported({"model_type": "llama", **cfg})
