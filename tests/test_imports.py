"""No import circles inside basecli: every module's imports, those inside functions included, read with ast.

An import inside a function hides a circle from Python at start-up, not from a reader: each module
should depend on the ones below it, so a helper lives in the module that owns it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "basecli"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The basecli modules `path` imports anywhere in its body: `import a.b`, `from a import b` (b a module or a
    name in a), and relative forms."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            # the longest basecli module the target names: a submodule, else the module holding the name
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    edges = {module_name(p): imports(p, modules) for p in paths}
    # a package's __init__ is where `from basecli.x import y` lands for a name y; a package importing its
    # own submodules is how Python packages work, not a circle
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), as a sorted list."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_reader_sees_every_form_of_import(tmp_path, monkeypatch):
    """The parser is checked on a made-up package: a circle through a function-level relative import is found."""
    pkg = tmp_path / "basecli"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from basecli.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import thing\n")
    (pkg / "c.py").write_text("import basecli.a\n")
    (pkg / "d.py").write_text("from basecli import a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert circles(graph()) == [["basecli.a", "basecli.c", "basecli.sub.b"]]
    assert graph()["basecli.d"] == {"basecli.a"}


def test_no_import_circles():
    assert circles(graph()) == []
