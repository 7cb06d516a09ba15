"""basecli loom: weave a tree of continuations in the terminal, or grow and read one in a pipeline."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from basecli import options as o

Target = Annotated[Optional[str], typer.Argument(
    help="A prompt ('-' for stdin, @FILE) to start a new tree, or a TREE.json to open.", metavar="PROMPT|TREE.json", show_default=False)]
Children = Annotated[Optional[int], typer.Option("--children", "-N", help="Children per weave (the tree remembers it). Default 4.",
                                                 rich_help_panel="Sampling")]
Print = Annotated[bool, typer.Option("--print", help="Print the tree as indented text and exit (no screen).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the whole tree as JSON (the file's format, docs/loom.md) and exit.")]
PathOpt = Annotated[Optional[str], typer.Option("--path", metavar="NODE", help="Print the text of the path to NODE and exit.")]
Expand = Annotated[Optional[int], typer.Option("--expand", metavar="N", help="Grow the tree without the screen: N children per node, breadth-first.")]
Depth = Annotated[int, typer.Option("--depth", metavar="D", help="With --expand: how many levels.")]
Jsonl = Annotated[bool, typer.Option("--jsonl", help="With --expand: one JSON line per new node as it is made.")]
Out = Annotated[Optional[str], typer.Option("--out", metavar="FILE", help="Where a new tree is saved (default: a new file under BASECLI_HOME/looms/).")]
SAMPLING_HELP = {"max_tokens": "New tokens per child at most. Default: the tree's, else 24.",
                 "temperature": "0 = greedy; < 1 sharper, > 1 flatter. Default: the tree's, else 1.",
                 "seed": "Child k of a weave uses seed S + k (plus the children the node already has): reproducible trees."}
Chat = Annotated[Optional[str], typer.Option("--chat", metavar="TEMPLATE",
                                             help="Start a conversation tree from a chat template (e.g. assistant): the prompt is the human's "
                                                  "message and each child stops at the end of the assistant's turn.")]


@o.grouped
def loom(
    target: Target = None,
    print_: Print = False,
    json_out: JsonOut = False,
    path: PathOpt = None,
    expand: Expand = None,
    depth: Depth = 1,
    jsonl: Jsonl = False,
    out: Out = None,
    chat: Chat = None,
    children: Children = None,
    model: o.ModelChoice = o.model_choice(),
    sampling: o.SamplingFlags = o.template_sampling(fresh_seed=False, help=SAMPLING_HELP),
):
    """Weave a tree of continuations in the terminal, or grow and read one in a pipeline.

    Opens a full-screen loom: w weaves N children of the current node in one batch, t puts a
    cursor on the tokens to branch at the model's alternatives, e edits, ? lists the keys. The
    tree is saved after every change (the status bar names the file). Format: docs/loom.md.

    \b
    Examples:
      basecli loom "The 2031 World Cup final was won by"
      basecli loom ~/.cache/basecli/looms/20261201-194100-the-2031-world-cup.json
      basecli loom "Once upon a time" --expand 4 --depth 2 --jsonl --out tale.json
      basecli loom tale.json --print
      basecli loom tale.json --path 7
      basecli loom "How do tides work?" --chat assistant
    """
    from basecli.errors import UsageError
    from basecli.loom import session

    # the flags given change the tree's own settings (remembered with it); the others leave them as they are
    given = sampling.given
    settings = {**given, "n": children, "stop": [o.unescape(s) for s in given["stop"]] if given["stop"] else None}
    if jsonl and expand is None:
        raise UsageError("--jsonl goes with --expand (it writes the nodes it makes); --json prints a whole tree")
    reading = print_ or json_out or path is not None
    opening = target is not None and session.store.is_tree_file(target)
    if reading and expand is None and not opening:
        raise UsageError("--print, --json and --path read a tree: give a TREE.json")
    if depth != 1 and expand is None:
        raise UsageError("--depth goes with --expand N (how many levels to grow)")
    if expand is not None and (expand < 1 or depth < 1):  # before a tree file is made for nothing
        raise UsageError(f"--expand and --depth must be at least 1, got {expand} and {depth}")
    if out is not None and opening:
        raise UsageError(f"--out names the file of a new tree; {target} is saved where it is")
    if expand is None and not reading and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("the loom's screen needs a terminal; in a pipeline use --print, --json, --path or --expand")
    def backend():
        return model.open(prefix_cache=True)

    grower = backend() if expand is not None else None  # a model that cannot load leaves no tree file behind
    s = session.open_tree(target, out=out, template=chat, settings=settings)
    if expand is not None:
        session.expand(s, grower, expand, depth, jsonl=jsonl)
        if not jsonl:
            session.print_modes(s, print_=not (json_out or path), json_=json_out, path=path)
        return
    if session.print_modes(s, print_=print_, json_=json_out, path=path):
        return
    from basecli.loom.app import LoomApp

    LoomApp(s, backend).run()
    print(f"basecli: loom: saved {len(s.tree.nodes)} nodes to {s.path}", file=sys.stderr)
