"""CPU thread choice: torch's workers must not fight other processes for the cores."""

from __future__ import annotations

import os

import pytest

from basecli.backends import local
from basecli.errors import UsageError


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.delenv("BASECLI_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)


@pytest.mark.parametrize("load,threads", [(0.0, 2), (0.4, 2), (1.0, 1), (1.7, 1), (9.0, 1)])
def test_idle_cores_by_load_average_where_the_kernel_says_nothing(two_cores, monkeypatch, load, threads):
    monkeypatch.setattr(local, "others_running", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert local.pick_threads() == threads


@pytest.mark.parametrize("running,threads", [(0, 2), (1, 1), (5, 1)])
def test_idle_cores_right_now_win_over_the_load_average(two_cores, monkeypatch, running, threads):
    """A run that ended seconds ago still weighs on the load average; what runs now decides."""
    monkeypatch.setattr(local, "others_running", lambda: running)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0) if running == 0 else (0.1, 0.1, 0.1))
    assert local.pick_threads() == threads


def test_others_running_reads_the_kernel_count(monkeypatch, tmp_path):
    """procs_running counts this process too; the most seen in the looks is kept."""
    import builtins

    counts = iter([b"2", b"3", b"1"])
    real_open = builtins.open

    def fake_open(path, *a, **k):
        if path == "/proc/stat":
            f = tmp_path / "stat"
            f.write_bytes(b"cpu  1 2 3\nprocs_running " + next(counts) + b"\nprocs_blocked 0\n")
            return real_open(f, *a, **k)
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    assert local.others_running(gap=0) == 2
    monkeypatch.setattr(builtins, "open", lambda *a, **k: (_ for _ in ()).throw(OSError("no /proc")))
    assert local.others_running(gap=0) is None


def test_explicit_settings_win(two_cores, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setenv("BASECLI_THREADS", "2")
    assert local.pick_threads() == 2
    monkeypatch.delenv("BASECLI_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert local.pick_threads() is None  # torch reads OMP_NUM_THREADS itself
    monkeypatch.setenv("BASECLI_THREADS", "two")
    with pytest.raises(UsageError, match="BASECLI_THREADS"):
        local.pick_threads()


def test_backend_applies_the_choice(two_cores, monkeypatch, tiny_dirs):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("BASECLI_THREADS", "1")
    try:
        local.LocalBackend(str(tiny_dirs["gpt2"]), device="cpu", dtype="float32")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
