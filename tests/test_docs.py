"""README.md and docs/: every shown output is what its command prints (docs/outputs.py), and the guide stays a guide."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("doc_outputs", ROOT / "docs" / "outputs.py")
outputs = importlib.util.module_from_spec(_spec)
sys.modules["doc_outputs"] = outputs  # dataclasses look their module up there
_spec.loader.exec_module(outputs)

SHOWN = [item for path in outputs.documents() for item in outputs.parse(path)]


@pytest.fixture(scope="module")
def warmed_real_home():
    """The shown outputs are of the embedded model as README's set-up leaves it: the real cache, warmed
    once (a first run notes on stderr that it builds the tokenizer, which no shown output includes)."""
    from conftest import REAL_HOME

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BASECLI_HOME", str(REAL_HOME))
        outputs.run("basecli tokenize --count warm")
    return REAL_HOME


@pytest.fixture
def real_home(warmed_real_home, monkeypatch):
    monkeypatch.setenv("BASECLI_HOME", str(warmed_real_home))


def _id(item) -> str:
    return f"{item.where()} {item.command[:40]}"


@pytest.mark.parametrize("item", [s for s in SHOWN if s.fast], ids=_id)
def test_fast_outputs_are_what_the_commands_print(item, real_home):
    assert outputs.check([item]) == []


@pytest.mark.slow
@pytest.mark.parametrize("item", [s for s in SHOWN if not s.fast], ids=_id)
def test_model_outputs_are_what_the_commands_print(item, real_home):
    assert outputs.check([item]) == []


def test_an_output_edited_by_hand_is_caught(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("Intro.\n\n```console\n$ printf 'a\\nb\\n'\na\nb\n$ echo done\ndone\n```\n")
    assert outputs.check(outputs.parse(doc)) == []
    doc.write_text(doc.read_text().replace("\nb\n", "\nB\n"))
    problems = outputs.check(outputs.parse(doc))
    assert len(problems) == 1 and "page.md:4" in problems[0] and "-B" in problems[0] and "+b" in problems[0]
    assert outputs.main(["--check", str(doc)]) == 1
    # durations and speeds are not compared: they differ from run to run
    doc.write_text("```console\n$ echo took 1.25 s, 13 tok/s\ntook 9.5 s, 2 tok/s\n```\n")
    assert outputs.check(outputs.parse(doc)) == []


def test_a_real_doc_block_edited_by_hand_is_caught(tmp_path):
    item = next(s for s in SHOWN if s.fast and s.path.name == "README.md" and s.output)
    text = item.path.read_text().split("\n")
    text[item.start] = text[item.start] + " (edited)"
    doc = tmp_path / "README.md"
    doc.write_text("\n".join(text))
    assert any(item.command in p for p in outputs.check([s for s in outputs.parse(doc) if s.command == item.command]))


def test_regenerating_writes_what_the_commands_print(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("```console\n$ echo one; echo two >&2\nstale\n$ false || echo \\\n  joined\n```\n"
                   "<!-- output: printf '| a |\\n' -->\nold\n<!-- /output -->\nend\n")
    assert outputs.main([str(doc)]) == 0
    assert doc.read_text() == ("```console\n$ echo one; echo two >&2\none\ntwo\n$ false || echo \\\n  joined\njoined\n```\n"
                               "<!-- output: printf '| a |\\n' -->\n\n*Made by* `printf '| a |\\n'`:\n\n| a |\n\n"
                               "<!-- /output -->\nend\n")
    assert outputs.main(["--check", str(doc)]) == 0


def test_commands_that_load_a_model_are_not_fast():
    def fast(command):
        return outputs.Shown(Path("x"), command, "", 0, 0, False).fast

    assert fast("basecli tokenize -e cl100k_base 'hi'") and fast("basecli complete --help")
    assert fast("basecli tokenize -e gpt2 --ids hi | basecli tokenize -e gpt2 --decode -")
    assert not fast("basecli complete hi") and not fast("echo hi | basecli score -")
    assert not fast("python docs/demos/recitation_scan.py")


def test_a_prompt_line_appears_only_in_checked_console_blocks():
    for path in outputs.documents():
        fence = None
        for number, line in enumerate(path.read_text().split("\n"), 1):
            if line.strip().startswith("```"):
                fence = None if fence else line.strip()
            elif fence and fence != "```console" and line.startswith("$ "):
                pytest.fail(f"{path.name}:{number}: a shown command with its output in a {fence} block is never checked")


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_readme_is_a_guide_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 300
    for path in outputs.documents():
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", path.read_text()):
            if target.startswith("http"):
                continue
            linked = (path.parent / target) if target else path
            assert linked.exists(), f"{path.name} links {target}, which does not exist"
            if anchor:
                assert anchor in _anchors(linked), f"{path.name} links {target}#{anchor}, which has no such heading"


def test_ci_runs_readmes_commands_exactly():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    install = next(line for line in readme.splitlines() if line.startswith("python -m pip install"))
    tests = next(line for line in readme.splitlines() if line.startswith("python -m pytest"))
    assert install.endswith('basecli complete "Here\'s my top-10 list of the top landmarks to see in Paris:" -n 40')
    assert install in ci
    assert tests in ci


def test_a_crash_is_never_written_as_an_example(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("```console\n$ python -c 'raise ValueError(1)'\n```\n")
    with pytest.raises(RuntimeError, match="crashed"):
        outputs.main([str(doc)])
    assert "Traceback" not in doc.read_text()
