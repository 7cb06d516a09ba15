"""The full-screen loom: the path's text on the left, the tree on the right, a status bar below.

State and drawing live here; what each key does is in loom/keys.py, and every change to the
tree goes through loom/actions.py and is saved at once (loom/store.py). Generation runs on a
worker thread so the screen stays live; its result enters the tree on the app's own thread.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
from typing import Callable

from prompt_toolkit.application import Application
from prompt_toolkit.layout import ConditionalContainer, HSplit, Layout, VSplit, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.layout.dimension import Dimension as D
from prompt_toolkit.filters import Condition
from prompt_toolkit.styles import Style
from prompt_toolkit.widgets import TextArea

from basecli.loom import actions, view, weave
from basecli.loom.store import Store
from basecli.views.render import BANDS

# --show-probs' bands (views/render.py) in prompt_toolkit's colour names
COLOURS = {"bright_green": "ansibrightgreen", "green": "ansigreen", "yellow": "ansiyellow", "dark_orange": "#ff8700",
           "red": "ansired"}
STYLE = Style.from_dict({
    "prompt": "#888888", "current": "bold", "boundary": "#5f87af", "cursor": "reverse", "stale": "italic #af875f",
    "tree.current": "reverse", "tree.path": "bold", "status": "reverse", "status.busy": "reverse ansiyellow",
    "panel": "bg:#262626", "panel.title": "bold", "live": "#87afd7",
})
HELP = ("←/h parent  →/l child  ↑/k ↓/j siblings   w weave  c continue  t tokens (branch)   e edit  a add  d delete  "
        "x prune   b bookmark  ' next mark   f search  n next hit   p probabilities  z fold  Z tree  s settings  "
        ": command (/n 4, /temp 0.8, /go 12)   q quit")


def band(logprob: float | None) -> str:
    if logprob is None:
        return ""
    p = math.exp(logprob)
    return "fg:" + COLOURS[next(style for bound, style in BANDS if p >= bound)]


class LoomApp:
    def __init__(self, store: Store, backend: Callable, *, input=None, output=None):
        self.store, self.tree = store, store.tree
        self._backend_factory, self._backend = backend, None
        self.mode = "normal"  # normal, tokens, edit, command, confirm
        self.token = 0  # the token cursor in tokens mode
        self.show_probs = False
        self.show_tree, self.show_settings, self.show_help = True, False, False
        self.folded: set[int] = set()
        self.message = f"saved after every change to {store.path}"  # where the tree is, in full, once
        self.busy: str | None = None
        self.live: weave.Rows | None = None
        self._cancel = threading.Event()
        self.hits: list[int] = []
        self.editing: tuple | None = None  # (purpose, node, token index)
        self.confirming: Callable | None = None
        self.moved = False  # the reader moved since the last save

        self.editor = TextArea(multiline=True, wrap_lines=True, height=D(min=3, max=10), style="class:panel")
        self.command = TextArea(multiline=False, prompt=":", height=1, accept_handler=self._on_command)
        self.read_window = Window(FormattedTextControl(self.read_fragments, focusable=True), wrap_lines=True,
                                  always_hide_cursor=True)
        tree_window = Window(FormattedTextControl(self.tree_fragments), wrap_lines=False, always_hide_cursor=True,
                             width=lambda: D.exact(self.tree_width()))
        mode = lambda m: Condition(lambda: self.mode == m)  # noqa: E731
        body = VSplit([HSplit([self.read_window]),
                       ConditionalContainer(VSplit([Window(width=1, char="│", style="class:boundary"), tree_window]),
                                            filter=Condition(lambda: self.show_tree))])
        panel = Window(FormattedTextControl(self.panel_fragments), height=D(max=10), wrap_lines=True, style="class:panel")
        root = HSplit([
            body,
            ConditionalContainer(panel, filter=Condition(lambda: bool(self.panel_fragments()))),
            ConditionalContainer(self.editor, filter=mode("edit")),
            ConditionalContainer(self.command, filter=mode("command")),
            Window(FormattedTextControl(self.status_fragments), height=1, style="class:status"),
        ])
        from basecli.loom.keys import bindings

        self.app = Application(layout=Layout(root, focused_element=self.read_window), key_bindings=bindings(self),
                               style=STYLE, full_screen=True, input=input, output=output, mouse_support=False)

    # --- the backend, loaded on first use (reading and editing a tree need no model) -------------

    def backend(self):
        if self._backend is None:
            self._backend = self._backend_factory()
        return self._backend

    # --- drawing ---------------------------------------------------------------------------------

    def read_fragments(self):
        tree, out = self.tree, []
        path = tree.path(tree.current)
        for k, node_id in enumerate(path):
            node = tree[node_id]
            if k:
                out.append(("class:boundary", "▏"))
            base = "class:prompt" if node.parent is None else "class:stale" if node.stale else ""
            if node_id == tree.current:
                base += " class:current"
            out += self._node_fragments(node, base, cursor=self.token if self.mode == "tokens" and node_id == tree.current else None)
        if self.live is not None and len(self.live.text) == 1:
            out.append(("class:live", self.live.text[0]))
        if not any(s == "[SetCursorPosition]" for s, _ in out):
            out.append(("[SetCursorPosition]", ""))
        return out

    def _node_fragments(self, node, base: str, cursor: int | None):
        if not node.tokens or not (self.show_probs or cursor is not None):
            return [(base, node.text)]
        out, at = [], 0
        for k, (start, end) in enumerate(node.token_spans()):
            if start > at:
                out.append((base, node.text[at:start]))
            style = base + (" " + band(node.tokens[k].logprob) if self.show_probs else "")
            if k == cursor:
                out.append(("[SetCursorPosition]", ""))
                style += " class:cursor"
            out.append((style, node.text[start:end]))
            at = end
        out.append((base, node.text[at:]))
        return out

    def tree_width(self) -> int:
        """Almost half the screen, within reason: the text is what is read, the tree is for finding one's way."""
        return max(30, min(64, int(self.app.output.get_size().columns * 0.45)))

    def tree_fragments(self):
        tree, out = self.tree, []
        on_path = set(tree.path(tree.current))
        out.append(("class:panel.title", f" path {view.breadcrumbs(tree, tree.current)}\n"))
        for node_id, line in view.outline(tree, folded=self.folded, width=self.tree_width() - 1):
            if node_id == tree.current:
                out += [("[SetCursorPosition]", ""), ("class:tree.current", line + "\n")]
            else:
                out.append(("class:tree.path" if node_id in on_path else "", line + "\n"))
        return out

    def panel_fragments(self):
        if self.show_help:
            return [("class:panel.title", "keys  "), ("", HELP)]
        if self.live is not None and len(self.live.text) > 1:
            return [("class:panel.title", f"weaving {len(self.live.text)}\n")] + [
                ("class:live", f"{i + 1}: {view.shown(t)[-150:]}\n") for i, t in enumerate(self.live.text)]
        if self.mode == "tokens":
            return self._alternatives()
        if self.show_settings:
            s = self.tree.settings
            line = "  ".join(f"{k}={s[k]}" for k in ("n", "max_tokens", "temperature", "top_k", "top_p", "min_p",
                                                      "repetition_penalty", "seed", "stop"))
            return [("class:panel.title", "settings (this tree)  "), ("", line + "\n"),
                    ("", "change: :n 4  :max 32  :temp 0.8  :top-k 40  :top-p 0.9  :min-p 0.05  :rep 1.1  :seed 7|off  :stop \\n|off")]
        return []

    def _alternatives(self):
        node = self.tree[self.tree.current]
        if not node.tokens:
            return []
        tok = node.tokens[self.token]
        out = [("class:panel.title", f"token {self.token + 1}/{len(node.tokens)} {view.shown(tok.text)!r} "
                                     f"p={'?' if tok.logprob is None else f'{math.exp(tok.logprob):.3f}'}   1-{len(tok.top)} branch there with an alternative, "
                                     "i type instead, ←/→ move, Esc back\n")]
        for k, (tid, text, lp) in enumerate(tok.top):
            chosen = " (chosen)" if tid == tok.id else ""
            out.append((band(lp), f"  {k + 1}  {math.exp(lp):6.3f}  {view.shown(text)!r}{chosen}\n"))
        return out

    def status_fragments(self):
        """What just happened first (it is what the eye looks for), then where the reader is and the file."""
        t, node = self.tree, self.tree[self.tree.current]
        where = f"node {node.id} · depth {t.depth(node.id)} · {len(t.children[node.id])} children · " \
                f"n={t.settings['n']} max={t.settings['max_tokens']} T={t.settings['temperature']} · {self.store.path.name} "
        if self.busy:
            return [("class:status.busy", f" {self.busy} (Esc stops) "), ("class:status", " " + where)]
        if self.mode == "edit":
            return [("class:status", " Ctrl-S or Alt-Enter saves · Esc cancels · " + where)]
        return [("class:status", f" {self.message or '? keys'} · {where}")]

    # --- doing -----------------------------------------------------------------------------------

    def changed(self, message: str = "") -> None:
        """After every change: save, say it."""
        self.store.changed()
        self.message, self.moved = message, False

    def act(self, fn: Callable, *args, message: str = "", move: bool = False, **kw):
        """Run an action; a LoomError is shown, not raised. A move only changes where the reader is: it is saved
        with the next change or on quitting, so walking a big tree does not rewrite its file at every key."""
        try:
            out = fn(self.tree, *args, **kw)
        except actions.LoomError as e:
            self.message = str(e)
            return None
        if move:
            self.moved, self.message = True, message
        else:
            self.changed(message)
        return out

    def generate(self, kind: str) -> None:
        """Weave (n children) or continue the current node, on a worker thread."""
        if self.busy:
            return
        node_id = self.tree.current
        n = int(self.tree.settings["n"]) if kind == "weave" else 1
        self.busy = f"{'loading the model for ' if self._backend is None else ''}{kind} ×{n}"
        self.live, self.message = None, ""
        self._cancel.clear()
        self.app.create_background_task(self._generate(kind, node_id, n))

    async def _generate(self, kind: str, node_id: int, n: int) -> None:
        import asyncio

        said = io.StringIO()

        def progress(ev, rows):
            self.live = rows
            self.busy = f"{kind} ×{n}: {sum(len(t) for t in rows.tokens)} tokens"
            self.app.invalidate()

        def work():
            with contextlib.redirect_stderr(said):  # notes and warnings would scribble over the screen
                backend = self.backend()
                return backend.name, weave.generate(backend, self.tree, node_id, n, on_event=progress,
                                                    cancelled=self._cancel.is_set)

        try:
            name, rows = await asyncio.get_running_loop().run_in_executor(None, work)
        except weave.Cancelled:
            self.message = "stopped: nothing added"
        except Exception as e:  # a server or model error: the tree is untouched, the app goes on
            self.message = f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        else:
            if node_id in self.tree:  # it may have been deleted meanwhile
                if kind == "weave":
                    made = weave.add_rows(self.tree, node_id, rows, name)
                    self.tree.current = made[0].id
                else:
                    self.tree.current = weave.add_continuation(self.tree, node_id, rows, name).id
                self.changed(f"{kind}: {n} new" if kind == "weave" else "continued")
        finally:
            self.busy, self.live = None, None
            last = [ln for ln in said.getvalue().splitlines() if ln.strip()]
            if last and not self.message.startswith("error"):
                self.message = last[-1].removeprefix("basecli: ")
            self.app.invalidate()

    def cancel(self) -> None:
        self._cancel.set()

    def quit(self) -> None:
        """Stop any generation (nothing half-made is added), save where the reader is, leave."""
        self.cancel()
        self.save_position()
        self.app.exit()

    def open_editor(self, purpose: str, text: str = "", token: int | None = None) -> None:
        self.editing = (purpose, self.tree.current, token)
        self.editor.text = text
        self.editor.buffer.cursor_position = len(text)
        self.mode = "edit"
        self.app.layout.focus(self.editor)

    def close_editor(self, save: bool) -> None:
        purpose, node_id, token = self.editing
        text = self.editor.text
        self.mode, self.editing = "normal", None
        self.app.layout.focus(self.read_window)
        if not save or node_id not in self.tree:
            self.message = "cancelled"
            return
        if purpose == "edit":
            below = len(self.tree.descendants(node_id))
            if self.act(actions.edit, node_id, text) is not None:
                self.message = f"edited; {below} below marked stale" if below else "edited"
        elif purpose == "add":
            if self.tree.chat and not text.rstrip().endswith(f"{self.tree.chat['assistant']}:"):
                text = text.rstrip("\n") + f"\n{self.tree.chat['assistant']}:"  # the open turn the model writes
            node = self.act(actions.add_text, node_id, text, message="added")
            if node is not None:
                self.tree.current = node.id
                self.changed("added")
        elif purpose == "branch":
            node = self.act(actions.branch_at_token, node_id, token, text=text)
            if node is not None:
                self.tree.current = node.id
                self.changed(f"branched at token {token + 1} with typed text")

    def _on_command(self, buffer) -> bool:
        from basecli.loom.keys import run_command

        self.mode = "normal"
        self.app.layout.focus(self.read_window)
        run_command(self, buffer.text.strip())
        return False

    def run(self) -> None:
        try:
            self.app.run()
        finally:
            self.save_position()

    def save_position(self) -> None:
        if self.moved:
            self.changed(self.message)


def screen_text(app: Application) -> str:
    """What the last render put on the screen, as lines of text (tests and the README's capture)."""
    screen = app.renderer._last_screen
    size = app.output.get_size()
    if screen is None:
        return ""
    rows = []
    for y in range(size.rows):
        line = screen.data_buffer[y]
        rows.append("".join(line[x].char for x in range(size.columns)).rstrip())
    return "\n".join(rows).rstrip() + "\n"
