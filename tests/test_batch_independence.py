"""A row's result does not depend on its batch: prompts of other lengths decoded together (left padded) give
each row, to the bit, what its prompt gives alone, on basecli's 4/8-bit path.

Each row's activations are quantised on their own scales, the matmuls add a row's products in one order
whatever the batch, and a decode step reads a row's keys from its first real one. What used to differ was
the prompt's prefill: one attention call with a padding mask split a row's sums at other places than
the same prompt alone, and where such a difference moved an activation across an int8 rounding edge the
log-probs of a padded row differed by up to 0.15 nats on the embedded model (and greedy tokens could
part). engine/attention.py now attends each padded row over its own tokens, the call its prompt makes alone.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from basecli.backends.local import LocalBackend
from basecli.config import SamplingParams
from basecli.engine import attention

PROMPTS = ["The quick brown fox", "Hello world! 안녕", "def add(a, b):\n", "Once upon a time"]


def events(backend, prompts: list[str], n: int) -> list[list[tuple]]:
    """Per row: (token, its log-prob, the top 5 alternatives with theirs) of each greedy step."""
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)] * len(prompts)
    rows = [[] for _ in prompts]
    for e in backend.stream(prompts, params, alternatives=5):
        rows[e.row].append((e.token_id, e.logprob, tuple(e.alternatives)))
    return rows


def assert_rows_are_alone(backend, n: int) -> None:
    lengths = {len(backend.encode(p)) for p in PROMPTS}
    assert len(lengths) > 1, "the prompts must pad"
    batched = events(backend, PROMPTS, n)
    for prompt, row in zip(PROMPTS, batched):
        alone = events(backend, [prompt], n)[0]
        assert row == alone, f"{prompt!r} in a batch of {len(PROMPTS)} differs from alone"


def test_padded_attention_gives_each_row_its_prompt_alone():
    """engine/attention.py's attention of a left-padded prefill: row b is, to the bit, the causal attention of its own
    tokens alone (the single masked call it replaces was ~1e-7 off, which 8-bit rounding sometimes turns into
    a different activation; in fp32 torch's matmuls also block by the batch, so only this part is exact there)."""
    torch.manual_seed(0)
    heads, kv, hd, lengths = 4, 2, 64, [5, 9, 20, 1]
    width = max(lengths)
    q, k, v = torch.randn(len(lengths), heads, width, hd), torch.randn(len(lengths), kv, width, hd), torch.randn(len(lengths), kv, width, hd)
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    starts = attention.left_padding(mask)
    assert starts == [width - n for n in lengths]
    out = attention.rows_attention(q, k, v, starts, gqa=True)
    for b, first in enumerate(starts):
        alone = F.scaled_dot_product_attention(q[b:b + 1, :, first:].contiguous(), k[b:b + 1, :, first:].contiguous(),
                                               v[b:b + 1, :, first:].contiguous(), is_causal=True, enable_gqa=True)[0]
        assert torch.equal(out[b, :, first:], alone) and not out[b, :, :first].any()
    assert attention.left_padding(torch.tensor([[1, 0, 1]])) is None  # a hole: not basecli's padding, the masked call


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request, monkeypatch):
    """The backend's threads (torch's and the kernels'), set as a user sets them. At two threads torch's
    logsumexp over (B, vocab) once gave a row other bits than over its row alone (2e-6 in log-prob): a lone
    row's reduction is split between the threads, a batch's rows are not. engine/loop.py's draw now takes
    log_softmax, which works a row at a time."""
    before = torch.get_num_threads()
    monkeypatch.setenv("BASECLI_THREADS", str(request.param))  # what a backend opened in the test takes
    torch.set_num_threads(request.param)  # and what torch has without one
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("mode", ["q4", "q8"])
def test_a_padded_row_is_its_prompt_alone_to_the_bit(tiny_dirs, mode, threads):
    backend = LocalBackend(str(tiny_dirs["llama"]), device="cpu", dtype="float32", engine="lean", quantize=mode)
    assert_rows_are_alone(backend, 10)


@pytest.mark.slow
def test_a_padded_row_is_its_prompt_alone_on_the_embedded_model(real_model, threads):
    assert_rows_are_alone(LocalBackend(None, device="cpu", quantize="q4"), 12)


def test_a_rows_log_probs_and_entropy_are_the_same_bits_in_any_batch(threads):
    """The draw's log-probs, alternatives and entropy of a row against the same row drawn alone, on logits where
    torch's logsumexp over the batch differs from over the row alone at two threads."""
    from basecli.engine.loop import draw, make_generator
    from basecli.engine.processors import RowParams

    logits = torch.randn(4, 49152, generator=torch.Generator().manual_seed(4)) * 3  # logsumexp parts here at 2 threads
    params = [SamplingParams(temperature=t) for t in (0.0, 0.8, 1.0, 1.3)]

    def drawn(rows):
        cfg = RowParams([params[i] for i in rows], "cpu")
        return draw(logits[rows], cfg, None, [make_generator(7 + i, "cpu") for i in rows], alternatives=5, entropy=True)[1]

    batch = drawn([0, 1, 2, 3])
    for i in range(4):
        alone = drawn([i])
        got = (batch.tokens[i], batch.logprobs[i], batch.alternatives[i], batch.entropy[i])
        assert got == (alone.tokens[0], alone.logprobs[0], alone.alternatives[0], alone.entropy[0]), f"row {i}"
    # and the log-probs are log_softmax's: what the definition gives, to fp32's last bits
    want = torch.log_softmax(logits.double(), -1)
    assert max(abs(lp - float(want[i, t])) for i, (t, lp) in enumerate(zip(batch.tokens, batch.logprobs))) < 1e-5
