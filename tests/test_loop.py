"""The decode loop against transformers' own generate and a direct forward pass."""

from __future__ import annotations


import pytest
import torch

from basecli.config import SamplingParams
from basecli.engine.loop import TextStream, cache_keyword, generate
from conftest import stream_rows

PROMPTS = ["The quick brown fox", "Hello world! 안녕", "def add(a, b):\n"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_transformers_generate(tiny_backend, reference, prompt):
    b = tiny_backend
    ids = b.encode(prompt)
    (events,) = stream_rows(b, [prompt], [SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)])
    want = reference(b.folder).generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert [e.token_id for e in events] == want[0, len(ids):].tolist()


def test_batched_left_padded_greedy_equals_single_runs(tiny_backend):
    params = [SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)] * len(PROMPTS)
    batched = stream_rows(tiny_backend, PROMPTS, params)
    for prompt, rows in zip(PROMPTS, batched):
        (single,) = stream_rows(tiny_backend, [prompt], params[:1])
        assert [e.token_id for e in rows] == [e.token_id for e in single]


def test_logprobs_equal_a_direct_forward_pass(tiny_backend, reference):
    b = tiny_backend
    prompt = PROMPTS[0]
    (events,) = stream_rows(b, [prompt], [SamplingParams(max_tokens=10, temperature=1.0, seed=3, ignore_eos=True)], alternatives=3)
    ids = b.encode(prompt) + [e.token_id for e in events]
    with torch.no_grad():
        logp = reference(b.folder)(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    n = len(b.encode(prompt))
    for i, ev in enumerate(events):
        expected = logp[n - 1 + i]
        assert ev.logprob == pytest.approx(expected[ev.token_id].item(), abs=1e-4)
        top = torch.topk(expected, 3)
        assert [a for a, _ in ev.alternatives] == top.indices.tolist()
        assert [lp for _, lp in ev.alternatives] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_seed_reproducible_and_rows_independent_of_batch(tiny_backend):
    p = SamplingParams(max_tokens=15, temperature=1.0, seed=7, ignore_eos=True)
    (a,) = stream_rows(tiny_backend, [PROMPTS[0]], [p])
    (b,) = stream_rows(tiny_backend, [PROMPTS[0]], [p])
    assert [e.token_id for e in a] == [e.token_id for e in b]
    # the same row inside a batch of differently seeded rows draws the same tokens
    batch = stream_rows(tiny_backend, [PROMPTS[1], PROMPTS[0]], [p.with_(seed=99), p])
    assert [e.token_id for e in batch[1]] == [e.token_id for e in a]
    other = stream_rows(tiny_backend, [PROMPTS[0]] * 4, [p.with_(seed=s) for s in range(4)])
    assert len({tuple(e.token_id for e in r) for r in other}) > 1, "different seeds should give different samples"


def test_top_k_1_equals_greedy(tiny_backend):
    (g,) = stream_rows(tiny_backend, [PROMPTS[2]], [SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)])
    (k,) = stream_rows(tiny_backend, [PROMPTS[2]], [SamplingParams(max_tokens=12, temperature=1.5, top_k=1, seed=5, ignore_eos=True)])
    assert [e.token_id for e in g] == [e.token_id for e in k]


def test_max_tokens_and_finish_reasons(tiny_backend):
    (rows,) = stream_rows(tiny_backend, [PROMPTS[0]], [SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)])
    assert len(rows) == 5 and rows[-1].finish_reason == "length"
    assert all(e.finish_reason is None for e in rows[:-1])


def test_eos_ends_a_row_unless_ignored(tiny_backend):
    eos = min(tiny_backend.tokenizer.eos_ids)
    # a huge repetition penalty on everything but EOS is hard to arrange; instead force EOS with min_p on a model
    # whose EOS is likely: check the definition on the loop directly with a fake model that always prefers EOS.
    model = _FixedModel(tiny_backend.model, prefer=eos)
    events = list(generate(model, tiny_backend.tokenizer, [[5, 6]], [SamplingParams(max_tokens=8, temperature=0)]))
    assert len(events) == 1 and events[0].finish_reason == "eos" and events[0].text == ""
    events = list(generate(model, tiny_backend.tokenizer, [[5, 6]], [SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)]))
    assert len(events) == 8


class _FixedModel(torch.nn.Module):
    """Wraps a model but pushes one token to the top, to test what the loop does with it."""

    def __init__(self, inner, prefer: int):
        super().__init__()
        self.inner, self.prefer = inner, prefer
        self.config = inner.config
        if hasattr(inner, "new_cache"):  # the lean engine brings its own KV cache
            self.new_cache = inner.new_cache

    @property
    def device(self):
        return self.inner.device

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kw):
        if "past_key_values" in kw:  # the loop cannot see through **kw: pass the cache by the name the inner model takes
            kw[cache_keyword(self.inner)] = kw.pop("past_key_values")
        out = self.inner(**kw)
        out.logits[..., self.prefer] = 1e4
        return out


# --- text streaming: split characters and stop strings ------------------------------------------------


def test_utf8_split_characters_are_never_printed_broken():
    s = TextStream()
    pieces = "안녕 😀".encode()
    out = [s.push(pieces[i : i + 1])[0] for i in range(len(pieces))] + [s.flush()]
    assert "\ufffd" not in "".join(out)
    assert "".join(out) == "안녕 😀"
    assert all(o == "" or len(o.encode()) > 1 or o == " " for o in out)


@pytest.mark.parametrize(
    "tokens,stops,printed,stopped",
    [
        (["Hello", " wor", "ld"], ["world"], "Hello ", True),  # stop spans two tokens
        (["a\n", "\nb"], ["\n\n"], "a", True),
        (["ab", "c"], ["abd"], "abc", False),  # a prefix that does not complete is released
        (["x", "STO", "P", "y"], ["STOP", "END"], "x", True),
        (["no", " stop"], [], "no stop", False),
    ],
)
def test_stop_strings_across_token_boundaries(tokens, stops, printed, stopped):
    s = TextStream(stops)
    out, hit = "", False
    for t in tokens:
        piece, hit = s.push(t.encode())
        out += piece
        if hit:
            break
    if not hit:
        out += s.flush()
    assert out == printed and hit == stopped


def test_stop_string_ends_generation(tiny_backend):
    (free,) = stream_rows(tiny_backend, [PROMPTS[0]], [SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)])
    text = "".join(e.text for e in free)
    stop = text[5:8]
    (rows,) = stream_rows(tiny_backend, [PROMPTS[0]], [SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, stop=(stop,))])
    assert rows[-1].finish_reason == "stop"
    assert "".join(e.text for e in rows) == text[: text.index(stop)]
