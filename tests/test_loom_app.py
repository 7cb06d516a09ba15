"""The loom app (basecli/loom/app.py, keys.py) driven by keys through prompt_toolkit's pipe input, with
DummyOutput: keys in; the tree, its file and the rendered screen's text out. Generation uses the tiny
Llama, so what a key makes is checked against the tree actions' own definitions (test_loom_tree.py)."""

from __future__ import annotations

import asyncio

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from basecli.loom import store
from basecli.loom.app import LoomApp, screen_text
from basecli.loom.tree import Tree

CTRL_S = "\x13"
ESC = "\x1b"


class Driver:
    """Runs the app on an event loop and feeds it keys, waiting after each for generation to finish."""

    def __init__(self, ui: LoomApp, inp):
        self.ui, self.inp = ui, inp

    async def keys(self, *chunks: str) -> None:
        for chunk in chunks:
            self.inp.send_text(chunk)
            await self.settle()

    async def settle(self) -> None:
        """Until the app has been idle for 80 ms: no generation running and no redraw pending. 80 ms is more
        than ttimeoutlen (50 ms), so an Esc on its own has been told from the start of an Esc sequence."""
        quiet = 0
        for _ in range(3000):  # up to 30 s for a generation
            await asyncio.sleep(0.01)
            quiet = quiet + 1 if not self.ui.busy and not self.ui.app.invalidated else 0
            if quiet >= 8:
                break

    def screen(self) -> str:
        return screen_text(self.ui.app)


def drive(tmp_path, script, *, tree: Tree | None = None, backend=None):
    """Open an app on `tree` (saved to tmp_path/t.json) and run `script(driver)`; the Store afterwards."""
    st = store.Store(tree or Tree("The quick brown", settings={"seed": 7, "max_tokens": 4, "n": 2}), tmp_path / "t.json")
    st.changed()

    async def main():
        with create_pipe_input() as inp:
            ui = LoomApp(st, lambda: backend, input=inp, output=DummyOutput())
            ui.app.ttimeoutlen = 0.05  # Esc alone is told from Esc-Enter this long after it
            task = asyncio.ensure_future(ui.app.run_async())
            d = Driver(ui, inp)
            await d.settle()
            try:
                await script(d)
            finally:
                if not task.done():
                    inp.send_text("q")
                await asyncio.wait_for(task, 10)

    asyncio.run(main())
    return st


@pytest.fixture
def llama(tiny_backends, one_thread):
    return tiny_backends["llama"]


def test_weave_three_levels_move_and_read(tmp_path, llama):
    seen = {}

    async def script(d):
        await d.keys("w")  # two children of the root; the first becomes current
        await d.keys("w", "w")  # two levels more, under the first child each time
        seen["deep"] = d.ui.tree.current
        seen["screen"] = d.screen()
        await d.keys("h", "j")  # up to the parent, then its next sibling
        seen["moved"] = d.ui.tree.current

    st = drive(tmp_path, script, backend=llama)
    tree = st.tree
    assert len(tree.nodes) == 7 and tree.depth(seen["deep"]) == 3
    assert seen["moved"] == tree.siblings(tree[seen["deep"]].parent)[1]
    screen = seen["screen"]
    assert f"node {seen['deep']} · depth 3 · 0 children" in screen  # the status bar
    assert "path 0 › 1 › 3 › 5" in screen  # the tree view's path to the root
    assert "The quick brown" in screen
    assert "▏" in screen  # node boundaries in the read view
    # the tree view: one line per node, children indented under their parent, with descendant counts
    lines = [ln for ln in screen.splitlines() if "↓" in ln]
    assert len(lines) == 7
    # saved after every change: the file has the tree as it is now
    assert store.load(tmp_path / "t.json").to_dict() == tree.to_dict()


def test_branch_at_a_token_alternative_and_typed(tmp_path, llama):
    got = {}

    async def script(d):
        await d.keys("w")
        got["from"] = d.ui.tree.current
        await d.keys("t", "l")  # the cursor onto the second token
        got["panel"] = d.screen()
        await d.keys("2")  # its second alternative
        got["branch"] = d.ui.tree.current
        await d.keys("k")  # back to the original sibling... the node branched from comes first
        await d.keys("t", "i", " zebra", CTRL_S)
        got["typed"] = d.ui.tree.current

    tree = drive(tmp_path, script, backend=llama).tree
    src, branch, typed = tree[got["from"]], tree[got["branch"]], tree[got["typed"]]
    alt = src.tokens[1].top[1]
    assert branch.parent == src.parent and branch.text == src.tokens[0].text + alt[1]
    assert [t.id for t in branch.tokens] == [src.tokens[0].id, alt[0]]
    assert "token 2/" in got["panel"] and "2  " in got["panel"]  # the alternatives, numbered, with probabilities
    assert typed.text.endswith(" zebra") and typed.branched_from["token"] == 0


def test_edit_marks_stale_add_delete_prune_bookmark_search(tmp_path, llama):
    got = {}

    async def script(d):
        await d.keys("w", "h")  # two children; back at the root
        await d.keys("e", " fox", CTRL_S)  # the root's text grows: both children go stale
        got["stale"] = d.screen()
        await d.keys("a", " and a zebra", CTRL_S)  # a typed child, now current
        got["typed"] = d.ui.tree.current
        await d.keys("b", "h")  # bookmark it, go to the root
        await d.keys("'")
        got["jumped"] = d.ui.tree.current
        await d.keys("f", "ZEBRA\r")
        got["found"] = d.ui.tree.current
        await d.keys("h", "l", "d", "n")  # delete asked, then refused
        got["kept"] = len(d.ui.tree.nodes)
        await d.keys("d", "y")
        got["after_delete"] = len(d.ui.tree.nodes)
        await d.keys("x", "y")  # prune everything under the root
        got["after_prune"] = len(d.ui.tree.nodes)

    tree = drive(tmp_path, script, backend=llama).tree
    assert tree[0].text == "The quick brown fox"
    assert "~" in got["stale"] and "below marked stale" in got["stale"]
    assert tree.nodes.get(got["typed"]) is None  # pruned at the end
    assert got["jumped"] == got["typed"] and got["found"] == got["typed"]
    assert (got["kept"], got["after_delete"], got["after_prune"]) == (4, 3, 1)
    assert store.load(tmp_path / "t.json").to_dict() == tree.to_dict()


def test_settings_by_command_are_remembered_and_shown(tmp_path, llama):
    got = {}

    async def script(d):
        await d.keys(":n 3\r", ":temp 0\r", "s")
        got["panel"] = d.screen()
        await d.keys("w")
        await d.keys(":top-p 0\r")
        got["refused"] = d.ui.message

    tree = drive(tmp_path, script, backend=llama).tree
    assert tree.settings["n"] == 3 and tree.settings["temperature"] == 0.0
    assert len(tree.children[0]) == 3
    assert len({tree[i].text for i in tree.children[0]}) == 1  # greedy: three times the same
    assert "settings (this tree)" in got["panel"] and "n=3" in got["panel"]
    assert "top-p must be in (0, 1]" in got["refused"]
    assert store.load(tmp_path / "t.json").settings["n"] == 3


def test_probabilities_colour_tokens_by_the_complete_bands(tmp_path, llama):
    from basecli.loom.app import band

    got = {}

    async def script(d):
        await d.keys("w")
        got["plain"] = d.ui.read_fragments()
        await d.keys("p")
        got["coloured"] = d.ui.read_fragments()

    tree = drive(tmp_path, script, backend=llama).tree
    node = tree[tree.current]
    styles = [s for s, text in got["coloured"] if "fg:" in s]
    assert len(styles) == len(node.tokens)
    assert [s.split()[-1] for s in styles] == [band(t.logprob) for t in node.tokens]
    assert not any("fg:" in s for s, _ in got["plain"])
    assert band(-0.01) == "fg:ansibrightgreen" and band(-10) == "fg:ansired"


def test_a_tree_opens_without_a_model(tmp_path):
    """Reading, moving and editing need no backend: it is only opened for generation."""
    t = Tree("Once")
    t.add(0, " upon a time", origin="typed")
    opened = []

    async def script(d):
        await d.keys("l", "e", " more", CTRL_S)
        assert "node 1" in d.screen()

    def factory():
        opened.append(True)

    st = store.Store(t, tmp_path / "t.json")
    st.changed()

    async def main():
        with create_pipe_input() as inp:
            ui = LoomApp(st, factory, input=inp, output=DummyOutput())
            ui.app.ttimeoutlen = 0.05
            task = asyncio.ensure_future(ui.app.run_async())
            d = Driver(ui, inp)
            await d.settle()
            await script(d)
            inp.send_text("q")
            await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert t[1].text == " upon a time more" and not opened


class Slow:
    """The tiny Llama, one event every 0.2 s: time to press a key while it generates."""

    def __init__(self, inner):
        self.inner, self.name, self.tokenizer = inner, inner.name, inner.tokenizer

    def stream(self, *args, **kw):
        import time

        for ev in self.inner.stream(*args, **kw):
            time.sleep(0.2)
            yield ev


def test_esc_stops_a_generation_and_adds_nothing(tmp_path, llama):
    got = {}

    async def script(d):
        d.inp.send_text("w")
        await asyncio.sleep(0.8)
        got["busy"] = d.ui.busy
        got["live"] = d.screen()
        await d.keys(ESC)

    tree = drive(tmp_path, script, backend=Slow(llama), tree=Tree("Hi", settings={"max_tokens": 30, "n": 2})).tree
    assert got["busy"] and "Esc stops" in got["live"] and "weaving 2" in got["live"]  # the rows, live
    assert tree.children[0] == [] and len(store.load(tmp_path / "t.json").nodes) == 1


def test_continue_fold_and_help(tmp_path, llama):
    got = {}

    async def script(d):
        await d.keys("w")
        leaf = d.ui.tree.current
        got["before"] = d.ui.tree[leaf].text
        await d.keys("c")  # a leaf: more text on the same node
        got["after"] = d.ui.tree[leaf].text
        got["leaf"] = leaf
        await d.keys("h", "z")  # fold the root: its children leave the tree view
        got["folded"] = d.screen()
        await d.keys("?")
        got["help"] = d.screen()

    tree = drive(tmp_path, script, backend=llama).tree
    assert got["after"].startswith(got["before"]) and len(got["after"]) > len(got["before"])
    assert tree.children[got["leaf"]] == []
    assert "▸2" in got["folded"] and sum("↓" in ln for ln in got["folded"].splitlines()) == 1
    assert "w weave" in got["help"]


def test_a_conversation_tree_adds_the_humans_turn_and_opens_the_assistants(tmp_path, llama):
    from basecli.loom import session

    st = session.open_tree("Hello", out=str(tmp_path / "c.json"), template="assistant", settings={"max_tokens": 3})

    async def script(d):
        await d.keys("a", "Why?", CTRL_S)

    tree = drive(tmp_path, script, backend=llama, tree=st.tree).tree
    typed = tree[tree.current]
    assert typed.text == "\nHuman: Why?\nAssistant:"
    assert tree.text(typed.id).endswith("Human: Hello\nAssistant:\nHuman: Why?\nAssistant:")
    assert "\nHuman:" in tree.settings["stop"]


def test_moves_are_saved_with_the_next_change_or_on_quitting(tmp_path, llama):
    got = {}

    async def script(d):
        await d.keys("w")
        got["child"] = d.ui.tree.current
        await d.keys("h")  # a move: the file still has the reader on the child
        got["file_after_move"] = store.load(tmp_path / "t.json").current

    drive(tmp_path, script, backend=llama)  # ends with q
    assert got["file_after_move"] == got["child"]
    assert store.load(tmp_path / "t.json").current == 0
