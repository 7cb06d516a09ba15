"""A server that misbehaves in every way, and Ctrl-C: what the user had is kept, the exit code
says what happened (docs/errors.md), and the API key never appears anywhere (issue 15)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import invoke, sigint_default  # noqa: E402
from fake_openai import ECHO_KEY, FakeServer, choice, reply, sse  # noqa: E402

KEY = "sk-live-0a1b2c3d4e5f6a7b8c9d"
LEAKY = f"Bearer-echo {ECHO_KEY}"


def server() -> FakeServer:
    fake = FakeServer()
    fake.on("POST", "/tokenize", reply(body={"tokens": [1, 2]}))
    fake.on("POST", "/detokenize", reply(body={"prompt": "x"}))
    return fake


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv("BASECLI_API_KEY", KEY)
    monkeypatch.setenv("BASECLI_RETRIES", "0")
    monkeypatch.setenv("BASECLI_TIMEOUT", "1")


def no_key_anywhere(r) -> None:
    assert KEY not in r.stdout + r.stderr
    for p in Path(os.environ["BASECLI_HOME"]).rglob("*"):
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), p


@pytest.mark.parametrize("replies", [
    [reply(500, {"error": {"message": LEAKY}})],
    [reply(401, {"error": LEAKY})],
    [reply(400, {"detail": [{"loc": ["body", "prompt"], "msg": LEAKY}]})],
    [reply(200, LEAKY.encode())],
    [sse(choice("Hi"), {"error": {"message": LEAKY}})],
    [sse(choice("Hi"), f"data: {{{LEAKY}\n\n")],
    [sse(choice("Hi " + LEAKY, top={LEAKY: -0.1, "Hi": -0.5}, finish="length"))],
])
@pytest.mark.parametrize("command", [("complete", "hi", "--json"), ("complete", "hi", "--show-probs"),
                                     ("chat", "--message", "hi"), ("resample", "hi", "-N", "2", "--jsonl")])
def test_a_server_that_echoes_the_key_never_gets_it_shown_or_saved(keyed, replies, command):
    with server() as fake:
        fake.on("POST", "/v1/completions", *replies)
        r = invoke(*command, "--base-url", fake.url)
        assert fake.requests[-1]["headers"].get("Authorization") == f"Bearer {KEY}"  # it was sent...
    assert "Traceback" not in r.stderr
    no_key_anywhere(r)  # ...and never shown, nor written to a transcript
    if "Hi " in r.stdout:
        assert "***" in r.stdout


def test_the_key_from_a_profile_is_redacted_too(monkeypatch):
    monkeypatch.setenv("MY_PROVIDER_KEY", KEY)
    monkeypatch.setenv("BASECLI_RETRIES", "0")
    with server() as fake:
        fake.on("POST", "/v1/completions", reply(500, {"error": LEAKY}))
        assert invoke("models", "add", "prov", "--base-url", fake.url, "--api-key-env", "MY_PROVIDER_KEY").returncode == 0
        r = invoke("complete", "hi", "-m", "prov")
    assert r.returncode == 1 and "500" in r.stderr
    no_key_anywhere(r)


def test_429_with_retry_after_is_waited_for_then_the_answer_is_used(monkeypatch):
    monkeypatch.setenv("BASECLI_RETRIES", "2")
    with server() as fake:
        fake.on("POST", "/v1/completions", reply(429, {"error": "slow down"}, headers={"Retry-After": "1"}),
                sse(choice("Hello", finish="length")))
        r = invoke("complete", "hi", "--base-url", fake.url)
        times = [q["t"] for q in fake.requests if q["path"] == "/v1/completions"]
    assert r.returncode == 0 and "Hello" in r.stdout
    assert "429" in r.stderr and "retrying in 1.0 s" in r.stderr
    assert times[1] - times[0] >= 0.95


def test_500_then_success_is_retried(monkeypatch):
    from basecli.backends.transport import Transport

    with server() as fake:
        fake.on("GET", "/v1/ping", reply(500, {"error": "boom"}), reply(502, raw_html := {"error": "<html>"}), reply(body={"ok": 1}))
        t = Transport(fake.url, retries=2, backoff=0.01)
        assert t.get_json("/ping") == {"ok": 1}
        assert len([q for q in fake.requests if q["path"] == "/v1/ping"]) == 3
        assert raw_html


def test_a_server_that_never_answers_is_given_up_on_in_one_line(monkeypatch):
    monkeypatch.setenv("BASECLI_TIMEOUT", "0.5")
    monkeypatch.setenv("BASECLI_RETRIES", "0")
    with server() as fake:
        fake.on("POST", "/v1/completions", reply(body={}, delay=5))
        t0 = time.monotonic()
        r = invoke("complete", "hi", "--base-url", fake.url)
    assert time.monotonic() - t0 < 4
    assert r.returncode == 1 and "sent nothing for 0.5 s" in r.stderr and "BASECLI_TIMEOUT" in r.stderr


@pytest.mark.parametrize("broken", [
    sse(choice("Hello"), choice(" wor"), done=False),  # no [DONE]
    sse(choice("Hello"), choice(" wor"), cut='data: {"choi'),  # the connection cut mid-event
    sse(choice("Hello"), choice(" wor"), "data: not json\n\n"),  # a malformed event
    sse(choice("Hello"), choice(" wor"), {"choices": []}, done=False),  # empty choices, then nothing
    sse(choice("Hello"), choice(" wor"), hang=3, done=False),  # silence past BASECLI_TIMEOUT
])
def test_a_dropped_stream_keeps_its_text_and_exits_3(keyed, broken):
    with server() as fake:
        fake.on("POST", "/v1/completions", broken)
        plain = invoke("complete", "hi", "--base-url", fake.url)
        record = invoke("complete", "hi", "--json", "--base-url", fake.url)
    assert plain.returncode == 3 and plain.stdout.startswith("Hello wor")
    assert "stopped early" in plain.stderr and "exit status 3" in plain.stderr
    assert record.returncode == 3
    rec = json.loads(record.stdout)
    assert rec["completion"] == "Hello wor" and rec["finish_reason"] == "dropped"


def test_a_whole_stream_exits_0(keyed):
    with server() as fake:
        fake.on("POST", "/v1/completions", sse(choice("Hello"), choice(" world", finish="length")))
        r = invoke("complete", "hi", "--base-url", fake.url)
    assert r.returncode == 0 and r.stdout == "Hello world\n"


# --- Ctrl-C ------------------------------------------------------------------------------------


class _Interrupting:
    """A backend whose stream is interrupted (as by Ctrl-C) after `after` events."""

    def __init__(self, inner, after: int):
        self.inner, self.after = inner, after

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def stream(self, *args, **kwargs):
        for i, ev in enumerate(self.inner.stream(*args, **kwargs)):
            if i == self.after:
                raise KeyboardInterrupt
            yield ev


@pytest.fixture
def interrupted_after(monkeypatch, tiny_dirs):
    import basecli.backends as backends

    def install(after: int):
        real = backends.open_backend
        monkeypatch.setattr(backends, "open_backend", lambda *a, **k: _Interrupting(real(*a, **k), after))
    return install


def test_complete_json_prints_what_it_had_when_interrupted(interrupted_after, tiny_dirs):
    interrupted_after(3)
    r = invoke("complete", "The quick", "-m", str(tiny_dirs["llama"]), "--dtype", "float32", "-n", "20", "--ignore-eos", "--json")
    assert r.returncode == 130 and "interrupted" in r.stderr
    rec = json.loads(r.stdout)
    assert rec["finish_reason"] == "interrupted" and len(rec["tokens"]) == 3


def test_resample_jsonl_prints_every_row_so_far_when_interrupted(interrupted_after, tiny_dirs):
    interrupted_after(5)  # rows interleave: 3 rows, 5 events -> two rows have 2 tokens, one has 1
    r = invoke("resample", "The quick", "-m", str(tiny_dirs["llama"]), "--dtype", "float32", "-N", "3", "-n", "20",
               "--ignore-eos", "--jsonl", "--batch-size", "3")
    assert r.returncode == 130
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(recs) == 3 and {x["finish_reason"] for x in recs} == {"interrupted"}
    assert sorted(len(x["tokens"]) for x in recs) == [1, 2, 2]


def test_a_real_sigint_during_a_stream_prints_the_record_so_far(tmp_path):
    """The whole path in a real process: SIGINT while the server is sending, JSON record, exit 130."""
    with server() as fake:
        fake.on("POST", "/v1/completions", sse(choice("Hello"), choice(" wor"), hang=30, done=False))
        env = dict(os.environ, BASECLI_RETRIES="0", BASECLI_TIMEOUT="60", PYTHONPATH=str(Path(__file__).parents[1]))
        proc = subprocess.Popen([sys.executable, "-m", "basecli", "complete", "hi", "--json", "--base-url", fake.url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=sigint_default)
        deadline = time.monotonic() + 30
        while not any(q["path"] == "/v1/completions" for q in fake.requests) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the two chunks arrive; the server then goes quiet
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    rec = json.loads(out)
    assert rec["completion"] == "Hello wor" and rec["finish_reason"] == "interrupted"
