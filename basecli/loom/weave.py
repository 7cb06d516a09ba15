"""Generating into a tree: N children of a node in one batch, a continuation, a breadth-first expansion.

All of it goes through `backend.stream` like every command: one shared prompt (the path's text)
for N rows, so the local engine reads the prompt once (and, with its prefix cache, only what is
new since the last generation) and a server gets one request with `n`. Nothing enters the
tree until a generation has finished: an interrupted one leaves the tree as it was.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

from basecli.loom import actions
from basecli.loom.tree import Node, Token, Tree

ALTERNATIVES = 5  # the model's top tokens kept at every generated place (what branching offers)


class Cancelled(Exception):
    """The person stopped a generation; nothing was added."""


class Rows:
    """Per row, the text and tokens of a generation as its events arrive."""

    def __init__(self, n: int, tokenizer):
        self.text = [""] * n
        self.tokens: list[list[Token]] = [[] for _ in range(n)]
        self.finish: list[str | None] = [None] * n
        self.seeds: list[int | None] = [None] * n  # what each row was sampled with (recorded on its node)
        self.tokenizer = tokenizer
        self._names: dict[int, str] = {}

    def add(self, ev) -> None:
        self.text[ev.row] += ev.text
        if ev.finish_reason:
            self.finish[ev.row] = ev.finish_reason
        if ev.finish_reason == "eos":  # the end of the document is not part of the text
            return
        top = [[i, self._name(i), round(lp, 5)] for i, lp in ev.alternatives]
        lp = None if math.isnan(ev.logprob) else round(ev.logprob, 5)  # a server that gives none: unknown, null in JSON
        self.tokens[ev.row].append(Token(ev.token_id, ev.token_text, lp, top))

    def _name(self, token_id: int) -> str:
        if token_id not in self._names:
            self._names[token_id] = self.tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")
        return self._names[token_id]


def row_params(tree: Tree, node_id: int, n: int) -> list:
    """Sampling settings for n rows: the tree's, row i seeded S + i. A fixed seed S is moved on by the
    children the node already has, so weaving twice gives new children that are still reproducible."""
    from basecli.backends.batching import seeded
    from basecli.config import fresh_seed

    base = actions.sampling_params(tree.settings)
    seed = base.seed + len(tree.children[node_id]) if base.seed is not None else fresh_seed()
    return seeded([base] * n, seed)


def generate(backend, tree: Tree, node_id: int, n: int, *, max_tokens: int | None = None,
             on_event: Callable | None = None, cancelled: Callable[[], bool] | None = None) -> Rows:
    """n continuations of the path to `node_id`; raises Cancelled when `cancelled()` turns true."""
    params = row_params(tree, node_id, n)
    if max_tokens is not None:
        params = [p.with_(max_tokens=max_tokens) for p in params]
    rows = Rows(n, backend.tokenizer)
    rows.seeds = [p.seed for p in params]
    events: Iterator = backend.stream([tree.text(node_id)] * n, params, alternatives=ALTERNATIVES,
                                      seeds=[p.seed for p in params], truncate=True)
    try:
        for ev in events:
            rows.add(ev)
            if on_event is not None:
                on_event(ev, rows)
            if cancelled is not None and cancelled():
                raise Cancelled()
    finally:
        close = getattr(events, "close", None)  # a generator: stop the engine (or the request) now
        if close is not None:
            close()
    return rows


def settings_record(tree: Tree, seed: int | None) -> dict:
    return {k: v for k, v in {**tree.settings, "seed": seed}.items() if k != "n"}


def weave(backend, tree: Tree, node_id: int, *, n: int | None = None, **kw) -> list[Node]:
    """Generate n (the tree's setting) children of a node in one batch and add them; the new nodes."""
    n = n or int(tree.settings["n"])
    return add_rows(tree, node_id, generate(backend, tree, node_id, n, **kw), backend.name)


def add_rows(tree: Tree, node_id: int, rows: Rows, model: str) -> list[Node]:
    """Each generated row as a child of `node_id`."""
    tree.model = tree.model or model
    return [actions.add_generated(tree, node_id, rows.text[i], rows.tokens[i], finish=rows.finish[i],
                                  settings=settings_record(tree, rows.seeds[i]), model=model) for i in range(len(rows.text))]


def continue_node(backend, tree: Tree, node_id: int, **kw) -> Node:
    """More text for a node: appended to it when it has no children (nothing would go stale), else a new child."""
    return add_continuation(tree, node_id, generate(backend, tree, node_id, 1, **kw), backend.name)


def add_continuation(tree: Tree, node_id: int, rows: Rows, model: str) -> Node:
    tree.model = tree.model or model
    if not tree.children[node_id] and tree[node_id].parent is not None:
        return actions.extend(tree, node_id, rows.text[0], rows.tokens[0], finish=rows.finish[0])
    return actions.add_generated(tree, node_id, rows.text[0], rows.tokens[0], finish=rows.finish[0],
                                 settings=settings_record(tree, rows.seeds[0]), model=model)


def expand(backend, tree: Tree, node_id: int, n: int, depth: int, *, on_node: Callable[[Node], None] | None = None,
           after_weave: Callable[[], None] | None = None) -> list[Node]:
    """Grow the tree breadth-first: n children for `node_id`, n for each of them, `depth` levels deep."""
    frontier, made = [node_id], []
    for _ in range(depth):
        nxt = []
        for parent in frontier:
            kids = weave(backend, tree, parent, n=n)
            if after_weave is not None:
                after_weave()
            for kid in kids:
                if on_node is not None:
                    on_node(kid)
            nxt += [k.id for k in kids]
            made += kids
        frontier = nxt
    return made
