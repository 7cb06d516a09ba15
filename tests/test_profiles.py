"""Saved remote profiles and `basecli models`: the key lives only in the environment."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import invoke, run_cli  # noqa: E402
from fake_openai import FakeServer, choice, sse  # noqa: E402

KEY = "sk-live-abcdef0123456789"


def test_add_list_remove_and_the_key_is_never_written_or_printed(tmp_path):
    env = {"MY_PROVIDER_KEY": KEY}
    r = run_cli("models", "add", "big", "--base-url", "https://api.example.com/v1/", "--model", "meta-llama/Meta-Llama-3.1-405B",
                "--api-key-env", "MY_PROVIDER_KEY", env=env)
    assert r.returncode == 0, r.stderr
    files = list((Path(os.environ["BASECLI_HOME"]) / "config").rglob("*.json"))
    assert files and all(KEY not in f.read_text() for f in files)
    saved = json.loads(next(f for f in files if f.name == "profiles.json").read_text())["profiles"]["big"]
    assert saved == {"base_url": "https://api.example.com/v1", "model": "meta-llama/Meta-Llama-3.1-405B",
                     "api_key_env": "MY_PROVIDER_KEY", "kind": "auto"}

    converted = Path(os.environ["BASECLI_HOME"]) / "models" / "gguf-0123"  # a converted GGUF, as models.py writes it
    converted.mkdir(parents=True)
    (converted / "model.safetensors").write_bytes(b"x" * 2_000_000)
    from basecli.weights.models import CACHE_FORMAT  # an older format is not listed: it would be rebuilt

    (converted / "basecli.json").write_text(json.dumps({"source": "/data/tiny.gguf", "files": {"model.safetensors": 2_000_000},
                                                        "cache_format": CACHE_FORMAT}))
    listed = run_cli("models", "list", env=env)
    assert f"tiny.gguf\t2\t{converted}" in listed.stdout
    assert "big\thttps://api.example.com/v1\tmeta-llama/Meta-Llama-3.1-405B\tauto\t$MY_PROVIDER_KEY (set)" in listed.stdout
    assert "smollm2-135m-instruct\tembedded GGUF (default)" in listed.stdout
    data = json.loads(run_cli("models", "list", "--json").stdout)
    assert data["profiles"][0]["api_key_set"] is False
    assert KEY not in listed.stdout + listed.stderr

    assert run_cli("models", "remove", "big").returncode == 0
    assert json.loads(run_cli("models", "list", "--json").stdout)["profiles"] == []
    gone = run_cli("models", "remove", "big")
    assert gone.returncode == 2 and "no profile named 'big'" in gone.stderr


def test_a_key_pasted_as_the_variable_name_is_refused_without_echoing_it():
    r = run_cli("models", "add", "p", "--base-url", "http://h:1/v1", "--api-key-env", KEY)
    assert r.returncode == 2 and KEY not in r.stderr and "NAME of an environment variable" in r.stderr


def test_profile_names_cannot_shadow_local_aliases():
    r = run_cli("models", "add", "gpt2", "--base-url", "http://h:1/v1")
    assert r.returncode == 2 and "local model alias" in r.stderr


def test_a_profile_given_as_model_routes_to_its_server_with_its_key():
    with FakeServer() as s:
        s.on("POST", "/v1/completions", sse(choice("Paris", finish="length")))
        assert run_cli("models", "add", "fake", "--base-url", s.url, "--model", "fake-model", "--api-key-env", "FAKE_KEY").returncode == 0
        unset = run_cli("complete", "The capital of France is", "-m", "fake")
        r = run_cli("complete", "The capital of France is", "-m", "fake", "-t", "0", env={"FAKE_KEY": KEY})
        headers = {k.lower(): v for k, v in s.requests[-1]["headers"].items()}
    assert unset.returncode == 2 and "$FAKE_KEY, which is not set" in unset.stderr
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Paris\n"
    assert headers["authorization"] == f"Bearer {KEY}"
    assert s.bodies()[-1]["model"] == "fake-model"
    assert KEY not in r.stderr


def test_kind_tokenizer_context_length_and_replace_flags(tiny_dirs):
    from basecli.backends import profiles
    from basecli.backends.remote import from_profile

    with FakeServer(owned_by="vllm") as s:
        args = ["models", "add", "p", "--base-url", s.url, "--kind", "openai", "--tokenizer", str(tiny_dirs["gpt2"]), "--context-length", "77"]
        assert invoke(*args).returncode == 0
        again = invoke(*args)
        assert again.returncode == 2 and "--replace" in again.stderr
        assert invoke(*args[:-1], "99", "--replace").returncode == 0
        b = from_profile(profiles.get("p"))
    assert b.kind == "openai"  # the server says vllm; the profile wins
    assert b.context_length == 99
    from basecli.weights.models import tokenizer_for

    local = tokenizer_for(tiny_dirs["gpt2"], "tiny")
    assert b.tokenizer.encode("The quick brown fox") == local.encode("The quick brown fox")
