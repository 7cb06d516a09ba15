"""The remote backend against a real OpenAI-compatible server: llama-cpp-python's, serving the
embedded GGUF on 127.0.0.1. Skipped, with the reason, where llama-cpp-python[server] is not installed."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REAL_HOME, run_cli  # noqa: E402

from basecli.config import SamplingParams  # noqa: E402

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed "
                    "(pip install 'llama-cpp-python[server]==0.3.36', a ~6 minute build on 2 cores)")

pytestmark = pytest.mark.slow  # every test here talks to a llama.cpp server that has loaded the embedded model

# Prompts of different kinds for the local-vs-server cross-check; the first tokens of a greedy
# continuation should agree (the local model is the dequantised GGUF, the server runs it quantised).
CROSS_CHECK = [
    "Here's my top-10 list of the top landmarks to see in Paris:",
    "The quick brown fox",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The capital of France is",
    "English: cat\nKorean:",
    "import numpy as np\nimport",
    "The first president of the United States was",
]
FIRST = 4  # tokens compared per prompt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")  # one server for every test: it takes seconds to start
def llama_server(tmp_path_factory):
    os.environ["BASECLI_HOME"] = str(REAL_HOME)  # the embedded GGUF is in the real cache
    from basecli.weights.models import embedded_gguf

    gguf = embedded_gguf()
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", "2048", "--n_threads", "2", "--verbose", "False"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    import httpx

    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-800:]}")
            try:
                if httpx.get(url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def remote(llama_server):
    from basecli.backends import open_backend

    return open_backend(base_url=llama_server)


def test_server_is_recognised_and_tokenizes_like_the_gguf(remote, real_model):
    assert remote.kind == "llama-cpp-python"
    text = "Hello world! 안녕하세요 😀"
    assert remote.tokenizer.encode(text) == real_model.tokenizer.encode(text)


def test_samples_with_seeds_are_reproducible_and_differ_between_seeds(remote):
    p = SamplingParams(max_tokens=4, temperature=1.0)

    def texts(seeds):
        rows: dict = {}
        for e in remote.stream(["Once upon a time"] * len(seeds), [p] * len(seeds), seeds=seeds):
            rows[e.row] = rows.get(e.row, "") + e.text
        return [rows[r] for r in range(len(seeds))]

    first = texts([1, 2])
    assert texts([1]) == first[:1]
    assert first[0] != first[1]


def test_korean_text_comes_back_whole(remote, real_model):
    """llama-cpp-python loses split characters when it streams log-probs; basecli asks it for whole completions."""
    greedy = SamplingParams(max_tokens=5, temperature=0)
    prompt = "English: teacher\nKorean: 선생님\nEnglish: cat\nKorean:"
    served = "".join(e.text for e in remote.stream([prompt], [greedy]))
    local = "".join(e.text for e in real_model.stream([prompt], [greedy]))
    assert any("\uac00" <= ch <= "\ud7a3" for ch in served)
    # a character cut by max_tokens ends as U+FFFD locally; llama.cpp finishes it first
    assert served.startswith(local.rstrip("\ufffd"))


def test_score_matches_the_local_model(remote, real_model):
    """Teacher-forced log-probs through echo agree with transformers on the dequantised weights."""
    import torch

    text = "The capital of France is Paris, and the capital of Italy is Rome."
    scored = remote.score(text, alternatives=3)
    ids = real_model.tokenizer.encode(text)
    assert [t.token_text for t in scored] == [real_model.tokenizer.token_bytes(i).decode() for i in ids]
    with torch.no_grad():
        logits = real_model.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    reference = [None] + [logits[i - 1, ids[i]].item() for i in range(1, len(ids))]
    assert scored[0].logprob is None  # SmolLM2 adds no BOS: nothing precedes the first token
    pairs = [(t.logprob, r) for t, r in zip(scored[1:], reference[1:]) if t.logprob is not None]
    assert len(pairs) >= 0.8 * (len(ids) - 1)  # None only outside the top 100 (see remote_score._unshift)
    assert max(abs(a - b) for a, b in pairs) < 0.5
    assert sum(abs(a - b) for a, b in pairs) / len(pairs) < 0.15
    ranked = [t for t in scored if t.rank == 1]
    assert ranked and all(t.alternatives[0][1] == t.logprob for t in ranked)


def test_greedy_continuations_agree_with_the_local_engine(remote, real_model):
    greedy = SamplingParams(max_tokens=FIRST, temperature=0)

    def first_tokens(backend):
        rows = {}
        for e in backend.stream(CROSS_CHECK, [greedy] * len(CROSS_CHECK)):
            if e.finish_reason != "eos":
                rows.setdefault(e.row, []).append(e.token_text)
        return [rows.get(i, []) for i in range(len(CROSS_CHECK))]

    local, served = first_tokens(real_model), first_tokens(remote)
    agree = sum(a == b for a, b in zip(local, served)) / len(CROSS_CHECK)
    print(f"\ngreedy first-{FIRST}-token agreement, local vs llama.cpp server: {agree:.0%}")
    assert agree >= 0.7, list(zip(local, served))


def test_cli_complete_and_json_through_the_server(llama_server):
    r = run_cli("complete", "The capital of France is", "--base-url", llama_server, "-n", "6", "-t", "0", "--json",
                "--alternatives", "2")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["finish_reason"] in ("length", "eos") and 1 <= len(record["tokens"]) <= 6
    assert all(t["logprob"] <= 0 and len(t["alternatives"]) == 2 for t in record["tokens"])  # --alternatives 2
    assert record["completion"] == "".join(t["text"] for t in record["tokens"])


# The "done means" list, and the other commands, through the server: each checked against
# a definition (seeds S+i, greedy rows identical, Hangul for Korean, log-probs <= 0) or the local tokenizer.


def cli(server, *args):
    r = run_cli(*args, "--base-url", server)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r


def test_resample_through_the_server_seeds_rows_s_plus_i(llama_server):
    r = cli(llama_server, "resample", "Once upon a time", "-N", "4", "-n", "4", "-s", "11", "--jsonl")
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["index"], x["seed"]) for x in records] == [(i, 11 + i) for i in range(4)]
    for x in records:
        assert x["completion"] == "".join(t["text"] for t in x["tokens"]) and 1 <= len(x["tokens"]) <= 4
        assert all(t["logprob"] <= 0 for t in x["tokens"])
    assert len({x["completion"] for x in records}) > 1  # different seeds, different universes


def test_sweep_through_the_server_greedy_cells_agree(llama_server):
    r = cli(llama_server, "sweep", "Once upon a time", "-t", "0,1.5", "-N", "2", "-n", "4", "-s", "5", "--jsonl")
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(records) == 4
    greedy = [x["completion"] for x in records if x["params"]["temperature"] == 0]
    hot = [x for x in records if x["params"]["temperature"] == 1.5]
    assert len(greedy) == 2 and greedy[0] == greedy[1]  # temperature 0 ignores the seed
    assert len(hot) == 2 and all(1 <= len(x["tokens"]) <= 4 for x in hot)


def test_fewshot_through_the_server_answers_in_korean(llama_server):
    r = cli(llama_server, "fewshot", "prompts/en_ko.txt", "-n", "8", "--json")
    record = json.loads(r.stdout)
    assert record["prompt"].endswith("Korean:")
    assert any("\uac00" <= ch <= "\ud7a3" for ch in record["completion"])
    assert "\n" not in record["completion"]  # the template's stop: one line per answer


def test_chat_message_through_the_server_stops_before_the_next_turn(llama_server):
    r = cli(llama_server, "chat", "--message", "Hello!", "-n", "16", "-t", "0")
    answer = r.stdout.strip()
    assert answer and "<|im_" not in answer and "user" not in answer.lower().split()[:1]


def test_score_through_the_server(llama_server):
    text = "The capital of France is Paris."
    record = json.loads(cli(llama_server, "score", text, "--json").stdout)
    assert "".join(t["text"] for t in record["tokens"]) == text
    lps = [t["logprob"] for t in record["tokens"] if t["logprob"] is not None]
    assert len(lps) >= 4 and all(v <= 0 for v in lps)
    assert record["summary"]["bits"] == pytest.approx(-sum(lps) / math.log(2), rel=1e-3)


def test_score_window_is_refused_in_one_line(llama_server):
    r = run_cli("score", "Some text to score.", "--window", "64", "--base-url", llama_server)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "--window" in r.stderr


def test_recite_through_the_server_finds_where_it_diverges(llama_server, tmp_path):
    ref = tmp_path / "mit.txt"
    ref.write_text("Permission is hereby granted, free of charge, to any person obtaining a copy of this software")
    record = json.loads(cli(llama_server, "recite", f"@{ref}", "--prefix-tokens", "6", "--json").stdout)
    s = record["samples"][0]
    assert record["prefix"] + record["reference"] == ref.read_text()
    # the greedy continuation's first tokens are the reference's (" of charge, to"): they count as reproduced
    d = s["diverged_at"]
    common = len(os.path.commonprefix([s["completion"], record["reference"]]))
    assert d is not None and d >= 1 and common >= len(" of")
    assert s["divergence"]["reference_token"]["text"] != s["divergence"]["model_token"]["text"]


def test_tokenize_through_the_server_matches_the_gguf_tokenizer(llama_server, monkeypatch):
    from basecli.weights.model_tokenizer import model_tokenizer

    monkeypatch.setenv("BASECLI_HOME", str(REAL_HOME))  # the GGUF's tokenizer is cached there
    text = "Hello world! The quick brown fox."
    r = cli(llama_server, "tokenize", text, "--ids")
    assert [int(i) for i in r.stdout.split()] == model_tokenizer(None).encode(text)
    back = cli(llama_server, "tokenize", "--decode", *r.stdout.split())
    assert back.stdout.rstrip("\n") == text


def test_info_through_the_server_says_what_it_knows(llama_server):
    d = json.loads(cli(llama_server, "info", "--json").stdout)
    assert d["server"] == {"base_url": llama_server, "kind": "llama-cpp-python"}
    assert d["model"].endswith(".gguf") and d["context_length_from"] == "assumed"
    assert d["context_length"] == 2048  # llama-cpp-python's default n_ctx (the fixture passes the same)
    plain = cli(llama_server, "info").stdout
    assert "assumed" in plain and "not visible" in plain
