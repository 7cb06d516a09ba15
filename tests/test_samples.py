"""The divergence tree, distinct counts, --best ordering and chunk splitting, on hand-made data."""

from __future__ import annotations

import pytest

from basecli.analyses.samples import best, distinct, diversity, first_divergence, prefix_tree
from basecli.backends.batching import chunks

# (sequences, expected tree as (tokens, samples, ends, children)); children are ordered by
# count, then the model's probability (all logprobs are 0 here, so then by token id).
TREES = [
    pytest.param([[1, 2, 3]], ((1, 2, 3), (0,), (0,), ()), id="one sample is one run"),
    pytest.param([[1, 2], [1, 2]], ((1, 2), (0, 1), (0, 1), ()), id="identical samples"),
    pytest.param(
        [[1, 2, 3], [1, 2, 4], [1, 5]],
        ((1,), (0, 1, 2), (), (
            ((2,), (0, 1), (), (((3,), (0,), (0,), ()), ((4,), (1,), (1,), ()))),
            ((5,), (2,), (2,), ()),
        )),
        id="shared prefix then two forks",
    ),
    pytest.param(
        [[7, 8], [9, 8], [7, 8, 1]],
        ((), (0, 1, 2), (), (
            ((7, 8), (0, 2), (0,), (((1,), (2,), (2,), ()),)),
            ((9, 8), (1,), (1,), ()),
        )),
        id="split at the first token; one sample is a prefix of another",
    ),
    pytest.param(
        [[3], [2], [1], [2]],
        ((), (0, 1, 2, 3), (), (((2,), (1, 3), (1, 3), ()), ((1,), (2,), (2,), ()), ((3,), (0,), (0,), ()))),
        id="most travelled first, then token id on equal probability",
    ),
]


@pytest.mark.parametrize("seqs, want", TREES)
def test_prefix_tree(seqs, want):
    assert prefix_tree(seqs).shape() == want


def test_tree_orders_equal_counts_by_probability_and_keeps_it():
    import math

    tree = prefix_tree([[1, 5], [2, 6], [3, 7]], [[math.log(0.1), 0.0], [math.log(0.6), 0.0], [math.log(0.3), 0.0]])
    assert [c.tokens[0] for c in tree.children] == [2, 3, 1]
    assert [round(c.prob, 6) for c in tree.children] == [0.6, 0.3, 0.1]


def test_tree_counts_add_up():
    seqs = [[1, 2, 3], [1, 2, 4], [1, 5], [6], [1, 2, 3, 9]]
    tree = prefix_tree(seqs)

    def check(node):
        assert node.count == len(node.ends) + sum(c.count for c in node.children)
        for c in node.children:
            check(c)

    check(tree)


def test_tree_rejects_mismatched_logprobs():
    with pytest.raises(ValueError):
        prefix_tree([[1, 2]], [[0.0]])


@pytest.mark.parametrize("seqs, want", [
    ([[1, 2], [1, 2]], None),
    ([[1, 2], [1, 3]], 1),
    ([[1], [2]], 0),
    ([[1, 2], [1, 2, 3]], 2),
])
def test_first_divergence(seqs, want):
    assert first_divergence(seqs) == want


def test_distinct_and_diversity():
    assert distinct(["a", "b", "a"]) == 2
    assert distinct([[1, 2], [1, 2]]) == 1
    d = diversity(["x", "y"], [[1.0, 2.0], [3.0]], [[-1.0], [-3.0]])
    assert (d.samples, d.distinct, d.mean_entropy, d.mean_logprob) == (2, 2, 2.0, -2.0)


@pytest.mark.parametrize("scores, k, want", [
    ([-1.0, -0.5, -2.0], 2, [1, 0]),
    ([-1.0, -1.0, -0.1], 3, [2, 0, 1]),  # ties keep the lower index first
    ([None, -3.0, -1.0], 3, [2, 1, 0]),  # a sample with no tokens ranks last
])
def test_best_ordering(scores, k, want):
    assert best(scores, k) == want


@pytest.mark.parametrize("n, size", [(1, 1), (5, 2), (16, 16), (17, 16), (100, 7), (3, 100)])
def test_chunks_cover_every_row_once_within_size(n, size):
    parts = chunks(n, size)
    assert [i for p in parts for i in p] == list(range(n))
    assert all(1 <= len(p) <= size for p in parts)
    assert len(parts) == -(-n // size)  # no more batches than needed
