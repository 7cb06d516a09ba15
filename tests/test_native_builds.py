"""The same bits from every build of the kernels: portable C, AVX2, and this CPU's own (AVX-512 where it has it).

A seeded run must not depend on which CPU ran it. Each build (engine/native.py BUILDS, picked by
BASECLI_NATIVE_BUILD) runs q4 and q8: the plain C loops add in the SIMD loops' order (native.c's
header says how), so the blocks a build quantises, the logits of a prefill and of every decode step
(batch 1, and resample's rows over one shared prompt) and so the greedy tokens are the same, bit for
bit, as the portable build's. The reference for "the same" is the portable build, whose every sum
is written out in C; the definitions themselves are checked in tests/test_native.py.
"""

from __future__ import annotations

import json
import platform

import pytest
import torch

from basecli.backends.local import LocalBackend
from basecli.config import SamplingParams
from basecli.engine import native
from conftest import run_cli, share_kernels

PROMPTS = ["The quick brown fox", "Hello world! 안녕", "def add(a, b):\n"]


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """The library of every build this CPU can run, each compiled on its own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BASECLI_HOME", str(share_kernels(tmp_path_factory.mktemp("builds") / "home")))
        out = {}
        for build in native.BUILDS:
            if build == "avx2" and not {"avx2", "fma", "f16c"} <= cpu_flags():
                continue  # would not run here (or not compile, off x86)
            try:
                out[build] = native.load(native.build(native.flag_sets(build)))
            except native.NativeUnavailable as e:
                if build == "portable":
                    pytest.skip(f"the kernels do not build here: {e}")
        yield out


def backend_on(lib, folder, mode, monkeypatch) -> LocalBackend:
    """A q4/q8 backend whose matrices and decode step use `lib`."""
    monkeypatch.setattr(native, "_lib", lib)
    backend = LocalBackend(str(folder), device="cpu", dtype="float32", engine="lean", quantize=mode)
    assert backend.model.native.lib is lib and backend.model.layers[0].qkv.lib is lib
    return backend


def tokens_of(backend, prompts: list[str], n: int = 12, **sampling) -> list[list[int]]:
    """Each row's tokens, greedy unless `sampling` says otherwise (a seed per row: seeds=[...])."""
    seeds = sampling.pop("seeds", None)
    params = [SamplingParams(max_tokens=n, ignore_eos=True, **{"temperature": 0, **sampling})] * len(prompts)
    rows = [[] for _ in prompts]
    for event in backend.stream(prompts, params, seeds=seeds):
        rows[event.row].append(event.token_id)
    return rows


def matrices(model):
    yield model.head
    for layer in model.layers:
        yield from (getattr(layer, name) for name in type(model).MATRICES)


@torch.inference_mode()
def forced_logits(backend, prompt: str, rows: list[list[int]]) -> torch.Tensor:
    """The logits of the prompt's prefill, then of decode steps teacher-forced on `rows` (a list of tokens per
    row: one row is batch 1, several share the prompt's keys as resample's rows do), as one flat tensor."""
    model = backend.model
    ids = torch.tensor([backend.encode(prompt)])
    cache = model.new_cache()
    prefill = model(ids, torch.ones_like(ids), None, cache).logits[0]
    if len(rows) > 1:
        cache.batch_repeat_interleave(len(rows))
    steps = []
    for i, column in enumerate(zip(*rows)):
        mask = torch.ones(len(rows), ids.shape[1] + i + 1, dtype=torch.long)
        pos = torch.full((len(rows), 1), ids.shape[1] + i)
        steps.append(model(torch.tensor(column)[:, None], mask, pos, cache).logits[:, -1])
    return torch.cat([prefill.flatten(), torch.stack(steps).flatten()])


def assert_same_bits(runs: dict, prompts: list[str], n: int, resample_rows: int = 4) -> None:
    """Every build against the portable one: the quantised blocks, the greedy tokens of `prompts` batched (left
    padded), seeded samples of a resample batch, and the logits of each prompt at batch 1 and of
    `resample_rows` rows over the first prompt, teacher-forced on the portable build's tokens."""
    ref = runs["portable"]
    want_tokens = tokens_of(ref, prompts, n)
    seeds = list(range(7, 7 + resample_rows))
    want_samples = tokens_of(ref, [prompts[0]] * resample_rows, n, temperature=0.8, seeds=seeds)
    assert all(len(row) == n for row in want_tokens) and len({tuple(r) for r in want_samples}) > 1
    forced = [(p, [row[:-1]]) for p, row in zip(prompts, want_tokens)] + [(prompts[0], [r[:-1] for r in want_samples])]
    want_logits = [forced_logits(ref, p, rows) for p, rows in forced]
    for name, backend in runs.items():
        for mine, theirs in zip(matrices(backend.model), matrices(ref.model)):
            assert torch.equal(mine.blocks, theirs.blocks), f"{name} build quantised a matrix to other blocks"
        assert tokens_of(backend, prompts, n) == want_tokens, f"{name} build's greedy tokens differ from the portable build's"
        samples = tokens_of(backend, [prompts[0]] * resample_rows, n, temperature=0.8, seeds=seeds)
        assert samples == want_samples, f"{name} build's seeded samples differ from the portable build's"
        for (prompt, rows), want in zip(forced, want_logits):
            got = forced_logits(backend, prompt, rows)
            worst = float((got - want).abs().max())
            assert torch.equal(got, want), f"{name} build, {prompt!r} x {len(rows)} rows: logits differ by up to {worst:.3g}"


def test_the_builds_are_what_they_say(builds):
    assert builds["portable"].basecli_has_avx2() == 0
    if "avx2" in builds:
        assert builds["avx2"].basecli_has_avx2() == 1
    on_x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert builds["native"].basecli_has_avx2() == int(on_x86 and {"avx2", "fma", "f16c"} <= cpu_flags())


def test_no_build_may_reorder_or_fuse_on_its_own(tmp_path, monkeypatch):
    """The order written in native.c is the order run: every flag set turns contraction off, and a fast-math
    build (free to reassociate sums) is refused at compile time."""
    assert all("-ffp-contract=off" in flags for build in native.BUILDS for flags in native.flag_sets(build))
    monkeypatch.setenv("BASECLI_HOME", str(tmp_path))
    with pytest.raises(native.NativeUnavailable, match="fast-math"):
        native.build((["-O1", "-ffast-math"],))


@pytest.mark.parametrize("mode", ["q4", "q8"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])  # rms_norm, rope, silu; layer_norm, learned positions, gelu
def test_every_build_gives_the_same_bits(builds, tiny_dirs, kind, mode, monkeypatch, one_thread):
    if len(builds) < 2:
        pytest.skip("only one build runs on this CPU")
    assert_same_bits({name: backend_on(lib, tiny_dirs[kind], mode, monkeypatch) for name, lib in builds.items()}, PROMPTS, 12)


@pytest.mark.slow  # compiles two builds in a cold home, by design: ~7 s
def test_the_environment_variable_picks_the_build(tiny_dirs, tmp_path):
    """End to end: BASECLI_NATIVE_BUILD=portable, a fresh process, the same greedy completion as the default build."""
    args = ["complete", "The quick brown fox", "-m", str(tiny_dirs["llama"]), "--quantize", "q4", "-t", "0", "-n", "8",
            "--ignore-eos", "--json"]
    (tmp_path / "home").mkdir()  # a cold home of its own (run_cli shares the session's kernels only with new ones)
    env = {"BASECLI_HOME": str(tmp_path / "home"), "BASECLI_THREADS": "1"}
    default = run_cli(*args, env=env)
    portable = run_cli(*args, env={**env, "BASECLI_NATIVE_BUILD": "portable"})
    assert default.returncode == 0 and portable.returncode == 0, default.stderr + portable.stderr
    ids = lambda r: [t["id"] for t in json.loads(r.stdout)["tokens"]]  # noqa: E731
    assert ids(portable) == ids(default)
    assert len(list((tmp_path / "home" / "native").glob("*.so"))) == 2  # two builds, not one reused
    bad = run_cli(*args, env={**env, "BASECLI_NATIVE_BUILD": "sse9"})
    assert bad.returncode == 2 and bad.stderr.startswith("basecli: error: unknown BASECLI_NATIVE_BUILD 'sse9'")


@pytest.mark.slow
def test_every_build_gives_the_same_bits_on_the_embedded_model(builds, real_model, monkeypatch, one_thread):
    """The default path on the real model (q4, the file's own blocks): 30 layers, head_dim 64 (a key's score is a
    sum of 8 vectors), activations rounded to 8 bits 210 times a token. Before the plain C loops added in the
    SIMD order, greedy tokens parted between builds within 2-9 steps."""
    if len(builds) < 2:
        pytest.skip("only one build runs on this CPU")
    runs = {}
    for name, lib in builds.items():
        monkeypatch.setattr(native, "_lib", lib)
        runs[name] = LocalBackend(None, device="cpu", quantize="q4")
        assert runs[name].model.native.lib is lib
    assert_same_bits(runs, PROMPTS, 10)
