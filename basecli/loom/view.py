"""A tree as text: the outline the app's tree view and `--print` show, one line per node.

Plain strings only (no terminal): the app styles them, pipelines read them as they are.
"""

from __future__ import annotations

import json

from basecli.loom.tree import Node, Tree

FIRST_WORDS = 8


def shown(text: str) -> str:
    """A node's text on one line: newlines and tabs made visible."""
    return text.replace("\n", "↵").replace("\t", "→")


def first_words(text: str, words: int = FIRST_WORDS, width: int = 48) -> str:
    parts = text.split()
    out = " ".join(parts[:words])
    if len(parts) > words:
        out += " …"
    if len(out) > width:
        out = out[: width - 1] + "…"
    return out or "(empty)"


def marks(tree: Tree, node: Node) -> str:
    """One character each: bookmark, stale, how it ended."""
    return ("★" if node.bookmark else " ") + ("~" if node.stale else " ")


def figures(node: Node, below: int) -> str:
    """How many nodes are below it, and its tokens' mean log-probability."""
    mean = node.mean_logprob
    lp = f"{mean:+.2f}" if mean is not None else "  -  "
    return f"{below:>3}↓ {lp}"


def node_line(tree: Tree, node_id: int, depth: int, *, below: int, folded: bool = False, width: int = 72) -> str:
    """`width` characters: marks, id and first words on the left, descendants and mean log-probability on the right."""
    node = tree[node_id]
    fold = f" ▸{below}" if folded and tree.children[node_id] else ""
    right = f"{fold}  {figures(node, below)}"
    left = f"{'  ' * min(depth, 12)}{marks(tree, node)}{node_id:>3} "
    room = max(4, width - len(left) - len(right))
    return f"{left}{first_words(node.text, width=room):<{room}}{right}"


def outline(tree: Tree, *, folded: set[int] = frozenset(), start: int | None = None, width: int = 72) -> list[tuple[int, str]]:
    """(id, line) for every node not under a folded one, in reading order."""
    out, hidden, sizes = [], set(), tree.sizes()
    for node_id, depth in tree.walk(start):
        parent = tree[node_id].parent
        if parent in hidden or (parent in folded and node_id != start):
            hidden.add(node_id)
            continue
        out.append((node_id, node_line(tree, node_id, depth, below=sizes[node_id], folded=node_id in folded, width=width)))
    return out


def breadcrumbs(tree: Tree, node_id: int) -> str:
    """The path to the root, as ids."""
    return " › ".join(str(i) for i in tree.path(node_id))


def print_tree(tree: Tree) -> str:
    """`--print`: every node with its whole text (on one line), indented by depth."""
    lines = []
    for node_id, depth in tree.walk():
        node = tree[node_id]
        lines.append(f"{'  ' * depth}[{node_id}]{marks(tree, node).rstrip()} {shown(node.text)}")
    return "\n".join(lines) + "\n"


def node_record(tree: Tree, node: Node) -> str:
    """One JSONL line for a node made by `--expand` (the node as in the file, with its depth)."""
    return json.dumps({**node.to_dict(), "depth": tree.depth(node.id)}, ensure_ascii=False)
