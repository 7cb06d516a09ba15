"""Shell completion: `basecli --show-completion SHELL` prints a script that, sourced in that shell,
completes command names and each command's options; `--install-completion SHELL` writes it where
the shell reads it. Checked by running the real shells on the scripts (fish and zsh when installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# typer detects the shell from the parent process unless told not to; then the options take a shell name
NO_DETECTION = {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}


def basecli(*args: str, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **NO_DETECTION, "PYTHONPATH": str(ROOT)}
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "basecli", *args], capture_output=True, text=True, env=env, timeout=60)


def bash_completes(*words: str) -> list[str]:
    """What bash offers after `basecli WORDS...` (the last word is the one being completed)."""
    script = basecli("--show-completion", "bash").stdout
    # the script calls `basecli`; point that at this checkout
    shim = f'basecli() {{ PYTHONPATH={ROOT} {sys.executable} -m basecli "$@"; }}\n'
    probe = (f"{shim}{script}\nCOMP_WORDS=(basecli {' '.join(repr(w) for w in words)}); "
             f"COMP_CWORD={len(words)}; _basecli_completion basecli; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60)
    return out.stdout.split()


def test_help_lists_the_completion_options():
    listed = basecli("--help").stdout
    assert "--install-completion" in listed and "--show-completion" in listed


def test_bash_completes_commands_and_their_options():
    assert bash_completes("tok") == ["tokenize"]
    assert set(bash_completes("re")) == {"resample", "recite"}
    assert bash_completes("complete", "--max") == ["--max-tokens"]
    assert bash_completes("template", "") == ["check"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_show_completion_prints_a_script_the_shell_accepts(shell):
    out = basecli("--show-completion", shell)
    assert out.returncode == 0 and "_BASECLI_COMPLETE" in out.stdout
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed here; the script was printed but not run")
    check = {"bash": ["bash", "-n"], "zsh": ["zsh", "-n"], "fish": ["fish", "--no-execute"]}[shell]
    parsed = subprocess.run([*check], input=out.stdout, capture_output=True, text=True, timeout=30)
    assert parsed.returncode == 0, parsed.stderr


def test_install_completion_writes_the_script_where_bash_reads_it(tmp_path):
    out = basecli("--install-completion", "bash", home=tmp_path)
    assert out.returncode == 0, out.stderr
    installed = list(tmp_path.rglob("basecli*"))
    assert installed and "_basecli_completion" in installed[0].read_text()
    assert str(installed[0].relative_to(tmp_path)) in (tmp_path / ".bashrc").read_text()


def test_completing_builds_only_the_command_being_completed():
    """A shell asks on every Tab press: like any run, only the named command's module is imported."""
    probe = ("import sys\nsys.argv = ['basecli']\nfrom basecli.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.startswith('basecli.commands.')), file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_BASECLI_COMPLETE": "complete_bash",
           "COMP_WORDS": "basecli tokenize --enc", "COMP_CWORD": "2"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.split() == ["--encoding"]
    assert out.stderr.strip().splitlines()[-1] == "['basecli.commands.tokenize']"


@pytest.mark.skipif(shutil.which("fish") is None or shutil.which("basecli") is None, reason="needs fish and basecli on PATH")
def test_fish_completes_commands_and_their_options(tmp_path):
    script = tmp_path / "basecli.fish"
    script.write_text(basecli("--show-completion", "fish").stdout)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    out = subprocess.run(["fish", "--no-config", "-c", f"source {script}; complete -C 'basecli tok'; complete -C 'basecli complete --max'"],
                         capture_output=True, text=True, env=env, timeout=60)
    offered = [line.split("\t")[0] for line in out.stdout.splitlines()]
    assert offered == ["tokenize", "--max-tokens"], out.stderr
