"""The loom's tree, its actions and its file, without a terminal or a model (basecli/loom/tree.py,
actions.py, store.py). The definitions they are checked against are in docs/loom.md."""

from __future__ import annotations

import json
import os

import pytest

from basecli.errors import UsageError
from basecli.loom import actions, store
from basecli.loom.tree import Token, Tree


def generated(tree: Tree, parent: int, pieces: list[str], *, lp: float = -0.5) -> int:
    """A generated child whose tokens are `pieces`, each with three alternatives (the chosen one first)."""
    tokens = [Token(100 + k, p, lp, [[100 + k, p, lp], [200 + k, f"<alt{k}a>", -1.5], [300 + k, f"<alt{k}b>", -2.5]])
              for k, p in enumerate(pieces)]
    return actions.add_generated(tree, parent, "".join(pieces), tokens, finish="length", settings={"temperature": 1.0},
                                 model="tiny").id


@pytest.fixture
def tree() -> Tree:
    """root 'Once' -> a ' upon a time', b ' there was'; a -> c ',', d ' in'; c -> e ' a'"""
    t = Tree("Once")
    a = generated(t, t.root, [" upon", " a", " time"])
    b = generated(t, t.root, [" there", " was"])
    c = generated(t, a, [","])
    generated(t, a, [" in"])
    generated(t, c, [" a"])
    assert (a, b, c) == (1, 2, 3)
    return t


def test_paths_and_text(tree):
    assert tree.path(5) == [0, 1, 3, 5]
    assert tree.text(5) == "Once upon a time, a"
    assert tree.siblings(4) == [3, 4]
    assert sorted(tree.descendants(1)) == [3, 4, 5]
    assert [i for i, _ in tree.walk()] == [0, 1, 3, 5, 4, 2]
    assert tree.depth(5) == 3
    assert tree[1].mean_logprob == pytest.approx(-0.5)


def test_moving(tree):
    assert actions.to_child(tree) == 1
    assert actions.to_sibling(tree, 1) == 2
    assert actions.to_sibling(tree, 1) == 1  # wraps around
    assert actions.to_parent(tree) == 0
    with pytest.raises(actions.LoomError, match="root"):
        actions.to_parent(tree)
    actions.go(tree, 2)
    with pytest.raises(actions.LoomError, match="no children"):
        actions.to_child(tree)


def test_branch_at_token_is_exactly_the_prefix_plus_the_alternative(tree):
    node = actions.branch_at_token(tree, 1, 2, alternative=1)  # ' upon a time': at ' time', the second alternative
    assert node.parent == 0  # a sibling of the node branched from
    assert node.text == " upon a<alt2a>"
    assert [t.id for t in node.tokens] == [100, 101, 202]
    assert node.tokens[-1].logprob == -1.5
    assert node.branched_from == {"node": 1, "token": 2}
    assert tree.text(node.id) == "Once upon a<alt2a>"
    assert tree[1].text == " upon a time" and tree.children[1] == [3, 4]  # the original is untouched

    typed = actions.branch_at_token(tree, 1, 1, text=" the")
    assert typed.text == " upon the" and [t.id for t in typed.tokens] == [100]
    first = actions.branch_at_token(tree, 1, 0, alternative=0)
    assert first.text == " upon" and [t.id for t in first.tokens] == [100]


def test_branch_at_token_refuses_what_is_not_there(tree):
    with pytest.raises(actions.LoomError):
        actions.branch_at_token(tree, 0, 0, alternative=0)  # the prompt has no tokens
    with pytest.raises(actions.LoomError):
        actions.branch_at_token(tree, 1, 3, alternative=0)
    with pytest.raises(actions.LoomError):
        actions.branch_at_token(tree, 1, 0, alternative=3)


def test_edit_marks_descendants_stale_and_drops_tokens(tree):
    actions.edit(tree, 1, " upon a midnight")
    assert tree[1].text == " upon a midnight" and tree[1].tokens == [] and tree[1].origin == "edited"
    assert [tree[i].stale for i in (1, 2, 3, 4, 5)] == [False, False, True, True, True]
    assert tree.text(5) == "Once upon a midnight, a"
    with pytest.raises(actions.LoomError):
        actions.edit(tree, 1, "")


def test_add_delete_prune(tree):
    typed = actions.add_text(tree, 2, " a king")
    assert typed.origin == "typed" and tree.text(typed.id) == "Once there was a king"
    tree.current = 5
    assert actions.delete(tree, 3) == 1
    assert 3 not in tree and 5 not in tree and tree.children[1] == [4]
    assert tree.current == 1  # the current node went with its subtree
    assert actions.prune(tree, 0) == 4  # 1, 4, 2 and the typed one
    assert list(tree.nodes) == [0] and tree.current == 0
    with pytest.raises(actions.LoomError):
        actions.delete(tree, 0)


def test_bookmarks_cycle_in_reading_order(tree):
    for i in (4, 2, 3):
        actions.toggle_bookmark(tree, i)
    assert tree.bookmarks() == [3, 4, 2]
    assert [actions.next_bookmark(tree) for _ in range(4)] == [3, 4, 2, 3]
    assert actions.next_bookmark(tree, -1) == 2


def test_search(tree):
    assert tree.search(" A") == [1, 5]  # case-insensitive, reading order, own text only
    assert tree.search("nowhere") == []


def test_settings_are_checked(tree):
    assert actions.set_setting(tree, "temp", "0.7") == "temperature = 0.7"
    assert actions.set_setting(tree, "n", "8") == "n = 8"
    assert actions.set_setting(tree, "stop", "\\n|.") == "stop = ['\\n', '.']"
    assert actions.set_setting(tree, "seed", "off") == "seed = None"
    assert tree.settings["temperature"] == 0.7 and tree.settings["n"] == 8
    for name, value in (("top-p", "0"), ("n", "0"), ("temp", "hot"), ("bogus", "1")):
        with pytest.raises(actions.LoomError):
            actions.set_setting(tree, name, value)
    assert tree.settings["n"] == 8  # a refused value changes nothing


def test_continue_extends_a_leaf_and_keeps_tokens_aligned(tree):
    actions.extend(tree, 4, " the", [Token(7, " the", -0.1, [])], finish="length")
    assert tree[4].text == " in the" and [t.text for t in tree[4].tokens] == [" in", " the"]
    assert tree[4].token_spans() == [(0, 3), (3, 7)]


def test_save_load_round_trip(tree, tmp_path):
    actions.toggle_bookmark(tree, 3)
    actions.edit(tree, 2, " there lived")
    tree.current = 5
    tree.settings["n"] = 3
    path = tmp_path / "t.json"
    store.save(tree, path)
    back = store.load(path)
    assert back.to_dict() == tree.to_dict()
    assert json.loads(path.read_text())["format"] == "basecli-loom"
    assert back.current == 5 and back[3].bookmark and back[3].stale is False and back[5].stale is False
    # ids keep counting after a reload: a new node never reuses a deleted one's id
    actions.delete(back, 4)
    store.save(back, path)
    again = store.load(path)
    assert actions.add_text(again, 0, "x").id == tree.next_id


class _DiesHalfWay:
    """A file that writes half of what it is given, then the process 'dies'."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise KeyboardInterrupt

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("where", ["writing", "renaming"])
def test_a_crash_in_the_middle_of_a_save_keeps_the_old_file(tree, tmp_path, monkeypatch, where):
    path = tmp_path / "t.json"
    store.save(tree, path)
    before = path.read_bytes()
    actions.add_text(tree, 0, " new")
    if where == "writing":
        monkeypatch.setattr(store, "open", lambda *a, **k: _DiesHalfWay(open(*a, **k)), raising=False)
    else:
        def dies(*a):
            raise KeyboardInterrupt
        monkeypatch.setattr(store.os, "replace", dies)
    with pytest.raises(KeyboardInterrupt):
        store.save(tree, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert len(store.load(path).nodes) == 6
    store.save(tree, path)  # what the dead save left behind does not get in the way of the next one
    assert len(store.load(path).nodes) == 7
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


KEEPS_SAVING = """
import sys
from basecli.loom import actions, store
from basecli.loom.tree import Tree
tree = Tree("x" * 1000)
path = sys.argv[1]
store.save(tree, path)
print("saved", flush=True)
while True:
    actions.add_text(tree, tree.root, "y" * 5000)
    store.save(tree, path)
"""


def test_kill_9_while_saving_leaves_a_whole_tree(tmp_path):
    """The real thing: a process saving a growing tree as fast as it can, killed at an arbitrary moment."""
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "t.json"
    for delay in (0.05, 0.2, 0.35):
        proc = subprocess.Popen([sys.executable, "-c", KEEPS_SAVING, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "saved"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        tree = store.load(path)  # never half a file
        assert len(tree.nodes) >= 1 and all(tree[i].text == "y" * 5000 for i in tree.children[tree.root])


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('{"format": "something-else"}', "not a loom tree"),
    ('{"format": "basecli-loom", "version": 99, "nodes": []}', "newer basecli"),
    ('{"format": "basecli-loom", "nodes": [{"id": 0, "parent": null, "text": ""}, {"id": 1, "parent": 7, "text": ""}]}', "parent 7"),
    ('{"format": "basecli-loom", "nodes": [{"id": 0, "parent": null, "text": ""}, {"id": 1, "parent": 2, "text": ""},'
     ' {"id": 2, "parent": 1, "text": ""}]}', "loop"),
])
def test_bad_files_are_refused_with_a_reason(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        store.load(path)
    assert path.read_text() == content


def test_new_files_go_under_basecli_home(monkeypatch, tmp_path):
    monkeypatch.setenv("BASECLI_HOME", str(tmp_path))
    p = store.new_path("The 2031 World Cup final was won by")
    assert p.parent == tmp_path / "looms" and p.name.endswith("-the-2031-world-cup-final-was-won-by.json")


def test_what_counts_as_a_tree_file(tmp_path):
    existing = tmp_path / "my tree.json"
    existing.write_text("{}")
    assert store.is_tree_file("tale.json") and store.is_tree_file(str(existing))
    assert not store.is_tree_file("Parse this as data.json") and not store.is_tree_file("Once upon a time")


def test_outline_folds_and_fits_its_width(tree):
    from basecli.loom import view

    lines = dict(view.outline(tree, width=40))
    assert list(lines) == [0, 1, 3, 5, 4, 2] and all(len(line) == 40 for line in lines.values())
    assert lines[1].rstrip().endswith("3↓ -0.50")  # three below it, its tokens' mean log-probability
    assert lines[3].startswith("    ") and "," in lines[3]  # depth 2: indented twice
    folded = dict(view.outline(tree, folded={1}, width=40))
    assert list(folded) == [0, 1, 2] and "▸3" in folded[1]
    assert view.breadcrumbs(tree, 5) == "0 › 1 › 3 › 5"
    assert view.print_tree(tree).splitlines()[:2] == ["[0] Once", "  [1]  upon a time"]  # "[id] " then the text as it is


def test_sizes_count_every_node_below(tree):
    assert tree.sizes() == {i: len(tree.descendants(i)) for i in tree.nodes}


def test_stop_strings_take_escapes_and_any_script(tree):
    actions.set_setting(tree, "stop", "\\n\\n|。|Human:")
    assert tree.settings["stop"] == ["\n\n", "。", "Human:"]
