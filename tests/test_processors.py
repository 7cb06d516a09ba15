"""Each sampling control against its definition (and transformers' processors where they agree)."""

from __future__ import annotations

import pytest
import torch

from basecli.config import SamplingParams
from basecli.engine import processors as P
from basecli.errors import UsageError


def rows(*params):
    return P.RowParams(list(params), "cpu")


def kept(logits):
    return torch.isfinite(logits)


def test_top_p_keeps_the_smallest_set_with_mass_at_least_p():
    probs = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    logits = probs.log()
    for p, n in [(0.5, 1), (0.51, 2), (0.7, 2), (0.71, 3), (0.85, 3), (0.86, 4), (1.0, 5)]:
        out = P.top_p(logits, torch.tensor([p]))
        assert kept(out).sum().item() == n, p
        assert kept(out)[0, :n].all()  # the most likely ones


def test_top_p_per_row_and_unsorted_vocab():
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.3, 0.1, 0.6]])
    out = P.top_p(probs.log(), torch.tensor([0.6, 0.8]))
    assert kept(out).tolist() == [[False, True, False], [True, False, True]]


def sorted_top_p(logits, p):
    """The definition: sort the whole row, drop every token whose more likely tokens already hold mass p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop_sorted = probs.cumsum(-1) - probs >= p[:, None]
    drop_sorted[:, 0] = False
    return logits.masked_fill(torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted), -float("inf"))


def test_top_p_on_a_large_vocabulary_equals_sorting_everything():
    """Peaked rows are resolved among the top candidates, a flat row needs the full sort; both equal the definition."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5000, generator=g) * torch.tensor([[8.0], [4.0], [0.1], [2.0]])
    for p in (0.3, 0.9, 0.99):
        ps = torch.tensor([p, p, p, 1.0])
        want = sorted_top_p(logits, ps)
        got = kept(P.top_p(logits, ps))
        assert torch.equal(got[:3], kept(want[:3])) and got[3].all()  # p = 1 keeps every token
        assert torch.equal(kept(P.top_p(logits[:2], ps[:2])), kept(want[:2]))  # resolved without the fallback
    assert kept(P.top_p(logits[:1], torch.tensor([0.9]))).sum() < P.TOP_P_CANDIDATES


def test_top_k_per_row_zero_means_off():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [4.0, 3.0, 2.0, 1.0]])
    out = P.top_k(logits, torch.tensor([2, 0]))
    assert kept(out).tolist() == [[False, True, True, False], [True, True, True, True]]


def test_min_p_keeps_tokens_above_fraction_of_top():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = P.min_p(probs.log(), torch.tensor([0.3]))  # threshold 0.15
    assert kept(out).tolist() == [[True, True, True, False]]


def test_temperature_divides_logits_per_row():
    logits = torch.tensor([[2.0, 1.0], [2.0, 1.0]])
    out = P.temperature(logits, torch.tensor([2.0, 0.5]))
    assert out.tolist() == [[1.0, 0.5], [4.0, 2.0]]


def test_repetition_penalty_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    torch.manual_seed(0)
    logits = torch.randn(1, 10)
    input_ids = torch.tensor([[1, 3, 3, 7]])
    want = RepetitionPenaltyLogitsProcessor(1.3)(input_ids, logits.clone())
    seen = torch.zeros(1, 10, dtype=torch.bool)
    seen[0, [1, 3, 7]] = True
    got = P.repetition_penalty(logits, seen, torch.tensor([1.3]))
    assert torch.allclose(got, want)


def test_pipeline_equals_transformers_warpers_in_order():
    from transformers import LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(1)
    logits = torch.randn(1, 50) * 3
    hf = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(20), TopPLogitsWarper(0.9), MinPLogitsWarper(0.05)])
    want = hf(torch.zeros(1, 1, dtype=torch.long), logits.clone())
    got = P.process(logits, rows(SamplingParams(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05)), None)
    assert kept(got).tolist() == kept(want).tolist()
    assert torch.allclose(got[kept(got)], want[kept(want)])


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(3)
    logits = probs.log()[None]
    for _ in range(4000):
        counts[P.sample(logits, torch.tensor([False]), [g])[0]] += 1
    assert torch.allclose(counts / counts.sum(), probs, atol=0.03)


def test_greedy_rows_take_argmax():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.3, 0.5]])
    g = [torch.Generator().manual_seed(i) for i in range(2)]
    assert P.sample(logits, torch.tensor([True, True]), g).tolist() == [1, 2]


@pytest.mark.parametrize(
    "kw",
    [dict(temperature=-1), dict(top_k=-1), dict(top_p=0), dict(top_p=1.5), dict(min_p=1), dict(repetition_penalty=0),
     dict(max_tokens=0), dict(stop=("",))],
)
def test_invalid_params_are_usage_errors(kw):
    with pytest.raises(UsageError):
        SamplingParams(**kw)
