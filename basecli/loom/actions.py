"""Every change a person makes to a tree, as plain functions (no terminal, no model).

The app and the pipeline modes call these, then save. Each returns the node to show next
(or what it made) and refuses, with a LoomError saying why, what cannot be done.
"""

from __future__ import annotations

from basecli.errors import UsageError
from basecli.text.templates import unescape  # \n and \t as a template's front matter writes them
from basecli.loom.tree import Node, Token, Tree


class LoomError(UsageError):
    """An action that does not apply here (the app shows it in the status bar)."""


# --- moving around ----------------------------------------------------------------------------


def go(tree: Tree, node_id: int) -> int:
    if node_id not in tree:
        raise LoomError(f"there is no node {node_id}")
    tree.current = node_id
    return node_id


def to_parent(tree: Tree) -> int:
    parent = tree[tree.current].parent
    if parent is None:
        raise LoomError("this is the root")
    return go(tree, parent)


def to_child(tree: Tree) -> int:
    kids = tree.children[tree.current]
    if not kids:
        raise LoomError("no children yet: w weaves some")
    return go(tree, kids[0])


def to_sibling(tree: Tree, step: int) -> int:
    sibs = tree.siblings(tree.current)
    return go(tree, sibs[(sibs.index(tree.current) + step) % len(sibs)])


def next_bookmark(tree: Tree, step: int = 1) -> int:
    marks = tree.bookmarks()
    if not marks:
        raise LoomError("no bookmarks: b marks the current node")
    order = [i for i, _ in tree.walk()]
    here = order.index(tree.current)
    # the next bookmark after (step 1) or before (step -1) the current node in reading order, wrapping around
    ranked = sorted(marks, key=lambda i: ((order.index(i) - here) * step) % len(order) or len(order))
    return go(tree, ranked[0])


# --- writing ----------------------------------------------------------------------------------


def add_text(tree: Tree, parent: int, text: str) -> Node:
    """A child typed by hand."""
    if not text:
        raise LoomError("nothing typed: a node needs some text")
    return tree.add(parent, text, origin="typed")


def add_generated(tree: Tree, parent: int, text: str, tokens: list[Token], *, finish: str | None, settings: dict,
                  model: str | None) -> Node:
    return tree.add(parent, text, origin="generated", tokens=tokens, finish=finish, settings=settings, model=model)


def extend(tree: Tree, node_id: int, text: str, tokens: list[Token], *, finish: str | None) -> Node:
    """More generated text at the end of a node (continue): its children, if any, become stale."""
    node = tree[node_id]
    if sum(len(t.text) for t in node.tokens) == len(node.text):  # else the new tokens would not line up with the text
        node.tokens = node.tokens + tokens
    node.text += text
    node.finish = finish
    mark_stale(tree, node_id)
    return node


def edit(tree: Tree, node_id: int, text: str) -> Node:
    """New text for a node; everything under it was generated from the old text, so it is marked stale."""
    node = tree[node_id]
    if text == node.text:
        return node
    if node.parent is not None and not text:
        raise LoomError("a node cannot be empty: d deletes it")
    node.text = text
    node.tokens = []  # the model's tokens no longer spell this text
    node.origin = "edited" if node.origin != "prompt" else "prompt"
    node.stale = False
    mark_stale(tree, node_id)
    return node


def mark_stale(tree: Tree, node_id: int) -> int:
    """Mark every descendant stale; how many there are."""
    below = tree.descendants(node_id)
    for i in below:
        tree[i].stale = True
    return len(below)


def delete(tree: Tree, node_id: int) -> int:
    """Remove a node and its subtree; the parent becomes current. The root stays."""
    node = tree[node_id]
    if node.parent is None:
        raise LoomError("the root cannot be deleted (e edits it)")
    tree.remove(node_id)
    if tree.current not in tree:
        tree.current = node.parent
    return node.parent


def prune(tree: Tree, node_id: int) -> int:
    """Remove every child of a node (and their subtrees); how many nodes went."""
    gone = 0
    for child in list(tree.children[node_id]):
        gone += len(tree.remove(child))
    if tree.current not in tree:
        tree.current = node_id
    return gone


def toggle_bookmark(tree: Tree, node_id: int) -> bool:
    node = tree[node_id]
    node.bookmark = not node.bookmark
    return node.bookmark


def branch_at_token(tree: Tree, node_id: int, index: int, *, alternative: int | None = None, text: str | None = None) -> Node:
    """A new sibling of a generated node: its text up to token `index`, then the model's alternative
    number `alternative` there (0 = most likely), or `text` typed instead."""
    node = tree[node_id]
    if node.parent is None:
        raise LoomError("the prompt has no tokens to branch at: a child or e is what changes it")
    if not 0 <= index < len(node.tokens):
        raise LoomError(f"token {index} is not in this node ({len(node.tokens)} generated tokens)")
    start = node.token_spans()[index][0]
    prefix_tokens = [Token(t.id, t.text, t.logprob, [list(a) for a in t.top]) for t in node.tokens[:index]]
    if text is not None:
        if not text:
            raise LoomError("nothing typed to branch with")
        new_text, tokens = node.text[:start] + text, prefix_tokens
    else:
        top = node.tokens[index].top
        if alternative is None or not 0 <= alternative < len(top):
            raise LoomError(f"there is no alternative {alternative} here ({len(top)} known)")
        alt_id, alt_text, alt_lp = top[alternative]
        # the alternative's own alternatives are those of the same place: the model saw the same context
        new_text = node.text[:start] + alt_text
        tokens = prefix_tokens + [Token(int(alt_id), alt_text, alt_lp, [list(a) for a in top])]
    return tree.add(node.parent, new_text, origin="branch", tokens=tokens, model=node.model, settings=node.settings,
                    branched_from={"node": node_id, "token": index})


# --- settings ---------------------------------------------------------------------------------

SETTINGS = {  # slash command -> (setting, parser); the same names as the command-line options
    "n": ("n", int), "max": ("max_tokens", int), "max-tokens": ("max_tokens", int), "temp": ("temperature", float),
    "temperature": ("temperature", float), "top-k": ("top_k", int), "top-p": ("top_p", float), "min-p": ("min_p", float),
    "rep": ("repetition_penalty", float), "repetition-penalty": ("repetition_penalty", float),
    "seed": ("seed", lambda s: None if s in ("off", "none", "random") else int(s)),
    "stop": ("stop", lambda s: [] if s in ("off", "none") else [unescape(part) for part in s.split("|")]),
}


def set_setting(tree: Tree, name: str, value: str) -> str:
    """Change one weaving setting of this tree from its slash-command form; a line saying what it is now."""
    if name not in SETTINGS:
        raise LoomError(f"unknown setting /{name}; settings: {', '.join('/' + k for k in SETTINGS)}")
    key, parse = SETTINGS[name]
    try:
        parsed = parse(value.strip())
    except ValueError:
        raise LoomError(f"/{name} needs a {'whole ' if parse is int else ''}number, got {value!r}") from None
    candidate = {**tree.settings, key: parsed}
    check_settings(candidate)
    tree.settings = candidate
    return f"{key} = {parsed}"


def check_settings(settings: dict) -> None:
    if not 1 <= int(settings["n"]) <= 64:
        raise LoomError(f"n (children per weave) must be between 1 and 64, got {settings['n']}")
    try:
        sampling_params(settings)
    except UsageError as e:
        raise LoomError(str(e)) from None


def sampling_params(settings: dict):
    from basecli.config import SamplingParams

    return SamplingParams(max_tokens=int(settings["max_tokens"]), temperature=float(settings["temperature"]),
                          top_k=int(settings["top_k"]), top_p=float(settings["top_p"]), min_p=float(settings["min_p"]),
                          repetition_penalty=float(settings["repetition_penalty"]), seed=settings.get("seed"),
                          stop=tuple(settings.get("stop") or ()))
