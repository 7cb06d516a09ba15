"""`basecli complete` as users run it: real subprocesses, pipes, exit codes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import invoke, run_cli, sigint_default


def test_pipe_prints_only_the_continuation(tiny_dirs, tiny_backends, reference):
    r = run_cli("complete", "The quick brown fox", "-m", str(tiny_dirs["gpt2"]), "-n", "8", "-t", "0", "--ignore-eos")
    assert r.returncode == 0, r.stderr
    b = tiny_backends["gpt2"]
    ids = b.encode("The quick brown fox")
    want = reference(b.folder).generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert r.stdout == b.tokenizer.decode(want[0, len(ids):].tolist()) + "\n"
    assert "\x1b[" not in r.stdout


def test_json_record_shape(tiny_dirs):
    r = invoke("complete", "Hello", "-m", str(tiny_dirs["llama"]), "-n", "5", "--seed", "3", "--json", "--alternatives", "2",
                "--ignore-eos")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert set(rec) == {"model", "prompt", "completion", "finish_reason", "tokens", "params", "timings"}
    assert rec["prompt"] == "Hello" and rec["finish_reason"] == "length" and len(rec["tokens"]) == 5
    assert rec["completion"] == "".join(t["text"] for t in rec["tokens"])
    tok = rec["tokens"][0]
    assert set(tok) == {"id", "text", "logprob", "alternatives"} and len(tok["alternatives"]) == 2
    assert tok["logprob"] <= tok["alternatives"][0]["logprob"] + 1e-6
    assert rec["params"]["seed"] == 3 and rec["params"]["max_tokens"] == 5
    assert {"load_s", "first_token_s", "total_s", "tokens", "decode_tokens_per_s"} <= set(rec["timings"])


def test_seed_makes_runs_repeatable_and_json_records_the_seed(tiny_dirs):
    args = ("complete", "Hello", "-m", str(tiny_dirs["gpt2"]), "-n", "6", "--json", "--ignore-eos")
    first = json.loads(invoke(*args).stdout)
    again = json.loads(invoke(*args, "--seed", str(first["params"]["seed"])).stdout)
    assert again["completion"] == first["completion"]


def test_stdin_and_file_prompts(tiny_dirs, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("The quick brown fox")
    base = ("-m", str(tiny_dirs["gpt2"]), "-n", "4", "-t", "0", "--ignore-eos")
    a = invoke("complete", "The quick brown fox", *base).stdout
    assert invoke("complete", "-", *base, input="The quick brown fox").stdout == a
    assert invoke("complete", f"@{f}", *base).stdout == a


def test_stop_string_with_escape(tiny_dirs, tiny_backends):
    base = ("complete", "def add(a, b):", "-m", str(tiny_dirs["gpt2"]), "-n", "20", "-t", "0", "--ignore-eos")
    full = invoke(*base).stdout[:-1]
    assert len(full) > 4
    stop = full[2:4]
    r = invoke(*base, "--stop", stop.replace("\n", "\\n"))
    assert r.stdout == full[: full.index(stop)] + "\n"


def test_show_probs_and_alternatives_on_a_terminal(tiny_dirs):
    # rich decides colour from the terminal; FORCE_COLOR makes the subprocess act as one
    r = run_cli("complete", "Hello", "-m", str(tiny_dirs["gpt2"]), "-n", "4", "--alternatives", "3", "--show-probs", "-t", "0",
                env={"NO_COLOR": "", "TTY_COMPATIBLE": "1", "FORCE_COLOR": "1"})
    assert r.returncode == 0, r.stderr
    assert "alternatives" in r.stdout  # the table is printed when asked, even in a pipe
    assert len([l for l in r.stdout.splitlines() if l.strip()]) >= 5


def test_too_long_prompt_is_an_error_or_truncated(tiny_dirs):
    long = "The quick brown fox jumps over the lazy dog. " * 40  # far beyond the tiny models' 128 positions
    r = invoke("complete", long, "-m", str(tiny_dirs["gpt2"]), "-n", "3")
    assert r.returncode == 2 and "context window" in r.stderr and "--truncate" in r.stderr
    assert "Traceback" not in r.stderr
    r = invoke("complete", long, "-m", str(tiny_dirs["gpt2"]), "-n", "3", "--truncate", "--ignore-eos")
    assert r.returncode == 0 and "cut" in r.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (("-m", "no-such-model"), "unknown model"),
        (("-m", "/no/such/dir"), "not found"),
        (("-m", "/no/such/file.gguf"), "GGUF file not found"),
        (("-m", "someorg/somemodel"), "HF_HUB_OFFLINE"),
        (("-t", "-1"), "--temperature"),
        (("--top-p", "0"), "--top-p"),
        (("--device", "tpu"), "--device"),
        (("--dtype", "int3"), "--dtype"),
        (("--stop", ""), "--stop"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tiny_dirs, args, needle):
    if args[0] in ("-t", "--top-p", "--device", "--dtype", "--stop"):
        args = ("-m", str(tiny_dirs["gpt2"])) + args
    r = invoke("complete", "hi", *args)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_unreadable_and_binary_prompt_files(tmp_path, tiny_dirs):
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"\x00\x01\x02")
    for arg, needle in [(f"@{tmp_path / 'missing.txt'}", "not found"), (f"@{binary}", "binary")]:
        r = invoke("complete", arg, "-m", str(tiny_dirs["gpt2"]))
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_pickle_weights_need_opt_in(tmp_path, tiny_dirs):
    import shutil

    d = tmp_path / "pickled"
    shutil.copytree(tiny_dirs["gpt2"], d)
    state = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    torch.save(state, d / "pytorch_model.bin")
    r = invoke("complete", "hi", "-m", str(d), "-n", "2")
    assert r.returncode == 2 and "--allow-pickle" in r.stderr
    r = invoke("complete", "hi", "-m", str(d), "-n", "2", "--allow-pickle")
    assert r.returncode == 0, r.stderr


def test_closed_pipe_ends_quietly(tiny_dirs):
    cmd = f"{sys.executable} -m basecli complete 'Hello' -m {tiny_dirs['gpt2']} -n 100 --ignore-eos | head -c 3"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=120)  # bytes: head may split a character
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode in (0, 141) and "Traceback" not in err and "Broken pipe" not in err, err


def test_ctrl_c_keeps_what_was_printed(tiny_dirs):
    p = subprocess.Popen([sys.executable, "-m", "basecli", "complete", "Hello", "-m", str(tiny_dirs["gpt2"]), "-n", "100000",
                          "--ignore-eos", "--truncate"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=sigint_default)
    first = p.stdout.read(5)  # generation is under way
    p.send_signal(signal.SIGINT)
    rest, err = p.communicate(timeout=60)
    assert len(first) == 5 and p.returncode == 130
    assert "Traceback" not in err and "interrupted" in err


def test_help_lists_complete_flags():
    r = invoke("complete", "--help")
    for flag in ("--max-tokens", "--temperature", "--top-k", "--top-p", "--min-p", "--repetition-penalty", "--seed", "--stop",
                 "--json", "--show-probs", "--alternatives", "--ignore-eos", "--truncate"):
        assert flag in r.stdout


def test_show_probs_colours_each_token_by_its_probability_band(monkeypatch):
    """On a terminal, --show-probs styles each piece by its probability band and prints the legend."""
    import io
    import math

    from rich.console import Console

    from basecli.views import render
    from basecli.events import Event

    monkeypatch.delenv("NO_COLOR", raising=False)  # the autouse fixture sets it; this test is about colour
    out, err = io.StringIO(), io.StringIO()
    consoles = {False: Console(file=out, force_terminal=True, color_system="standard", soft_wrap=True, highlight=False),
                True: Console(file=err, force_terminal=True, color_system="standard", soft_wrap=True, highlight=False)}
    monkeypatch.setattr(render, "console", lambda stderr=False: consoles[stderr])
    monkeypatch.setattr(render, "is_tty", lambda: True)
    events = [Event(0, 0, 1, "A", "A", math.log(0.95)), Event(0, 1, 2, "B", "B", math.log(0.005), finish_reason="length")]
    render.stream_completion("P", events, show_probs=True)
    coloured = out.getvalue()
    assert render.prob_style(math.log(0.95)) == "bright_green" and render.prob_style(math.log(0.005)) == "red"
    assert "\x1b[92mA" in coloured and "\x1b[31mB" in coloured  # bright green and red
    assert "p≥0.9" in err.getvalue()  # the legend
    out.truncate(0), out.seek(0), err.truncate(0), err.seek(0)
    render.stream_completion("P", events, show_probs=False)
    assert "\x1b[92m" not in out.getvalue() and "\x1b[31m" not in out.getvalue() and err.getvalue() == ""


def test_sampling_flags_reach_the_sampler(tiny_dirs):
    """Each knob, from the command line, changes what is sampled as its definition says."""
    base = ("complete", "The quick brown fox", "-m", str(tiny_dirs["llama"]), "-n", "12", "--ignore-eos", "--json")
    tokens = lambda *a: [t["id"] for t in json.loads(invoke(*base, *a).stdout)["tokens"]]  # noqa: E731
    greedy = tokens("-t", "0")
    hot = [tokens("-t", "3", "--seed", str(s)) for s in range(3)]
    assert any(h != greedy for h in hot)  # a hot temperature alone does wander
    for flag in (("--top-k", "1"), ("--top-p", "0.0001"), ("--min-p", "0.999")):
        assert tokens("-t", "3", "--seed", "0", *flag) == greedy, flag  # each leaves only the top token
    long = ("-t", "0", "-n", "40")
    plain, penalised = tokens(*long), tokens(*long, "--repetition-penalty", "1000")
    assert len(set(plain)) < len(plain)  # greedy on this model loops...
    assert len(set(penalised)) == len(penalised)  # ...a huge penalty on seen tokens stops every repeat
