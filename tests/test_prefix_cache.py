"""The prefix cache (engine/prefix_cache.py): a prompt that extends an earlier one reads only its new
tokens, and the rows generated from it are those of a full read (the engine without the cache is the
reference; it is itself checked against transformers in test_loop.py)."""

from __future__ import annotations

import os

import pytest

from basecli.config import SamplingParams
from conftest import stream_rows

PROMPTS = [
    "The quick brown fox",
    "The quick brown fox jumps over the lazy dog.",  # extends the first
    "The quick brown fox jumps over the lazy dog. Here's my top-10 list",  # extends the second
    "The quick brown cat",  # a sibling: shares only the start
    "The quick brown fox jumps over the lazy dog.",  # seen before, exactly
]


def run(backend, prompt: str, n: int, seed: int, temperature: float):
    params = [SamplingParams(max_tokens=6, temperature=temperature, seed=seed + i) for i in range(n)]
    return stream_rows(backend, [prompt] * n, params, alternatives=3)


@pytest.mark.parametrize("n,temperature", [(1, 0.0), (4, 0.0), (3, 1.0)])
def test_rows_match_a_full_read(tiny_backend, one_thread, n, temperature):
    from basecli.engine.prefix_cache import PrefixCache

    cache = PrefixCache()
    for k, prompt in enumerate(PROMPTS):
        tiny_backend.prefix_cache = None
        want = run(tiny_backend, prompt, n, 100 + k, temperature)
        tiny_backend.prefix_cache = cache
        try:
            got = run(tiny_backend, prompt, n, 100 + k, temperature)
        finally:
            tiny_backend.prefix_cache = None
        for a, b in zip(got, want):
            assert [e.token_id for e in a] == [e.token_id for e in b]
            assert [e.logprob for e in a] == pytest.approx([e.logprob for e in b], abs=1e-4)
            assert [[i for i, _ in e.alternatives] for e in a] == [[i for i, _ in e.alternatives] for e in b]


def test_only_new_tokens_are_read(tiny_backends, one_thread):
    from basecli.engine.prefix_cache import PrefixCache

    backend = tiny_backends["llama"]
    ids = [backend.encode(p) for p in PROMPTS]
    backend.prefix_cache = cache = PrefixCache()
    try:
        run(backend, PROMPTS[0], 2, 1, 0.0)
        assert (cache.reused, cache.read) == (0, len(ids[0]))
        run(backend, PROMPTS[1], 2, 1, 0.0)
        shared = next(i for i, (a, b) in enumerate(zip(ids[0], ids[1])) if a != b) if ids[1][: len(ids[0])] != ids[0] else len(ids[0])
        assert cache.reused == shared and cache.read == len(ids[0]) + len(ids[1]) - shared
        before = cache.read
        run(backend, PROMPTS[4], 1, 1, 0.0)  # the same prompt again: only its last token, for its logits
        assert cache.read == before + 1
    finally:
        backend.prefix_cache = None


def test_snapshots_are_not_changed_by_generation(tiny_backends, one_thread):
    """Generating appends to the cache it is given; the kept snapshot must be a copy, or the next hit reads garbage."""
    from basecli.engine.prefix_cache import PrefixCache

    backend = tiny_backends["llama"]
    backend.prefix_cache = PrefixCache()
    try:
        first = run(backend, PROMPTS[0], 2, 5, 1.0)
        again = run(backend, PROMPTS[0], 2, 5, 1.0)
    finally:
        backend.prefix_cache = None
    assert [[e.token_id for e in r] for r in first] == [[e.token_id for e in r] for r in again]


def test_open_backend_turns_it_on(tiny_dirs):
    from basecli.backends import open_backend

    assert open_backend(str(tiny_dirs["gpt2"]), device="cpu", dtype="float32", prefix_cache=True).prefix_cache is not None
    assert open_backend(str(tiny_dirs["gpt2"]), device="cpu", dtype="float32").prefix_cache is None


def test_a_row_that_ends_on_its_first_token_after_a_shared_read(tiny_backend, one_thread):
    """Rows of one prompt share its keys; one of them stopping at once must not break the others (the lean
    cache held nothing per row yet and failed), with the prefix cache or without."""
    from basecli.engine.prefix_cache import PrefixCache

    prompt = "The quick brown fox"
    first = run(tiny_backend, prompt, 1, 11, 1.0)[0][0].token_text
    params = [SamplingParams(max_tokens=5, temperature=1.0, seed=11, stop=(first,))] + \
             [SamplingParams(max_tokens=5, temperature=1.0, seed=12 + i) for i in range(2)]
    for cache in (None, PrefixCache()):
        tiny_backend.prefix_cache = cache
        try:
            rows = stream_rows(tiny_backend, [prompt] * 3, params)
        finally:
            tiny_backend.prefix_cache = None
        assert rows[0][-1].finish_reason == "stop" and len(rows[0]) == 1
        for i in (1, 2):
            alone = [e.token_id for e in run(tiny_backend, prompt, 1, 11 + i, 1.0)[0]]
            assert [e.token_id for e in rows[i]] == alone[: len(rows[i])] and len(rows[i]) == 5


@pytest.fixture(scope="module")
def q4_backend(tiny_dirs, tmp_path_factory):
    """The tiny Llama on basecli's own q4 kernels (built into a home of this module's own)."""
    import shutil

    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler to build native.c")
    from basecli.backends.local import LocalBackend

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BASECLI_HOME", str(tmp_path_factory.mktemp("q4-home")))
        yield LocalBackend(str(tiny_dirs["llama"]), device="cpu", dtype="float32", quantize="q4")


def test_q4_rows_match_a_full_read(q4_backend, one_thread):
    """--quantize q4: a one-token read after a hit goes through the native decode step, a longer one through the
    lean forward with q4 matrices; either way the rows are those of a full read."""
    from basecli.engine.prefix_cache import PrefixCache

    cache = PrefixCache()
    for k, prompt in enumerate(PROMPTS):
        q4_backend.prefix_cache = None
        want = run(q4_backend, prompt, 3, 7 + k, 1.0)
        q4_backend.prefix_cache = cache
        try:
            got = run(q4_backend, prompt, 3, 7 + k, 1.0)
        finally:
            q4_backend.prefix_cache = None
        for a, b in zip(got, want):
            assert [e.token_id for e in a] == [e.token_id for e in b]
            # a read in pieces runs other kernels than one read (a one-token read: the native decode step), which
            # round differently: the same tokens, log-probabilities within q4's rounding (3e-3 seen)
            assert [e.logprob for e in a] == pytest.approx([e.logprob for e in b], abs=1e-2)
    assert cache.reused > 0
