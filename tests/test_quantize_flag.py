"""--quantize (BASECLI_QUANTIZE): one weight format for every command that loads a local model,
checked before anything loads, refused for servers, and shown by `info` and `bench`."""

from __future__ import annotations

import inspect
import json
import os
import shutil

import pytest

from basecli import config
from basecli.errors import UsageError
from conftest import invoke, run_cli, share_kernels

# q4/q8 build basecli's kernels with the system C compiler on first use; without one these tests cannot run
needs_cc = pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler to build native.c")

LOADING_COMMANDS = ("complete", "resample", "sweep", "fewshot", "chat", "score", "recite", "info", "bench")


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    """One torch thread however busy the machine is, and no BASECLI_QUANTIZE from the shell running the tests."""
    monkeypatch.setenv("BASECLI_THREADS", "1")
    monkeypatch.delenv("BASECLI_QUANTIZE", raising=False)


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    """One BASECLI_HOME for this module's subprocesses, so basecli's kernels are compiled once, not per test."""
    return str(share_kernels(tmp_path_factory.mktemp("quantize") / "home"))


def command(name: str):
    import importlib

    from basecli.cli import COMMANDS

    module, attribute, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), attribute)


def test_the_light_mode_list_is_the_engines():
    """The flag is checked against config.QUANTIZE_MODES, without torch; the engines must run exactly those."""
    from basecli.engine import native, quant

    assert quant.MODES == config.QUANTIZE_MODES
    assert set(native.MODES) <= set(config.QUANTIZE_MODES) and set(native.LAYER_TYPE) == set(native.MODES)


def test_every_command_that_loads_a_model_has_the_flag():
    from basecli.cli import COMMANDS

    for name in COMMANDS:
        target = command(name)
        params = inspect.signature(target).parameters if callable(target) and not hasattr(target, "registered_commands") else {}
        assert ("quantize" in params) == ("dtype" in params), name
    assert all("quantize" in inspect.signature(command(name)).parameters for name in LOADING_COMMANDS)


def test_help_lists_the_flag_its_modes_and_variable():
    out = invoke("complete", "--help").stdout
    assert "--quantize" in out and "BASECLI_QUANTIZE" in out
    assert all(mode in out for mode in config.QUANTIZE_MODES)


ARGS = {"complete": ["hi"], "resample": ["hi"], "sweep": ["hi", "-t", "0,1"], "fewshot": ["en_ko"], "chat": ["--message", "hi"],
        "score": ["hi"], "info": []}


@pytest.mark.parametrize("name", [*ARGS, "recite"])
def test_the_flag_reaches_open_backend(name, monkeypatch, tmp_path):
    """Each command hands --quantize to open_backend (which hands it to LocalBackend); a value from
    BASECLI_QUANTIZE arrives as None, for LocalBackend to read (so a shell-wide setting is no error with --base-url)."""
    seen = []

    def fake_open_backend(model=None, **kw):
        seen.append(kw.get("quantize", "missing"))
        raise UsageError("stop here")

    monkeypatch.setattr("basecli.backends.open_backend", fake_open_backend)
    reference = tmp_path / "ref.txt"
    reference.write_text("The cat sat on the mat. It was a sunny day and the cat was happy.\n")
    args = [name, *ARGS.get(name, [str(reference)])]
    assert invoke(*args, "--quantize", "q8").returncode == 2
    monkeypatch.setenv("BASECLI_QUANTIZE", "int8")
    assert invoke(*args).returncode == 2
    assert invoke(*args, "--quantize", "fp16").returncode == 2  # the flag wins over the variable
    assert seen == ["q8", None, "fp16"]


def test_bench_passes_the_flag_to_its_measurements(monkeypatch):
    seen = {}

    def fake_run(model, **kw):
        seen.update(kw)
        raise UsageError("stop here")

    monkeypatch.setattr("basecli.analyses.benchmark.run", fake_run)
    assert invoke("bench", "--quantize", "q4", "--no-startup").returncode == 2
    assert seen["quantize"] == "q4"


def test_bench_startup_processes_get_the_mode(monkeypatch):
    """The fresh processes bench times (the load probe, `complete -n 1`) load the same weights as the rest."""
    from basecli.analyses import benchmark
    calls = []

    def fake(args, env=None, timeout=600):
        calls.append((list(args), env))
        return 1.0, 0.5, 100.0, json.dumps({"import_s": 0.5, "load_s": 0.25})

    monkeypatch.setattr(benchmark, "run_process_timed", fake)
    benchmark.startup_figures("m", device="cpu", dtype="float32", engine="lean", quantize="q4", threads=1, repeats=1)
    probe = next(args for args, _ in calls if benchmark.LOAD_PROBE in args)
    assert probe[-1] == "q4"
    assert next(env for args, env in calls if "complete" in args)["BASECLI_QUANTIZE"] == "q4"


@pytest.mark.parametrize("name", LOADING_COMMANDS)
def test_an_unknown_mode_is_one_line_before_anything_loads(name, monkeypatch):
    """The model does not exist: the quantisation is what is refused, so nothing was resolved or loaded."""
    args = [name, *ARGS.get(name, ["ref.txt"])]
    r = invoke(*args, "-m", "/no/such/model", "--quantize", "q3")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "unknown quantisation 'q3' (--quantize); choose one of: fp16, int8, q4, q8" in r.stderr
    monkeypatch.setenv("BASECLI_QUANTIZE", "int4")
    r = invoke(*args, "-m", "/no/such/model")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "'int4' (BASECLI_QUANTIZE)" in r.stderr


def test_an_unknown_mode_in_a_real_process_is_one_line(tiny_dirs):
    r = run_cli("complete", "Hello", "-m", str(tiny_dirs["llama"]), "--quantize", "Q4")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "fp16, int8, q4, q8" in r.stderr


def test_the_flag_with_a_server_is_a_usage_error():
    # no server listens there: the flag is refused before any connection is tried
    r = invoke("complete", "Hello", "--base-url", "http://127.0.0.1:9/v1", "--quantize", "q4")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "--quantize applies to local models; the server chooses its own weights" in r.stderr


def test_the_flag_with_a_saved_profile_is_a_usage_error():
    from basecli.backends import profiles
    profiles.add(profiles.Profile(name="far", base_url="http://127.0.0.1:9/v1"))
    r = invoke("info", "-m", "far", "--quantize", "int8")
    assert r.returncode == 2 and "--quantize applies to local models" in r.stderr


def test_the_variable_is_no_error_with_a_server(monkeypatch):
    """A shell-wide BASECLI_QUANTIZE describes local weights; a server ignores it, as before the flag existed."""
    from fake_openai import FakeServer

    monkeypatch.setenv("BASECLI_QUANTIZE", "q4")
    with FakeServer() as s:
        r = invoke("info", "--base-url", s.url, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == "fake-model"


def runtime(*args: str) -> dict:
    r = invoke("info", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["runtime"]


@needs_cc
def test_info_shows_the_weight_formats_and_their_bytes(tiny_dirs):
    """q4: Q4_1 layer matrices (20 bytes per 32 weights), a Q8_0 head (34 per 32), float32 embeddings, norms and rope table."""
    d = str(tiny_dirs["llama"])
    plain = runtime("-m", d, "--dtype", "float32")
    assert plain["quantize"] is None and set(plain["weights"].values()) == {"float32"}
    r = runtime("-m", d, "--quantize", "q4")
    assert (r["quantize"], r["dtype"], r["device"]) == ("q4", "float32", "cpu")  # auto picks what the kernels need
    assert r["weights"] == {"embeddings": "float32", "attention": "Q4_1", "MLP": "Q4_1", "norms": "float32", "output head": "Q8_0"}
    counts = json.loads(invoke("info", "-m", d, "--json").stdout)["parameters"]
    fp32 = counts["embeddings"] + counts["norms"] + 4  # the rope table: head_dim / 2 frequencies
    want = 4 * fp32 + (counts["attention"] + counts["MLP"]) * 20 // 32 + counts["output head"] * 34 // 32
    assert isinstance(r["memory_bytes"], int) and r["memory_bytes"] == want < plain["memory_bytes"]


@needs_cc
def test_the_variable_works_as_the_flag_and_the_flag_wins(tiny_dirs, monkeypatch):
    d = str(tiny_dirs["llama"])
    monkeypatch.setenv("BASECLI_QUANTIZE", "q8")
    assert runtime("-m", d)["weights"]["MLP"] == "Q8_0"
    assert runtime("-m", d, "--quantize", "q4")["weights"]["MLP"] == "Q4_1"


@needs_cc
def test_info_text_says_the_matrices_are_not_the_dtype(tiny_dirs):
    r = invoke("info", "-m", str(tiny_dirs["llama"]), "--quantize", "q4")
    assert r.returncode == 0, r.stderr
    assert "dtype: float32 (activations)" in r.stdout
    assert "weights: q4: float32 embeddings and norms, Q4_1 attention and MLP, Q8_0 output head" in r.stdout


@needs_cc
def test_a_quantised_tied_head_is_held_twice_but_counted_once(tiny_dirs):
    """SmolLM2 ties its head to the embedding: quantising makes the head a matrix of its own, which the
    memory figure must count, while the parameters stay counted once, under the embeddings."""
    from basecli.backends.local import LocalBackend
    from basecli.engine import native
    from basecli.weights.modelinfo import memory_bytes, parameter_counts, weight_formats

    b = LocalBackend(str(tiny_dirs["llama"]), device="cpu", dtype="float32", engine="lean")
    b.model.head = b.model.embed
    counts, before = parameter_counts(b.model), memory_bytes(b.model)
    native.apply(b.model, "q8", threads=1)
    assert parameter_counts(b.model) == counts
    layers = sum(getattr(layer, n).blocks.numel() - getattr(layer, n).numel() * 4 for layer in b.model.layers
                 for n in ("qkv", "o", "gate_up", "down"))
    assert memory_bytes(b.model) == before + layers + b.model.head.blocks.numel()
    assert weight_formats(b.model)["output head"] == "Q8_0"


def test_auto_device_and_dtype_mean_cpu_and_float32_with_quantised_weights(tiny_dirs, monkeypatch):
    """--dtype auto picks bf16 on bf16-capable CPUs, which the kernels cannot take: auto follows the weights."""
    from basecli.backends.local import LocalBackend

    monkeypatch.setattr("basecli.backends.local.cpu_has_bf16", lambda: True)
    b = LocalBackend(str(tiny_dirs["llama"]), quantize="int8")
    assert (b.device, str(b.dtype), b.model.quantized) == ("cpu", "torch.float32", "int8")
    with pytest.raises(UsageError, match="needs float32"):  # asked for by name: still refused, with the fix
        LocalBackend(str(tiny_dirs["llama"]), dtype="bfloat16", quantize="int8")


@needs_cc
def test_complete_runs_on_4_bit_weights(tiny_dirs, shared_home):
    r = invoke("complete", "Hello", "-m", str(tiny_dirs["llama"]), "-n", "2", "-t", "0", "--quantize", "q4", "--json",
                env={"BASECLI_HOME": shared_home, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["tokens"]) >= 1


@needs_cc
def test_bench_reports_the_weights_it_measured(tiny_dirs, shared_home):
    r = run_cli("bench", "-m", str(tiny_dirs["llama"]), "--quantize", "q4", "--batch", "1", "--prompt-tokens", "4",
                "--new-tokens", "3", "--no-startup", "--json", env={"BASECLI_HOME": shared_home, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["quantize"] == "q4" and "Q4_1 attention and MLP" in report["weights"] and report["dtype"] == "float32"
    assert report["decode"][0]["tokens_per_s"] > 0


def test_bench_table_names_the_weights():
    from basecli.analyses import benchmark
    from basecli.commands.bench import table_rows, title

    r = benchmark.Report(model="m", engine="lean", device="cpu", dtype="float32", threads=1, prompt_tokens=8, new_tokens=4,
                         load_s=0.1, prefill_tokens_per_s=100, first_token_s=0.05, decode=[], peak_rss_mb=80, weights_mb=5,
                         quantize="q4", weights="float32 embeddings and norms, Q4_1 attention and MLP, Q8_0 output head")
    assert title(r) == "m, lean engine, on cpu (float32, q4 weights, 1 threads)"
    assert dict(table_rows(r))["weights"] == "5.0 MiB (q4: float32 embeddings and norms, Q4_1 attention and MLP, Q8_0 output head)"
