"""End to end: the real `basecli loom` in a pseudo-terminal with the tiny Llama, as a person uses it
(the issue's "done means"): weave three levels of four children, branch at a token's alternative, quit,
reopen the file and carry on. Keys go in through the terminal; the tree comes back through its file,
which is saved after every change (so the test waits on the file, as a crash would find it)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from basecli.loom import store

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")


class Terminal:
    def __init__(self, args: list[str], rows: int = 30, cols: int = 100):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", BASECLI_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "basecli", *args], stdin=slave, stdout=slave, stderr=slave,
                                     env=env, start_new_session=True)
        os.close(slave)
        self.output = b""

    def read(self, seconds: float = 0.2) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                break
            try:
                self.output += os.read(self.master, 65536)
            except OSError:
                break

    def keys(self, text: str) -> None:
        os.write(self.master, text.encode())
        self.read(0.05)  # keys reach the app in order; what they do is waited for with wait_for

    def wait_for(self, what, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.read(0.2)
            if what():
                return
        raise AssertionError(f"timed out; the screen said: {self.output[-2000:]!r}")

    def close(self) -> int:
        try:
            code = self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.read(0.2)
            os.close(self.master)
        return code


def nodes_in(path) -> int:
    try:
        return len(store.load(path).nodes)
    except Exception:
        return 0


def test_weave_three_levels_branch_quit_reopen_carry_on(tiny_dirs, tmp_path):
    out = tmp_path / "cup.json"
    model = ["-m", str(tiny_dirs["llama"]), "--dtype", "float32"]
    term = Terminal(["loom", "The 2031 World Cup final was won by", "--out", str(out), "-n", "6", "-s", "11", *model])
    term.wait_for(lambda: out.exists() and b"saved after every change" in term.output)
    for level in range(3):  # four children at each level, going down the first one each time
        term.keys("w")
        term.wait_for(lambda: nodes_in(out) == 1 + 4 * (level + 1))
    deep = store.load(out).current
    term.keys("t")
    term.keys("l")
    term.keys("2")  # the second alternative at the second token
    term.wait_for(lambda: nodes_in(out) == 14)
    term.keys("q")
    assert term.close() == 0
    assert b"saved 14 nodes" in term.output

    tree = store.load(out)
    branch = tree[tree.current]
    src = tree[deep]
    assert branch.branched_from == {"node": deep, "token": 1}
    assert branch.text == src.tokens[0].text + src.tokens[1].top[1][1]
    assert [tree.depth(i) for i in tree.children[tree.root]] == [1] * 4
    assert sum(1 for i in tree.nodes if tree.depth(i) == 3) == 5  # four woven, one branched

    again = Terminal(["loom", str(out), *model])  # reopen: the reader is where they left off (w weaves there)
    again.wait_for(lambda: b"saved after every change" in again.output)
    again.keys("w")
    again.wait_for(lambda: nodes_in(out) == 18)
    again.keys("q")
    assert again.close() == 0
    assert store.load(out).children[branch.id] == [14, 15, 16, 17]


def test_kill_9_during_a_generation_loses_only_that_generation(tiny_dirs, tmp_path):
    """What was done before is on disk; the generation in flight is not. The first weave of a session loads the
    model (torch's import alone takes seconds), which makes a window to kill it in that does not depend on luck."""
    import signal

    out = tmp_path / "k.json"
    term = Terminal(["loom", "Once", "--out", str(out), "-m", str(tiny_dirs["llama"]), "--dtype", "float32"])
    term.wait_for(lambda: out.exists() and b"saved after every change" in term.output)
    term.keys("a")
    term.keys(" upon a time\x13")  # a typed child, saved with Ctrl-S
    term.keys(":n 3\r")
    term.wait_for(lambda: nodes_in(out) == 2 and store.load(out).settings["n"] == 3)
    term.output = b""
    os.write(term.master, b"w")
    term.wait_for(lambda: b"Esc stops" in term.output)
    term.proc.send_signal(signal.SIGKILL)
    term.close()
    tree = store.load(out)  # a whole file, with everything before the generation in flight
    assert [tree[i].text for i in sorted(tree.nodes)] == ["Once", " upon a time"] and tree.settings["n"] == 3
