"""What each key and each :command does in the loom app (loom/app.py)."""

from __future__ import annotations

from prompt_toolkit.filters import Condition
from prompt_toolkit.key_binding import KeyBindings

from basecli.loom import actions


def bindings(ui) -> KeyBindings:
    kb = KeyBindings()
    normal = Condition(lambda: ui.mode == "normal")
    tokens = Condition(lambda: ui.mode == "tokens")
    editing = Condition(lambda: ui.mode == "edit")
    confirming = Condition(lambda: ui.mode == "confirm")
    idle = Condition(lambda: not ui.busy)

    def on(*keys, filter=normal):
        return kb.add(*keys, filter=filter)

    def move(fn, *args):
        def handler(event):
            ui.token = 0
            ui.act(fn, *args, move=True)
        return handler

    for keys, fn, args in ((("left",), actions.to_parent, ()), (("h",), actions.to_parent, ()),
                           (("right",), actions.to_child, ()), (("l",), actions.to_child, ()),
                           (("up",), actions.to_sibling, (-1,)), (("k",), actions.to_sibling, (-1,)),
                           (("down",), actions.to_sibling, (1,)), (("j",), actions.to_sibling, (1,)),
                           (("'",), actions.next_bookmark, (1,)), (('"',), actions.next_bookmark, (-1,))):
        on(*keys)(move(fn, *args))

    @on("q")
    @kb.add("c-q")
    @kb.add("c-c", filter=idle)
    def _(event):
        ui.quit()

    @kb.add("c-l")
    def _(event):
        event.app.renderer.clear()  # redraw everything (after another program wrote over the screen)

    @on("w", filter=normal & idle)
    def _(event):
        ui.generate("weave")

    @on("c", filter=normal & idle)
    def _(event):
        ui.generate("continue")

    @kb.add("escape", filter=Condition(lambda: bool(ui.busy)) & normal)
    @kb.add("c-c", filter=Condition(lambda: bool(ui.busy)))
    def _(event):
        ui.cancel()

    @on("t")
    def _(event):
        node = ui.tree[ui.tree.current]
        if not node.tokens:
            ui.message = "this node has no generated tokens to branch at"
            return
        ui.mode, ui.token = "tokens", min(ui.token, len(node.tokens) - 1)

    @on("e")
    def _(event):
        ui.open_editor("edit", ui.tree[ui.tree.current].text)

    @on("a")
    def _(event):
        # in a conversation, the human's next turn: its label is there to type after, the assistant's is added
        ui.open_editor("add", f"\n{ui.tree.chat['human']}: " if ui.tree.chat else "")

    @on("d")
    def _(event):
        node_id = ui.tree.current
        below = len(ui.tree.descendants(node_id))
        ask(f"delete node {node_id}" + (f" and the {below} below it" if below else ""),
            lambda: ui.act(actions.delete, node_id, message=f"deleted {below + 1}"))

    @on("x")
    def _(event):
        node_id = ui.tree.current
        below = len(ui.tree.descendants(node_id))
        if not below:
            ui.message = "nothing below to prune"
            return
        ask(f"prune the {below} nodes below node {node_id}", lambda: ui.act(actions.prune, node_id, message=f"pruned {below}"))

    def ask(question: str, then) -> None:
        ui.mode, ui.confirming, ui.message = "confirm", then, question + "? y/n"

    @kb.add("y", filter=confirming)
    def _(event):
        ui.mode, then, ui.confirming = "normal", ui.confirming, None
        then()

    @kb.add("<any>", filter=confirming)
    def _(event):
        ui.mode, ui.confirming, ui.message = "normal", None, "kept"

    @on("b")
    def _(event):
        on_ = ui.act(actions.toggle_bookmark, ui.tree.current)
        ui.message = "bookmarked" if on_ else "bookmark removed"

    @on("f")
    def _(event):
        open_command("search ")

    @on("n")
    def _(event):
        next_hit(1)

    @on("N")
    def _(event):
        next_hit(-1)

    def next_hit(step: int) -> None:
        hits = [i for i in ui.hits if i in ui.tree]
        if not hits:
            ui.message = "no search: f searches"
            return
        here = hits.index(ui.tree.current) if ui.tree.current in hits else -1 if step > 0 else 0
        target = hits[(here + step) % len(hits)]
        ui.act(actions.go, target, message=f"hit {hits.index(target) + 1}/{len(hits)}", move=True)

    @on("p")
    def _(event):
        ui.show_probs = not ui.show_probs
        ui.message = f"probabilities: {legend()}" if ui.show_probs else "probabilities off"

    @on("z")
    def _(event):
        ui.folded ^= {ui.tree.current}

    @on("Z")
    def _(event):
        ui.show_tree = not ui.show_tree

    @on("s")
    def _(event):
        ui.show_settings = not ui.show_settings

    @on("?")
    def _(event):
        ui.show_help = not ui.show_help

    @on(":")
    @on("/")
    def _(event):
        open_command("")

    @on("g")
    def _(event):
        open_command("go ")

    def open_command(text: str) -> None:
        ui.mode = "command"
        ui.command.text = text
        ui.command.buffer.cursor_position = len(text)
        ui.app.layout.focus(ui.command)

    @kb.add("escape", filter=Condition(lambda: ui.mode == "command"))
    def _(event):
        ui.mode = "normal"
        ui.app.layout.focus(ui.read_window)

    # --- tokens mode: pick a place, branch there ---------------------------------------------------

    @kb.add("left", filter=tokens)
    @kb.add("h", filter=tokens)
    def _(event):
        ui.token = max(0, ui.token - 1)

    @kb.add("right", filter=tokens)
    @kb.add("l", filter=tokens)
    def _(event):
        ui.token = min(len(ui.tree[ui.tree.current].tokens) - 1, ui.token + 1)

    @kb.add("escape", filter=tokens)
    @kb.add("t", filter=tokens)
    @kb.add("q", filter=tokens)
    def _(event):
        ui.mode = "normal"

    for digit in "123456789":
        @kb.add(digit, filter=tokens)
        def _(event, k=int(digit) - 1):
            node = ui.act(actions.branch_at_token, ui.tree.current, ui.token, alternative=k)
            if node is not None:
                ui.tree.current, ui.mode = node.id, "normal"
                ui.changed(f"branched at token {ui.token + 1} with alternative {k + 1}")

    @kb.add("i", filter=tokens)
    def _(event):
        ui.open_editor("branch", "", token=ui.token)

    # --- the editor --------------------------------------------------------------------------------

    @kb.add("c-s", filter=editing)
    @kb.add("escape", "enter", filter=editing)
    def _(event):
        ui.close_editor(save=True)

    @kb.add("escape", filter=editing)
    def _(event):
        ui.close_editor(save=False)

    return kb


def legend() -> str:
    """The colour bands in words (the status bar has one style): bright green p>=0.9, ..., red below 0.01."""
    from basecli.views.render import BANDS

    names = [style.replace("_", " ").replace("dark ", "") for _, style in BANDS]
    return ", ".join(f"{n} \u2265{b:g}" for n, (b, _) in zip(names[:-1], BANDS[:-1])) + f", {names[-1]} below"


def run_command(ui, line: str) -> None:
    """`:n 4`, `:temp 0.8`, `:go 12`, `:search text`, `:help`, `:quit` (a leading slash is allowed too)."""
    line = line.lstrip("/:").strip()
    if not line:
        return
    name, _, arg = line.partition(" ")
    if name in ("go", "goto"):
        try:
            ui.act(actions.go, int(arg), message=f"node {arg}", move=True)
        except ValueError:
            ui.message = f":go needs a node id, got {arg!r}"
    elif name in ("search", "find"):
        ui.hits = ui.tree.search(arg)
        if ui.hits:
            ui.act(actions.go, ui.hits[0], message=f"hit 1/{len(ui.hits)} for {arg!r} (n next)", move=True)
        else:
            ui.message = f"{arg!r} is nowhere in the tree"
    elif name in ("help", "?"):
        ui.show_help = True
    elif name in ("quit", "q"):
        ui.quit()
    elif name in ("weave", "w"):
        if arg:
            ui.act(actions.set_setting, "n", arg)
        ui.generate("weave")
    else:
        try:
            ui.message = actions.set_setting(ui.tree, name, arg)
        except actions.LoomError as e:
            ui.message = str(e)
        else:
            ui.changed(ui.message)
