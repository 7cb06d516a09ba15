"""Figures over sets of samples: the divergence (prefix) tree, distinct counts, diversity.

Pure Python over token ids and floats: no torch, no terminal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class Branch:
    """A run of tokens that the samples in `samples` all share, then the ways they part.

    The root has no tokens and holds every sample. A child's first token is the one the
    samples competed on at the branch point; `logprobs[0]` is the model's log-probability
    of it there (all siblings are scored under the same distribution, so they compare).
    """

    tokens: list[int]
    logprobs: list[float]  # one per token: mean over the samples that took it (equal up to float noise)
    samples: list[int]  # indices of the samples that pass through this run
    children: list["Branch"] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # samples whose sequence ends with this run

    @property
    def count(self) -> int:
        return len(self.samples)

    @property
    def prob(self) -> float | None:
        """The model's probability of this branch's first (competing) token."""
        return math.exp(self.logprobs[0]) if self.logprobs else None

    def shape(self):
        """(tokens, samples, ends, children) as nested tuples: a compact form for tests and debugging."""
        return (tuple(self.tokens), tuple(self.samples), tuple(self.ends), tuple(c.shape() for c in self.children))


def prefix_tree(seqs: Sequence[Sequence[int]], logprobs: Sequence[Sequence[float]] | None = None) -> Branch:
    """Merge token sequences into a radix tree: each node is a maximal run shared by its samples.

    Children are ordered by how many samples took them, then by the model's probability,
    then by token id, so the most travelled path comes first.
    """
    if logprobs is None:
        logprobs = [[0.0] * len(s) for s in seqs]
    if len(logprobs) != len(seqs) or any(len(a) != len(b) for a, b in zip(seqs, logprobs)):
        raise ValueError("prefix_tree: every sequence needs one logprob per token")
    root = Branch([], [], list(range(len(seqs))))
    _grow(root, seqs, logprobs, 0)
    return root


def _grow(node: Branch, seqs, logprobs, depth: int) -> None:
    members = node.samples
    while True:
        ended = [i for i in members if len(seqs[i]) == depth]
        going = [i for i in members if len(seqs[i]) > depth]
        groups: dict[int, list[int]] = {}
        for i in going:
            groups.setdefault(seqs[i][depth], []).append(i)
        if not ended and len(groups) == 1:  # everyone agrees on the next token: extend the run
            (token,) = groups
            node.tokens.append(token)
            node.logprobs.append(_mean(logprobs[i][depth] for i in going))
            depth += 1
            continue
        node.ends = ended
        break
    children = []
    for token, group in groups.items():
        child = Branch([token], [_mean(logprobs[i][depth] for i in group)], group)
        _grow(child, seqs, logprobs, depth + 1)
        children.append(child)
    children.sort(key=lambda c: (-c.count, -c.logprobs[0], c.tokens[0]))
    node.children = children


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def first_divergence(seqs: Sequence[Sequence[int]]) -> int | None:
    """How many leading tokens all sequences share; None when they are all identical."""
    if len(set(map(tuple, seqs))) <= 1:
        return None
    n = 0
    while all(len(s) > n for s in seqs) and len({s[n] for s in seqs}) == 1:
        n += 1
    return n


def distinct(items: Sequence) -> int:
    """How many different values (continuations as text, or token tuples) there are."""
    return len({tuple(x) if isinstance(x, list) else x for x in items})


def mean(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


@dataclass
class Diversity:
    """How varied a set of samples is: what a sweep cell and a resample summary report."""

    samples: int
    distinct: int
    mean_entropy: float | None  # nats, mean over every sampled step of every sample
    mean_logprob: float | None  # mean over every generated token

    def as_dict(self) -> dict:
        r = lambda x: round(x, 4) if x is not None else None  # noqa: E731
        return {"samples": self.samples, "distinct": self.distinct, "mean_entropy": r(self.mean_entropy),
                "mean_logprob": r(self.mean_logprob)}


def diversity(texts: Sequence[str], entropies: Sequence[Sequence[float]] = (), logprobs: Sequence[Sequence[float]] = ()) -> Diversity:
    return Diversity(
        samples=len(texts),
        distinct=distinct(texts),
        mean_entropy=mean([h for row in entropies for h in row]),
        mean_logprob=mean([lp for row in logprobs for lp in row]),
    )


def best(scores: Sequence[float | None], k: int) -> list[int]:
    """Indices of the k highest scores, best first; ties keep the lower index first; None scores last."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i] is None, -(scores[i] or 0.0), i))
    return order[:k]
