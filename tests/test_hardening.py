"""Faults inside basecli's own reach (issue 15): the internal-error line, damaged caches, --truncate's
room for the answer, long references, environment ranges, what a dropped stream and Ctrl-C leave."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import invoke  # noqa: E402

TINY = ("--dtype", "float32")


# --- an internal error --------------------------------------------------------------------------


@pytest.fixture
def broken_tokenize(monkeypatch):
    import basecli.commands.tokenize as command

    def explode(*args, **kwargs):
        return {}["no such key"]  # a bug, as an internal error would be

    monkeypatch.setattr(command, "_read", explode)


def test_an_internal_error_is_one_line_naming_the_bug_and_where_to_report_it(broken_tokenize):
    r = invoke("tokenize", "-e", "cl100k_base", "hello")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    line = lines[0]
    assert line.startswith("basecli: internal error: KeyError: 'no such key' in tokenize.py:")  # the frame inside basecli
    assert "bug in basecli" in line and "report it to" in line and "BASECLI_DEBUG=1" in line


def test_basecli_debug_shows_the_traceback(broken_tokenize, monkeypatch):
    monkeypatch.setenv("BASECLI_DEBUG", "1")
    with pytest.raises(KeyError):
        invoke("tokenize", "-e", "cl100k_base", "hello")


# --- environment ranges -------------------------------------------------------------------------


@pytest.mark.parametrize("name,value,ok", [
    ("BASECLI_RETRIES", "0", 0), ("BASECLI_RETRIES", "20", 20), ("BASECLI_RETRIES", "21", None), ("BASECLI_RETRIES", "-1", None),
    ("BASECLI_RETRIES", "2.5", None), ("BASECLI_TIMEOUT", "0.1", 0.1), ("BASECLI_TIMEOUT", "0", None),
    ("BASECLI_TIMEOUT", "inf", None), ("BASECLI_TIMEOUT", "nan", None), ("BASECLI_TIMEOUT", " 30 ", 30.0),
    ("BASECLI_THREADS", "1", 1), ("BASECLI_THREADS", "0", None), ("BASECLI_MAX_INPUT_MB", "0.5", 0.5),
])
def test_environment_numbers_are_held_to_their_ranges(monkeypatch, name, value, ok):
    from basecli.config import ENV_NUMBERS, env_number
    from basecli.errors import UsageError

    monkeypatch.setenv(name, value)
    if ok is None:
        with pytest.raises(UsageError, match=name):
            env_number(name)
    else:
        assert env_number(name) == ok
    monkeypatch.setenv(name, "")
    assert env_number(name) == ENV_NUMBERS[name][3]  # empty is unset


# --- --truncate leaves room for the answer -----------------------------------------------------


def test_truncate_cuts_the_prompt_so_that_max_tokens_fit(tiny_dirs):
    long = "The quick brown fox jumps over the lazy dog. " * 40  # far past the tiny model's 128 positions
    r = invoke("complete", long, "-m", str(tiny_dirs["llama"]), *TINY, "-n", "20", "--ignore-eos", "--truncate", "--json",
               "-t", "0")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert len(rec["tokens"]) == 20 and rec["finish_reason"] == "length"
    assert "prompt cut from" in r.stderr and "to its last 108 tokens" in r.stderr  # 128 - 20


def test_an_answer_budget_cut_by_the_window_is_said(tiny_dirs):
    from basecli.backends.local import LocalBackend

    backend = LocalBackend(str(tiny_dirs["llama"]), device="cpu", dtype="float32")
    words = "fox " * 200
    ids = backend.tokenizer.encode(words)
    prompt = backend.tokenizer.decode(ids[:120])
    n = len(backend.encode(prompt))
    r = invoke("complete", prompt, "-m", str(tiny_dirs["llama"]), *TINY, "-n", "50", "--ignore-eos", "--json", "-t", "0")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["tokens"]) == 128 - n
    assert f"leaves room for {128 - n} of the 50 new tokens" in r.stderr


# --- damaged caches -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from test_gguf_convert import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "g" / "tiny.gguf", tied=True, pre="smollm", add_bos=False,
                           endoftext=True)


def _converted(gguf) -> Path:
    from basecli.weights import models

    return models.converted_dir(models.cached_sha256(gguf))


def test_a_damaged_converted_cache_is_rebuilt(tiny_gguf):
    first = invoke("complete", "hi", "-m", str(tiny_gguf), *TINY, "-n", "3", "-t", "0")
    assert first.returncode == 0, first.stderr
    cache = _converted(tiny_gguf)
    for name, damage in (("config.json", b"#"), ("model.safetensors", b"!")):
        path = cache / name
        size = path.stat().st_size
        data = bytearray(path.read_bytes())
        if name == "config.json":
            data[:] = damage * size
        else:
            (n,) = struct.unpack("<Q", data[:8])
            data[8 : 8 + n] = damage * n
        path.write_bytes(bytes(data))  # same size: the manifest still says complete
        again = invoke("complete", "hi", "-m", str(tiny_gguf), *TINY, "-n", "3", "-t", "0")
        assert again.returncode == 0, again.stderr
        assert f"the converted cache at {cache} is damaged" in again.stderr and "rebuilding it" in again.stderr
        assert again.stdout == first.stdout


def test_nan_weights_in_the_cache_name_the_directory_to_delete(tiny_gguf):
    from safetensors.torch import load_file, save_file

    assert invoke("complete", "hi", "-m", str(tiny_gguf), *TINY, "-n", "2").returncode == 0
    cache = _converted(tiny_gguf)
    path = cache / "model.safetensors"
    tensors = load_file(str(path))
    save_file({k: v.clone().fill_(float("nan")) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    r = invoke("complete", "hi", "-m", str(tiny_gguf), *TINY, "-n", "2")
    assert r.returncode == 2
    assert r.stderr.startswith("basecli: error: the model's first step gave NaN or infinite logits")
    assert f"delete that directory" in r.stderr and str(cache) in r.stderr


def test_a_damaged_tokenizer_in_the_cache_names_the_directory(tiny_gguf):
    assert invoke("tokenize", "hi", "-m", str(tiny_gguf)).returncode == 0
    cache = _converted(tiny_gguf)
    tok = cache / "tokenizer.json" if (cache / "tokenizer.json").exists() else None
    if tok is None:  # the tokenizer alone was extracted (no conversion yet)
        from basecli import config

        tok = next((config.home() / "tokenizers").glob("*/tokenizer.json"))
    tok.write_bytes(b"{" * tok.stat().st_size)
    r = invoke("tokenize", "hi", "-m", str(tiny_gguf))
    assert r.returncode == 2 and "cannot read tokenizer" in r.stderr and "delete that directory" in r.stderr


def test_a_broken_gguf_never_reaches_the_cache(tmp_path):
    from basecli import config

    path = tmp_path / "cut.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 40) + b"general.na")  # a key cut short
    for command in (("tokenize", "hi"), ("complete", "hi"), ("info",)):
        r = invoke(*command, "-m", str(path))
        assert r.returncode == 2 and "not a readable GGUF file" in r.stderr and "header runs past the end" in r.stderr
    assert not config.home().exists() or not any(config.home().rglob("*"))


# --- long references ----------------------------------------------------------------------------


def test_recite_reads_only_what_fits_of_a_two_megabyte_reference(tiny_dirs, tmp_path):
    ref = tmp_path / "long.txt"
    ref.write_text("The quick brown fox jumps over the lazy dog. " * 46000)  # 2 MB
    r = invoke("recite", f"@{ref}", "-m", str(tiny_dirs["llama"]), *TINY, "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["truncated"] is True
    assert 0 < rec["samples"][0]["reference_tokens"] <= 128 and len(rec["reference"]) < 1000


# --- what used to be silently wrong -------------------------------------------------------------


def test_chat_message_from_a_file_sends_the_file(tiny_dirs, tmp_path):
    from basecli import config

    msg = tmp_path / "question.txt"
    msg.write_text("What is the capital of France?")
    tpl = tmp_path / "chat.txt"
    tpl.write_text("A chat.\n")
    r = invoke("chat", str(tpl), "--message", f"@{msg}", "-m", str(tiny_dirs["llama"]), *TINY, "-n", "2")
    assert r.returncode == 0, r.stderr
    transcript = next((config.home() / "transcripts").glob("*.jsonl"))
    users = [json.loads(line)["text"] for line in transcript.read_text().splitlines() if '"user"' in line]
    assert users == ["What is the capital of France?"]


def test_fewshot_reads_piped_inputs_without_a_dash(tiny_dirs, tmp_path):
    tpl = tmp_path / "t.txt"
    tpl.write_text("---\nmax_tokens: 2\n---\nQ: {{input}}\nA:")
    piped = invoke("fewshot", str(tpl), "-m", str(tiny_dirs["llama"]), *TINY, "--jsonl", input="cat\ndog\n")
    dashed = invoke("fewshot", str(tpl), "-", "-m", str(tiny_dirs["llama"]), *TINY, "--jsonl", input="cat\ndog\n")
    assert piped.returncode == 0, piped.stderr
    assert [json.loads(line)["input"] for line in piped.stdout.splitlines()] == ["cat", "dog"]
    assert [json.loads(line)["answer"] for line in piped.stdout.splitlines()] == \
           [json.loads(line)["answer"] for line in dashed.stdout.splitlines()]


def test_tokenize_decode_ends_with_a_newline():
    r = invoke("tokenize", "-e", "cl100k_base", "--decode", "15339 1917")
    assert r.returncode == 0 and r.stdout == "hello world\n"


def test_a_server_without_logprobs_gives_null_not_nan_in_json(monkeypatch):
    from fake_openai import FakeServer, choice, sse

    monkeypatch.setenv("BASECLI_RETRIES", "0")
    with FakeServer() as fake:
        fake.on("POST", "/v1/completions", sse(choice("Hello", tokens=[]), choice(" world", tokens=[], finish="length")))
        r = invoke("complete", "hi", "--json", "--base-url", fake.url)
    assert r.returncode == 0, r.stderr
    assert "NaN" not in r.stdout and "Infinity" not in r.stdout
    rec = json.loads(r.stdout)  # strict JSON: no NaN
    assert rec["completion"] == "Hello world" and all(t["logprob"] is None for t in rec["tokens"])
