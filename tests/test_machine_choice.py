"""What basecli picks from the machine, with the machine faked: --device/--dtype auto from CPU flags and
CUDA/MPS availability, and a GGUF's own block formats as the default weights on the CPU."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from basecli.backends import local, weight_path
from basecli.engine import native
from conftest import invoke, run_cli
from test_gguf_convert import VARIANTS, write_tiny_gguf

ZEN4 = {"avx2", "fma", "f16c", "avx512f", "avx512_bf16"}
HASWELL = {"avx2", "fma", "f16c"}
GRAVITON3 = {"fp", "asimd", "sve", "bf16"}
M1 = set()  # macOS: no /proc/cpuinfo


def fake_machine(monkeypatch, *, flags, cuda=False, cuda_bf16=False, mps=False):
    monkeypatch.setattr(local, "cpu_flags", lambda: set(flags))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("machine, want", [
    (dict(flags=ZEN4), ("cpu", torch.bfloat16)),
    (dict(flags=HASWELL), ("cpu", torch.float32)),
    (dict(flags=GRAVITON3), ("cpu", torch.bfloat16)),
    (dict(flags=M1, mps=True), ("mps", torch.float32)),
    (dict(flags=HASWELL, cuda=True, cuda_bf16=True), ("cuda", torch.bfloat16)),  # Ampere and later
    (dict(flags=ZEN4, cuda=True, cuda_bf16=False), ("cuda", torch.float32)),  # a T4: no bf16
    (dict(flags=ZEN4, cuda=True, cuda_bf16=True, mps=True), ("cuda", torch.bfloat16)),
])
def test_auto_picks_device_then_dtype_from_the_machine(monkeypatch, machine, want):
    fake_machine(monkeypatch, **machine)
    device = local.pick_device("auto")
    assert (device, local.pick_dtype("auto", device)) == want
    assert local.pick_dtype("float16", device) is torch.float16  # a dtype asked for is a dtype given


def test_cpu_flags_are_words_not_substrings(monkeypatch, tmp_path):
    monkeypatch.setattr(local, "cpu_flags", lambda: {"avx512bw", "sbf16x"})  # neither is bf16
    assert not local.cpu_has_bf16()


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    """A tiny Llama GGUF as llama.cpp writes a pure Q4_1 file (Q8_0 head), a pure Q8_0 one, and one of mixed blocks."""
    from gguf import GGMLQuantizationType as T

    root = tmp_path_factory.mktemp("ggufs")
    like = dict(VARIANTS["llama3-like"])
    out = {}
    for name, layer_type in (("q4_1", T.Q4_1), ("q8_0", T.Q8_0), ("mixed", None)):
        (root / name).mkdir()
        out[name] = write_tiny_gguf(root / name / "tiny.gguf", layer_type=layer_type, **like)
    return out


def info(*args) -> dict:
    result = invoke("info", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["runtime"]


def test_a_gguf_runs_its_own_blocks_by_default_on_the_cpu(ggufs, monkeypatch):
    monkeypatch.delenv("BASECLI_ENGINE", raising=False)
    r = info("-m", str(ggufs["q4_1"]), "--device", "cpu")
    assert r["quantize"] == "q4" and r["dtype"] == "float32"
    assert {w for part, w in r["weights"].items() if part != "embeddings" and part != "norms"} <= {"Q4_1", "Q8_0"}, r["weights"]
    assert r["weight_path"].startswith("the file's own Q4_1 layers and Q8_0 head on basecli's kernels")
    assert info("-m", str(ggufs["q8_0"]), "--device", "cpu")["quantize"] == "q8"


@pytest.mark.parametrize("args, why", [
    (["--quantize", "none"], "dequantised, as --quantize none asks"),
    (["--dtype", "float32"], "dequantised, as --dtype float32 asks"),
    (["--dtype", "bfloat16"], "dequantised, as --dtype bfloat16 asks"),
])
def test_asking_for_the_dequantised_weights(ggufs, args, why):
    r = info("-m", str(ggufs["q4_1"]), "--device", "cpu", *args)
    assert r["quantize"] is None and r["weight_path"].startswith(why)
    assert r["dtype"] == (args[1] if args[0] == "--dtype" else r["dtype"])


def test_other_blocks_and_engines_run_dequantised_and_say_why(ggufs, monkeypatch):
    mixed = info("-m", str(ggufs["mixed"]), "--device", "cpu")
    assert mixed["quantize"] is None and "no kernel of basecli's runs these layers' blocks as they are" in mixed["weight_path"]
    monkeypatch.setenv("BASECLI_ENGINE", "transformers")
    assert info("-m", str(ggufs["q4_1"]), "--device", "cpu")["weight_path"].startswith("dequantised: BASECLI_ENGINE=transformers")


def test_the_rule_is_a_table_keyed_by_block_type(tmp_path, monkeypatch):
    """Every device and dtype the product can pick, whatever this machine is: only the CPU with dtype auto runs the blocks."""
    source = SimpleNamespace(kind="gguf")
    blocks = {"layers": ["Q4_1"] * 7, "head": "Q6_K"}
    choose = lambda **kw: weight_path.choose(source, tmp_path, **{"quantize": None, "device": "cpu", "dtype": "auto",  # noqa: E731
                                                                    "engine": "auto", **kw})
    monkeypatch.setattr(weight_path, "block_types", lambda folder: blocks)  # what the GGUF's tensor table says
    assert choose().quantize == "q4" and choose().default
    assert "Q4_1 layers and Q6_K head" in choose().why
    for kw in (dict(device="cuda"), dict(device="mps"), dict(dtype="float16"), dict(engine="transformers"), dict(quantize="none")):
        assert choose(**kw).quantize is None, kw
    assert choose(quantize="q8").quantize == "q8" and not choose(quantize="q8").default
    blocks["layers"] = ["Q4_1"] * 6 + ["Q5_0"]  # a block type no kernel runs as it is
    assert choose().quantize is None and "Q4_1, Q5_0" in choose().why
    blocks["layers"] = ["Q4_1"] * 6 + ["Q4_K"]  # K-quants (beside Q4_1/Q8_0): the file's blocks in place (test_kquants)
    assert choose().quantize == "gguf" and choose().default
    assert set(weight_path.GGUF_NATIVE.values()) <= {*native.MODES, "gguf"}
    assert weight_path.choose(SimpleNamespace(kind="dir"), tmp_path, quantize=None, device="cpu", dtype="auto",
                              engine="auto").quantize is None


def test_no_c_compiler_falls_back_with_one_note(ggufs, monkeypatch):
    assert info("-m", str(ggufs["q4_1"]), "--device", "cpu")["quantize"] == "q4"  # converted (its progress said) and built
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setenv("BASECLI_NATIVE_BUILD", "portable")  # a build not in the cache, and no compiler to make it
    monkeypatch.setenv("CC", "/nonexistent/cc")
    result = invoke("complete", "hi", "-m", str(ggufs["q4_1"]), "--device", "cpu", "-n", "2", "-s", "1")
    assert result.returncode == 0
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("basecli: note: no C compiler"), result.stderr
    r = info("-m", str(ggufs["q4_1"]), "--device", "cpu")
    assert r["quantize"] is None and "do not build here" in r["weight_path"]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_plain_run_prints_nothing_on_stderr(tiny_dirs, kind):
    """A fresh process, as users run it: no library's warning, note or progress bar."""
    result = run_cli("complete", "-m", str(tiny_dirs[kind]), "hi", "-n", "3")
    assert result.returncode == 0 and result.stderr == ""
