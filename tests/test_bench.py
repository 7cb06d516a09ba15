"""basecli bench: the figures it reports are measured on what was asked for."""

from __future__ import annotations

import json

import pytest
import torch

from basecli.analyses import benchmark
from basecli.backends.local import LocalBackend
from basecli.errors import UsageError
from conftest import run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models: threads only add waiting on a busy machine


def test_json_report_follows_every_flag(tiny_dirs):
    r = run_cli("bench", "-m", str(tiny_dirs["llama"]), "--batch", "1,3", "--prompt-tokens", "9", "--new-tokens", "5",
                "--threads", "1", "--no-startup", "--json", "--dtype", "float32", "--device", "cpu", "--engine", "lean", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [d["batch"] for d in report["decode"]] == [1, 3]
    # every row generates new_tokens; the first step is time to first token, not decode
    assert [d["tokens"] for d in report["decode"]] == [1 * 4, 3 * 4]
    assert all(d["tokens_per_s"] > 0 and d["row_tokens_per_s"] == pytest.approx(d["tokens_per_s"] / d["batch"], abs=0.02)
               for d in report["decode"])
    assert report["prompt_tokens"] == 9 and report["new_tokens"] == 5
    assert report["threads"] == 1 and report["engine"] == "lean" and report["dtype"] == "float32" and report["device"] == "cpu"
    assert report["startup"] == {} and report["prefill_tokens_per_s"] > 0 and report["first_token_s"] > 0
    assert report["peak_rss_mb"] > report["weights_mb"] > 0


def test_plain_table_when_piped(tiny_dirs):
    r = run_cli("bench", "-m", str(tiny_dirs["gpt2"]), "--batch", "2", "--prompt-tokens", "4", "--new-tokens", "3",
                "--no-startup", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "lean engine" in lines[0]  # GPT-2 runs on basecli's own forward
    assert "decode, batch 2" in r.stdout and "decode, batch 1" not in r.stdout and "prefill (4 tokens)" in r.stdout
    assert "new process" not in r.stdout  # --no-startup
    assert not r.stdout.lstrip().startswith("{")


def test_startup_figures_time_the_right_commands(monkeypatch):
    calls = []

    def fake(args, env=None, timeout=600):
        calls.append((list(args), env))
        first = [0.9, 0.7, 0.8][sum("complete" in a for a, _ in calls) - 1] if "complete" in args else None
        return 1.5, first, 300.0 + len(calls), json.dumps({"import_s": 0.5, "load_s": 0.25})

    monkeypatch.setattr(benchmark, "run_process_timed", fake)
    out = benchmark.startup_figures("some-model", device="cpu", dtype="float32", engine="lean", threads=2)
    helps = [a for a, _ in calls if a[-1] == "--help"]
    assert len(helps) >= 1 and helps[0] == [*benchmark.entry_point(), "--help"]
    assert [*benchmark.entry_point(), "tokenize", "-e", "cl100k_base", "hi"] in [a for a, _ in calls]
    completes = [(a, e) for a, e in calls if "complete" in a]
    assert len(completes) == 3
    complete, env = completes[0]
    assert complete[complete.index("-n") + 1] == "1" and complete[complete.index("--model") + 1] == "some-model"
    assert env == {"BASECLI_ENGINE": "lean", "OMP_NUM_THREADS": "2"}
    assert calls[-1][0][-2:] == ["-c", "import torch"]
    last_complete = max(i for i, (a, _) in enumerate(calls, start=1) if "complete" in a)
    assert out == {"help_s": 1.5, "tokenize_s": 1.5, "import_s": 0.5, "load_fresh_process_s": 0.25, "complete_first_token_s": 1.5,
                   "complete_first_output_s": 0.7, "complete_peak_rss_mb": 300.0 + last_complete,
                   "torch_import_rss_mb": 300.0 + len(calls)}


def test_first_output_is_timed_when_it_arrives_not_at_exit():
    import sys

    wall, first, _, out = benchmark.run_process_timed(
        [sys.executable, "-c", "import sys, time; print('tok', flush=True); time.sleep(0.6)"])
    assert out == "tok\n" and first is not None and first <= wall - 0.5


def test_run_process_reports_the_childs_peak_memory():
    import sys

    wall, rss, out = benchmark.run_process([sys.executable, "-c", "b = bytearray(96 * 2**20); print(len(b))"])
    assert out.strip() == str(96 * 2**20) and rss >= 96 and wall > 0


def test_startup_rows_are_shown():
    from basecli.commands.bench import table_rows

    startup = {"help_s": 0.2, "tokenize_s": 0.3, "import_s": 1.0, "load_fresh_process_s": 0.3, "complete_first_token_s": 2.1, "complete_peak_rss_mb": 700,
               "complete_first_output_s": 1.9, "torch_import_rss_mb": 200}
    r = benchmark.Report(model="m", engine="lean", device="cpu", dtype="float32", threads=2, prompt_tokens=8, new_tokens=4,
                         load_s=0.1, prefill_tokens_per_s=100, first_token_s=0.05, decode=[], peak_rss_mb=800, weights_mb=500,
                         startup=startup)
    rows = dict(table_rows(r))
    assert rows["basecli --help (new process)"] == "0.20 s"
    assert rows["tokenize -e cl100k_base (new process)"] == "0.30 s"
    assert rows["complete peak RSS"] == "700 MiB (1.40x weights)"
    assert rows["complete -n 1 (start to first token)"] == "1.90 s"
    assert rows["  less import torch alone"] == "200 MiB: 1.00x weights"


@pytest.mark.parametrize("batch", ["1,x", "0", ","])
def test_bad_batch_is_one_line_usage_error(batch):
    r = run_cli("bench", "--batch", batch)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--batch" in r.stderr


def test_prompt_ids_are_exactly_n_tokens_of_the_sample_text(tiny_backends):
    tok = tiny_backends["gpt2"].tokenizer
    once = tok.encode(benchmark.SAMPLE_TEXT)
    for n in (1, 7, len(once) + 5):
        ids = benchmark.prompt_ids(tok, n)
        assert len(ids) == n and ids == (once * 2)[:n]


def test_prompt_longer_than_context_is_refused(tiny_dirs):
    # the tiny models have a 128-token window
    with pytest.raises(UsageError, match="context window"):
        benchmark.run(str(tiny_dirs["gpt2"]), batches=[1], prompt_tokens=120, new_tokens=20, device="cpu", dtype="float32", startup=False)


def test_timed_generation_counts_tokens_after_the_first_step(tiny_backends):
    b = tiny_backends["llama"]
    first, rest, count = benchmark.timed_generation(b.model, b.tokenizer, [[5, 6, 7]] * 2, 6, device="cpu")
    assert count == 2 * 5 and first > 0 and rest > 0


def test_timed_generation_on_the_static_path_counts_the_same(tiny_backends, monkeypatch):
    """Where tokens come back a few steps at a time (the static path, the CUDA default), the first step is timed apart, after an untimed warm-up run."""
    from basecli.engine import static_loop

    b, runs = tiny_backends["llama"], []
    real = static_loop.generate_static
    monkeypatch.setattr(static_loop, "generate_static", lambda *a, **kw: runs.append(a[3][0].max_tokens) or real(*a, **kw))
    monkeypatch.setenv("BASECLI_DECODE", "static")
    first, rest, count = benchmark.timed_generation(b.model, b.tokenizer, [[5, 6, 7]] * 2, 6, device="cpu")
    assert count == 2 * 5 and first > 0 and rest > 0
    assert runs == [1, 1, 6]  # a warm-up run, the timed first step, the timed whole run


def test_weights_mb_counts_tied_weights_once():
    m = torch.nn.Sequential(torch.nn.Embedding(256, 1024), torch.nn.Linear(1024, 256, bias=False))
    m[1].weight = m[0].weight  # tied, as in SmolLM2 and GPT-2
    assert benchmark.weights_mb(m) == pytest.approx(256 * 1024 * 4 / 2**20)


def test_entry_point_is_the_installed_script_and_runs():
    import subprocess

    args = benchmark.entry_point()
    out = subprocess.run([*args, "tokenize", "-e", "cl100k_base", "--count", "hello world"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "2"


def test_threads_flag_survives_the_load_average(tiny_dirs, monkeypatch):
    """LocalBackend picks threads from what else is running; --threads must still be what runs (and is reported)."""
    monkeypatch.delenv("BASECLI_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("basecli.backends.local.others_running", lambda: 8)  # busy: the backend alone would pick 1 thread
    before = torch.get_num_threads()
    try:
        report = benchmark.run(str(tiny_dirs["llama"]), batches=(1,), prompt_tokens=4, new_tokens=2, device="cpu",
                               dtype="float32", engine="lean", threads=2, startup=False)
        assert report.threads == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
