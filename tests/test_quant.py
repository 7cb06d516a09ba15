"""Opt-in fp16 and int8 weights (engine/quant.py, BASECLI_QUANTIZE) against the plain fp32 lean engine.

fp16 weights compute in fp32 from weights rounded to fp16: the same greedy tokens, log-probs
within 2e-3 nats. int8 rounds weights and inputs to 8 bits; on the tiny Llama (32 dimensions,
a head scaled 8x: a harsh case) the top token's log-prob moves by up to 0.75 nats, 0.1 on
average under the model's distribution. The embedded model's cost, in bits per byte, is in bench/README.md.
"""

from __future__ import annotations

import pytest
import torch

from basecli.backends.local import LocalBackend
from basecli.config import SamplingParams
from basecli.engine import quant
from basecli.errors import UsageError
from conftest import invoke, stream_rows

PROMPTS = ["The quick brown fox", "Hello world! 안녕", "def add(a, b):\n"]

pytestmark = [pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines, reason="fbgemm is x86 only"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def backends(tiny_dirs):
    d = str(tiny_dirs["llama"])
    return {q: LocalBackend(d, device="cpu", dtype="float32", engine="lean", quantize=q) for q in (None, "fp16", "int8")}


def test_every_matrix_but_the_embedding_is_packed(backends):
    m = backends["int8"].model
    assert m.quantized == "int8" and isinstance(m.head, quant.Packed) and isinstance(m.embed, torch.Tensor)
    assert all(isinstance(getattr(layer, n), quant.Packed) for layer in m.layers for n in ("qkv", "o", "gate_up", "down"))
    assert m.head.numel() * m.head.element_size() == m.head.shape[0] * m.head.shape[1]  # one byte per weight


def test_a_tied_head_is_still_counted_once(tiny_dirs):
    """The embedding stays for lookups while the head is packed: `info` must not count the tied matrix twice."""
    b = LocalBackend(str(tiny_dirs["llama"]), device="cpu", dtype="float32", engine="lean")
    b.model.head = b.model.embed  # as in SmolLM2 (tie_word_embeddings)
    names = [n for n, _ in b.model.named_parameters()]
    quant.apply(b.model, "int8")
    assert [n for n, _ in b.model.named_parameters()] == names and "lm_head.weight" not in names


@pytest.mark.parametrize("mode, top_tol, mean_tol", [("fp16", 2e-3, 1e-3), ("int8", 0.75, 0.1)])
def test_logprobs_close_to_fp32(backends, mode, top_tol, mean_tol):
    """Next-token log-probabilities at every position of a prompt and the plain engine's greedy continuation:
    the most likely token's within top_tol nats, and |difference| averaged under the fp32 distribution within mean_tol."""
    p = [SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)]
    for prompt in PROMPTS:
        ids = backends[None].encode(prompt) + [e.token_id for e in stream_rows(backends[None], [prompt], p)[0]]
        with torch.inference_mode():
            want = backends[None].model(torch.tensor([ids])).logits.log_softmax(-1)
            got = backends[mode].model(torch.tensor([ids])).logits.log_softmax(-1)
        top = want.argmax(-1, keepdim=True)
        assert float((got.gather(-1, top) - want.gather(-1, top)).abs().max()) < top_tol
        assert float(((got - want).abs() * want.exp()).sum(-1).max()) < mean_tol


def test_fp16_greedy_tokens_equal_fp32(backends):
    p = [SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)]
    for prompt in PROMPTS:
        want = [e.token_id for e in stream_rows(backends[None], [prompt], p)[0]]
        assert [e.token_id for e in stream_rows(backends["fp16"], [prompt], p)[0]] == want


@pytest.mark.parametrize("mode", ["fp16", "int8"])
def test_a_row_does_not_depend_on_its_batch(backends, mode):
    """int8 inputs are quantised row by row, so resample's row i is still complete --seed s+i."""
    b = backends[mode]
    p = SamplingParams(max_tokens=16, temperature=1.0, seed=5, ignore_eos=True)
    (alone,) = stream_rows(b, [PROMPTS[0]], [p])
    batch = stream_rows(b, [PROMPTS[2], PROMPTS[0], PROMPTS[1]], [p.with_(seed=1), p, p.with_(seed=2)])
    assert [e.token_id for e in batch[1]] == [e.token_id for e in alone]
    assert [e.logprob for e in batch[1]] == pytest.approx([e.logprob for e in alone], abs=1e-5)


def test_per_row_quantisation_ignores_the_other_rows():
    torch.manual_seed(0)
    w = torch.randn(48, 32)
    packed = quant.Packed(w, "int8")
    x = torch.randn(3, 32)
    x[1] *= 1000  # one row with huge activations must not coarsen the others' grid
    together = packed(x)
    for i in range(3):
        torch.testing.assert_close(together[i], packed(x[i : i + 1])[0], rtol=1e-6, atol=1e-6)
    # and int8 is close to the fp32 product, row by row, relative to the row's size
    err = (together - x @ w.T).abs().amax(-1) / (x @ w.T).abs().amax(-1)
    assert float(err.max()) < 0.1


@pytest.mark.parametrize("kw, message", [
    (dict(quantize="int4"), "unknown quantisation 'int4'"),
    (dict(quantize="int8", engine="transformers"), "needs basecli.s lean engine"),
    (dict(quantize="int8", dtype="bfloat16", engine="lean"), "needs float32"),
])
def test_bad_settings_are_usage_errors(tiny_dirs, kw, message):
    kw = {"dtype": "float32", "engine": "lean", **kw}
    with pytest.raises(UsageError, match=message):
        LocalBackend(str(tiny_dirs["llama"]), device="cpu", **kw)


def test_environment_variable_reaches_the_cli(tiny_dirs):
    ok = invoke("complete", "Hello", "-n", "3", "-t", "0", "-m", str(tiny_dirs["llama"]),
                     env={"BASECLI_ENGINE": "lean", "BASECLI_QUANTIZE": "int8"})
    assert ok.returncode == 0, ok.stderr
    bad = invoke("complete", "Hello", "-n", "3", "-m", str(tiny_dirs["llama"]), env={"BASECLI_ENGINE": "lean", "BASECLI_QUANTIZE": "int3"})
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "BASECLI_QUANTIZE" in bad.stderr
