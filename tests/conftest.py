"""Shared fixtures: tiny random GPT-2 and Llama models with a small byte-level BPE tokenizer,
saved as real model directories so every test goes through the same loading path as users.
No network: everything is built here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from basecli.config import usable_cpus

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Here's my top-10 list of the top landmarks to see in Paris: the Eiffel Tower, the Louvre, Notre-Dame.",
    "English: teacher\nKorean: 선생님\nEnglish: cat\nKorean: 고양이\n",
    "Hello world! 안녕하세요 세계 😀 emoji and ünïcödé text.\n\tTabs and  double  spaces.",
    "def add(a, b):\n    return a + b\n",
]


def build_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS * 5, trainer=trainer)
    tok.save(str(path / "tokenizer.json"))
    return path / "tokenizer.json"


def build_model(kind: str, path: Path) -> Path:
    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    build_tokenizer(path)
    vocab = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size()
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
    # Random weights give a near-uniform distribution; scaling the head makes the model opinionated,
    # so greedy and sampled paths really differ and ties are not a worry.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Torch at one thread for a module: tiny models gain nothing from threads, and on a busy
    machine waiting threads cost seconds."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {kind: build_model(kind, root / kind) for kind in ("gpt2", "llama")}


@pytest.fixture(params=["gpt2", "llama"])
def tiny_dir(request, tiny_dirs) -> Path:
    return tiny_dirs[request.param]


@pytest.fixture(scope="session")
def tiny_backends(tiny_dirs):
    """The tiny models on the default engine (the Llama on basecli's lean forward), and the Llama
    once more on transformers' model code, so tests taking `tiny_backend` run on both engines."""
    from basecli.backends.local import LocalBackend

    out = {kind: LocalBackend(str(d), device="cpu", dtype="float32") for kind, d in tiny_dirs.items()}
    out["llama-transformers"] = LocalBackend(str(tiny_dirs["llama"]), device="cpu", dtype="float32", engine="transformers")
    return out


@pytest.fixture(params=["gpt2", "llama", "llama-transformers"])
def tiny_backend(request, tiny_backends):
    return tiny_backends[request.param]


@pytest.fixture(scope="session")
def reference():
    """transformers' own model for a model directory (fp32), loaded once: what every engine is checked against."""
    loaded = {}

    def load(folder):
        import torch
        from transformers import AutoModelForCausalLM

        key = str(folder)
        if key not in loaded:
            loaded[key] = AutoModelForCausalLM.from_pretrained(key, dtype=torch.float32).eval()
        return loaded[key]

    return load


def pytest_xdist_auto_num_workers(config):
    """Workers for `-n auto` (pyproject's addopts): one per usable CPU (basecli's own count), at most 8: each worker
    imports torch and loads the models its tests use (the embedded one ~0.6 GB), and past 8 the start-up
    outweighs what is left to share out."""
    return max(1, min(usable_cpus(), 8))


@pytest.fixture(scope="session", autouse=True)
def worker_threads():
    """Under xdist, torch in each worker gets its share of the CPUs (one each with `-n auto`), not all of them:
    two workers with two OpenMP threads each on two cores wait on each other. A test about threads sets its own."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, usable_cpus() // workers))


def pytest_collection_modifyitems(items):
    """A test that takes `real_model` loads the embedded model, so it is `slow` even where its mark was forgotten."""
    for item in items:
        if "real_model" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


REAL_HOME = Path(os.environ.get("BASECLI_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "basecli")


@pytest.fixture(scope="session", autouse=True)
def shared_kernels(request, tmp_path_factory):
    """One folder of compiled kernel libraries for every fresh home of every run (pytest's cache folder, which the
    xdist workers share; a temp folder with -p no:cacheprovider). A fresh BASECLI_HOME would otherwise compile
    native.c again, 1-3 s a time, in every test that runs a quantised model in a new process. Sharing cannot hand
    a test a stale build: native.build keys its file by the source, the compiler, the flags and the CPU, and
    writes it atomically. Tests of compiling itself use homes of their own."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        kernels = cache.mkdir("basecli-kernels")
    else:
        base = tmp_path_factory.getbasetemp()
        kernels = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-kernels"
        kernels.mkdir(parents=True, exist_ok=True)
    os.environ["BASECLI_TEST_KERNELS"] = str(kernels)  # not a module global: conftest is imported under two names
    return kernels


def share_kernels(home: Path) -> Path:
    """Give a new BASECLI_HOME the session's compiled kernels (a link: what it builds is shared as well). run_cli
    does it for the home its process will use; in this process native.library() compiles once anyway. A home
    that already exists is left as it is, so a test can see what a cold home builds."""
    kernels = os.environ.get("BASECLI_TEST_KERNELS")
    if kernels and not home.exists():
        home.mkdir(parents=True)
        (home / "native").symlink_to(kernels, target_is_directory=True)
    return home


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch, request):
    """Each test gets its own BASECLI_HOME, except tests that take the `real_model` fixture, which use the
    real cache (where README's set-up converted the embedded model) so the model is not converted again.
    Every test that loads the embedded model is marked `slow` (pytest -m "not slow" leaves them out)."""
    if "real_model" in request.fixturenames:
        monkeypatch.setenv("BASECLI_HOME", str(REAL_HOME))
    else:
        monkeypatch.setenv("BASECLI_HOME", str(tmp_path / "basecli-home"))
    monkeypatch.delenv("BASECLI_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture(scope="session")
def real_model():
    """The embedded SmolLM2-135M-Instruct, loaded once for the session."""
    os.environ["BASECLI_HOME"] = str(REAL_HOME)
    from basecli.backends.local import LocalBackend

    return LocalBackend(None, device="cpu", dtype="float32")


def run_cli(*args: str, input: str | None = None, env: dict | None = None, timeout: float = 300):
    """Run the real `python -m basecli` in a subprocess: exit codes, stdout/stderr split and pipes as users see them."""
    import subprocess
    import sys

    full_env = dict(os.environ)
    full_env.update(env or {})
    if full_env.get("BASECLI_HOME"):
        share_kernels(Path(full_env["BASECLI_HOME"]))
    return subprocess.run([sys.executable, "-m", "basecli", *args], input=input, capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def sigint_default() -> None:
    """Popen's preexec_fn for a child a test sends SIGINT: Ctrl-C's default action, as in a shell at a terminal. A
    test run started in the background by a script (`cmd &` without job control) ignores SIGINT, children inherit
    that, and Python then leaves it ignored (as it should for a background job): no KeyboardInterrupt to test."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stream_rows(backend, prompts, params, **kw) -> list[list]:
    """backend.stream's Events, each row's in order, rows in the order of `prompts`."""
    rows: dict[int, list] = {}
    for ev in backend.stream(prompts, params, **kw):
        rows.setdefault(ev.row, []).append(ev)
    return [rows[i] for i in range(len(prompts))]


class Result:
    """What a run of the CLI left: like subprocess.CompletedProcess, and unpacks as (code, stdout, stderr)."""

    def __init__(self, code, stdout, stderr):
        self.returncode, self.stdout, self.stderr = code, stdout, stderr

    def __iter__(self):
        return iter((self.returncode, self.stdout, self.stderr))


def invoke(*args, input: str | bytes | None = None, env: dict | None = None, backend=None) -> Result:
    """Run the CLI in this process (fast: torch is imported once), as `main()` would for a user: the one
    in-process runner of the tests. stdout has a byte buffer, as a real one does (tokenize --decode writes bytes);
    `env` is set for the run only; `backend`, if given, stands in for whatever the flags would open.
    `input` is stdin: text, or bytes as they are (invalid UTF-8, NUL bytes)."""
    import contextlib
    import io
    import sys

    import basecli.backends
    from basecli.cli import main

    def stream():
        return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="", write_through=True)

    out, err = stream(), stream()
    stdin = io.TextIOWrapper(io.BytesIO(input if isinstance(input, bytes) else (input or "").encode()))
    old_argv, old_stdin, old_env, old_open = sys.argv, sys.stdin, dict(os.environ), basecli.backends.open_backend
    sys.argv, sys.stdin = ["basecli", *map(str, args)], stdin
    os.environ.update(env or {})
    if backend is not None:
        basecli.backends.open_backend = lambda *a, **k: backend
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv, sys.stdin, basecli.backends.open_backend = old_argv, old_stdin, old_open
        os.environ.clear()
        os.environ.update(old_env)
    return Result(code, out.buffer.getvalue().decode("utf-8"), err.buffer.getvalue().decode("utf-8"))
