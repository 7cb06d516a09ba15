"""What `basecli loom` does before (or instead of) the screen: open or start a tree, the pipeline modes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from basecli.errors import UsageError
from basecli.loom import actions, store, view, weave
from basecli.loom.tree import Tree


def open_tree(target: str | None, *, out: str | None, template: str | None, settings: dict) -> store.Store:
    """TREE.json as it is, or a new tree from a prompt saved to --out or a fresh file under BASECLI_HOME/looms/.

    Settings given on the command line change the tree's own (and are saved with it).
    """
    new = not (target is not None and store.is_tree_file(target))
    if not new:
        if template:
            raise UsageError("--chat starts a new tree; an existing tree keeps the stop strings it was made with")
        tree = store.load(Path(target))
        path = Path(target)
    else:
        from basecli.text.inputs import read_text

        prompt = read_text(target) if target is not None or not sys.stdin.isatty() else ""
        tree = new_tree(prompt, template)
        path = Path(out) if out else store.new_path(prompt)
        if path.exists():
            raise UsageError(f"{path} exists already; open it with `basecli loom {path}` or choose another --out")
    given = {k: v for k, v in settings.items() if v is not None}
    if given:
        candidate = {**tree.settings, **given}
        actions.check_settings(candidate)
        tree.settings = candidate
    s = store.Store(tree, path)
    if new or given:  # reading a tree (--print) leaves its file alone
        s.changed()
    return s


def new_tree(prompt: str, template: str | None) -> Tree:
    """A tree whose root is the prompt; with a chat template, the conversation so far with the prompt as the
    human's message, and the template's stop strings, so each child is one assistant turn."""
    if not template:
        return Tree(prompt)
    from basecli.text import templates

    path = Path(template)
    if not path.exists() and (templates.prompts_dir() / f"{template}.txt").exists():
        path = templates.prompts_dir() / f"{template}.txt"
    tpl = templates.load(path)
    tree = Tree(templates.chat_prompt(tpl, [], prompt or None))
    tree.template = str(path)
    human, assistant = templates.chat_labels(tpl)
    tree.chat = {"human": human, "assistant": assistant}
    tree.settings["stop"] = list(dict.fromkeys([*templates.chat_stops(tpl), *tree.settings["stop"]]))
    return tree


def node_arg(tree: Tree, node: str) -> int:
    try:
        node_id = int(node)
    except ValueError:
        raise UsageError(f"--path takes a node id (a whole number, as --print shows in brackets), got {node!r}") from None
    if node_id not in tree:
        raise UsageError(f"there is no node {node_id} in this tree (--print lists them)")
    return node_id


def print_modes(s: store.Store, *, print_: bool, json_: bool, path: str | None) -> bool:
    """--print, --json, --path: write the tree (or one path) to stdout; whether one of them was asked."""
    if path is not None:
        sys.stdout.write(s.tree.text(node_arg(s.tree, path)))
        if sys.stdout.isatty():
            sys.stdout.write("\n")
    elif json_:
        sys.stdout.write(json.dumps(s.tree.to_dict(), ensure_ascii=False, indent=1) + "\n")
    elif print_:
        sys.stdout.write(view.print_tree(s.tree))
    return path is not None or json_ or print_


def expand(s: store.Store, backend, n: int, depth: int, *, jsonl: bool) -> None:
    """Grow the tree breadth-first from its current node, saving after every batch; --jsonl: a line per node."""
    if n < 1 or depth < 1:
        raise UsageError(f"--expand and --depth must be at least 1, got {n} and {depth}")

    def emit(node):
        if jsonl:
            sys.stdout.write(view.node_record(s.tree, node) + "\n")
            sys.stdout.flush()

    weave.expand(backend, s.tree, s.tree.current, n, depth, on_node=emit, after_weave=s.changed)
    print(f"basecli: loom: {len(s.tree.nodes)} nodes in {s.path}", file=sys.stderr)
