"""A loom's tree: nodes of text, each a continuation of its parent, read from the root down.

Standard library only: the tree is plain data, saved as the JSON documented in docs/loom.md.
A node's `text` is what it adds to its parent's; the text of a node's path is the text of
every node from the root down to it. Generated nodes also keep their tokens (id, text,
log-probability and the model's top alternatives at that place), which is what colouring
and branching at a token read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

FORMAT = "basecli-loom"
VERSION = 1
# what weaving uses until the tree says otherwise (the settings panel and slash commands change them per tree)
DEFAULT_SETTINGS = {"n": 4, "max_tokens": 24, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                    "repetition_penalty": 1.0, "seed": None, "stop": []}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Token:
    id: int
    text: str  # this token's own text (a partial UTF-8 character shows as U+FFFD)
    logprob: float | None  # under the model's own distribution, before any sampling control; None: not known
    top: list = field(default_factory=list)  # [[id, text, logprob], ...], most likely first

    @classmethod
    def from_dict(cls, d: dict) -> "Token":
        lp = d.get("logprob")
        return cls(int(d["id"]), str(d["text"]), None if lp is None else float(lp), [list(a) for a in d.get("top") or []])


@dataclass
class Node:
    id: int
    parent: int | None
    text: str
    origin: str = "typed"  # prompt, generated, typed, branch (at a token), edited
    tokens: list[Token] = field(default_factory=list)  # for generated text: its tokens, in order
    settings: dict | None = None  # the sampling settings that generated it
    model: str | None = None
    created: str = field(default_factory=now)
    bookmark: bool = False
    stale: bool = False  # an ancestor's text was edited after this node was generated
    finish: str | None = None  # why generation ended: eos, stop, length
    branched_from: dict | None = None  # {"node": id, "token": index} for a branch at a token

    @property
    def mean_logprob(self) -> float | None:
        lps = [t.logprob for t in self.tokens if t.logprob is not None]
        return sum(lps) / len(lps) if lps else None

    def token_spans(self) -> list[tuple[int, int]]:
        """Where each token's text lies in `text` (clipped: a stop string cuts the last token short)."""
        spans, at = [], 0
        for t in self.tokens:
            end = min(at + len(t.text), len(self.text))
            spans.append((min(at, end), end))
            at += len(t.text)
        return spans

    def to_dict(self) -> dict:
        # by hand: dataclasses.asdict deep-copies every token's alternatives, and the file is written on every change
        return {"id": self.id, "parent": self.parent, "text": self.text, "origin": self.origin,
                "tokens": [{"id": t.id, "text": t.text, "logprob": t.logprob, "top": t.top} for t in self.tokens],
                "settings": self.settings, "model": self.model, "created": self.created, "bookmark": self.bookmark,
                "stale": self.stale, "finish": self.finish, "branched_from": self.branched_from}

    @classmethod
    def from_dict(cls, d: dict) -> "Node":
        return cls(id=int(d["id"]), parent=None if d.get("parent") is None else int(d["parent"]), text=str(d.get("text", "")),
                   origin=d.get("origin", "typed"), tokens=[Token.from_dict(t) for t in d.get("tokens") or []],
                   settings=d.get("settings"), model=d.get("model"), created=d.get("created") or now(),
                   bookmark=bool(d.get("bookmark")), stale=bool(d.get("stale")), finish=d.get("finish"),
                   branched_from=d.get("branched_from"))


class Tree:
    """Nodes by id, the root, where the reader is, and the settings weaving uses."""

    def __init__(self, prompt: str = "", *, model: str | None = None, settings: dict | None = None):
        self.nodes: dict[int, Node] = {}
        self.children: dict[int, list[int]] = {}
        self.next_id = 0
        self.model = model
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.template: str | None = None  # the chat template a conversation tree was started from
        self.chat: dict | None = None  # its turn labels, {"human": ..., "assistant": ...}
        self.created = now()
        self.root = self.add(None, prompt, origin="prompt").id
        self.current = self.root

    # --- building --------------------------------------------------------------------------

    def add(self, parent: int | None, text: str, **fields) -> Node:
        node = Node(self.next_id, parent, text, **fields)
        self.next_id += 1
        self.nodes[node.id] = node
        self.children[node.id] = []
        if parent is not None:
            self.children[parent].append(node.id)
        return node

    def remove(self, node_id: int) -> list[int]:
        """Take a node and everything under it out of the tree; the ids removed."""
        gone = [node_id, *self.descendants(node_id)]
        parent = self.nodes[node_id].parent
        if parent is not None:
            self.children[parent].remove(node_id)
        for i in gone:
            del self.nodes[i]
            del self.children[i]
        return gone

    # --- reading ---------------------------------------------------------------------------

    def __getitem__(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def __contains__(self, node_id: int) -> bool:
        return node_id in self.nodes

    def path(self, node_id: int) -> list[int]:
        """Ids from the root down to `node_id`."""
        out = []
        at: int | None = node_id
        while at is not None:
            out.append(at)
            at = self.nodes[at].parent
        return out[::-1]

    def text(self, node_id: int) -> str:
        """The text of the path to `node_id`: what the model reads before that node's children."""
        return "".join(self.nodes[i].text for i in self.path(node_id))

    def siblings(self, node_id: int) -> list[int]:
        """The node and its siblings, in the order they were made."""
        parent = self.nodes[node_id].parent
        return [node_id] if parent is None else list(self.children[parent])

    def descendants(self, node_id: int) -> list[int]:
        out, todo = [], list(self.children[node_id])
        while todo:
            i = todo.pop()
            out.append(i)
            todo.extend(self.children[i])
        return out

    def sizes(self) -> dict[int, int]:
        """How many nodes are below each node, for the whole tree in one pass."""
        order = [i for i, _ in self.walk()]
        below = dict.fromkeys(order, 0)
        for i in reversed(order):  # children come after their parent in reading order
            parent = self.nodes[i].parent
            if parent is not None:
                below[parent] += below[i] + 1
        return below

    def depth(self, node_id: int) -> int:
        return len(self.path(node_id)) - 1

    def walk(self, node_id: int | None = None) -> Iterator[tuple[int, int]]:
        """(id, depth) in reading order: each node, then its children's subtrees."""
        todo = [(self.root if node_id is None else node_id, 0)]
        while todo:
            i, d = todo.pop()
            yield i, d
            todo.extend((c, d + 1) for c in reversed(self.children[i]))

    def bookmarks(self) -> list[int]:
        return [i for i, _ in self.walk() if self.nodes[i].bookmark]

    def search(self, query: str) -> list[int]:
        """Nodes whose own text contains `query` (case-insensitive), in reading order."""
        q = query.lower()
        return [i for i, _ in self.walk() if q and q in self.nodes[i].text.lower()]

    # --- the file format -------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "created": self.created, "model": self.model, "template": self.template, "chat": self.chat,
                "root": self.root, "current": self.current, "next_id": self.next_id, "settings": self.settings,
                "nodes": [self.nodes[i].to_dict() for i, _ in self.walk()]}

    @classmethod
    def from_dict(cls, d: dict) -> "Tree":
        """A tree from its JSON; ValueError saying what is wrong with a file that is not one."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"not a loom tree (its \"format\" is not {FORMAT!r})")
        if int(d.get("version", 0)) > VERSION:
            raise ValueError(f"written by a newer basecli (format version {d.get('version')}; this one reads {VERSION})")
        tree = cls.__new__(cls)
        tree.nodes, tree.children = {}, {}
        tree.model, tree.template, tree.chat = d.get("model"), d.get("template"), d.get("chat")
        tree.settings = {**DEFAULT_SETTINGS, **(d.get("settings") or {})}
        tree.created = d.get("created") or now()
        try:
            nodes = [Node.from_dict(n) for n in d["nodes"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"a node is malformed ({type(e).__name__}: {e})") from None
        for n in nodes:
            tree.nodes[n.id] = n
            tree.children[n.id] = []
        for n in nodes:
            if n.parent is not None:
                if n.parent not in tree.nodes:
                    raise ValueError(f"node {n.id}'s parent {n.parent} is not in the file")
                tree.children[n.parent].append(n.id)
        roots = [n.id for n in nodes if n.parent is None]
        if len(roots) != 1:
            raise ValueError(f"a tree has one root; this file has {len(roots)}")
        tree.root = roots[0]
        if sum(1 for _ in tree.walk()) != len(tree.nodes):
            raise ValueError("some nodes are not reachable from the root (their parents form a loop)")
        for kids in tree.children.values():  # children in the order they were made
            kids.sort()
        tree.next_id = max(int(d.get("next_id", 0)), max(tree.nodes) + 1)
        current = d.get("current")
        tree.current = current if current in tree.nodes else tree.root
        return tree
