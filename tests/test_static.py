"""The preallocated-cache decode path (engine/static_loop.py) against the plain loop (engine/loop.py),
and its on-device draw against its definition. It runs here eagerly: the same code a GPU captures."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from basecli.backends.local import LocalBackend
from basecli.config import SamplingParams
from basecli.engine import static_loop
from basecli.engine.device_sampling import seed_tensor, uniform
from basecli.engine.loop import generate
from basecli.engine.processors import RowParams, invert_cdf, process
from basecli.engine.static import StaticCache, capacity_for
from basecli.engine.static_loop import generate_static, graph_mode, pick_generate, use_static
from basecli.errors import UsageError

PROMPTS = ["The quick brown fox", "Hello world! 안녕", "def add(a, b):\n"]
# fp32, static against plain: the same function, but attention over the whole (masked) capacity sums in another order
LOGPROB_TOLERANCE = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


# GPT-2 joins once the lean engine runs it (engine/gpt2.py)
LEAN_KINDS = ["llama"] + (["gpt2"] if importlib.util.find_spec("basecli.engine.gpt2") else [])


@pytest.fixture(scope="module", params=LEAN_KINDS)
def lean_backend(request, tiny_dirs):
    b = LocalBackend(str(tiny_dirs[request.param]), device="cpu", dtype="float32", engine="lean")
    assert b.engine == "lean" and static_loop.supports_static(b.model)
    return b


def rows(events):
    out = {}
    for ev in events:
        out.setdefault(ev.row, []).append(ev)
    return [out[i] for i in sorted(out)]


def both(b, prompts, params, **kw):
    """(plain, static) events per row for the same call."""
    encoded = [b.encode(p) for p in prompts]
    plain = rows(generate(b.model, b.tokenizer, encoded, params, **{k: v for k, v in kw.items() if k != "sync_every"}))
    static = rows(generate_static(b.model, b.tokenizer, encoded, params, **kw))
    return plain, static


def assert_same(plain, static):
    assert [[e.token_id for e in r] for r in static] == [[e.token_id for e in r] for r in plain]
    assert [[(e.text, e.finish_reason, e.step) for e in r] for r in static] == [[(e.text, e.finish_reason, e.step) for e in r] for r in plain]
    for rp, rs in zip(plain, static):
        for p, s in zip(rp, rs):
            assert s.logprob == pytest.approx(p.logprob, abs=LOGPROB_TOLERANCE)
            assert [i for i, _ in s.alternatives] == [i for i, _ in p.alternatives]
            assert [lp for _, lp in s.alternatives] == pytest.approx([lp for _, lp in p.alternatives], abs=LOGPROB_TOLERANCE)
            if p.entropy is not None:
                assert s.entropy == pytest.approx(p.entropy, abs=LOGPROB_TOLERANCE)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_batch_1_greedy_equals_plain(lean_backend, prompt):
    p = [SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)]
    assert_same(*both(lean_backend, [prompt], p, alternatives=3, entropy=True))


@pytest.mark.parametrize("sync_every", [1, 4])
def test_left_padding_and_rows_leaving_equal_plain(lean_backend, sync_every):
    """Rows of different lengths (left padding) and max tokens (rows leave: masked, then the batch is cut)."""
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, repetition_penalty=r) for n, r in [(5, 1.0), (23, 1.3), (11, 1.0)]]
    assert_same(*both(lean_backend, PROMPTS, params, alternatives=2, sync_every=sync_every))


def test_shared_prefix_greedy_equals_plain_and_sampled_rows_equal_single_runs(lean_backend):
    greedy = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (9, 17, 4, 12)]
    assert_same(*both(lean_backend, [PROMPTS[2]] * 4, greedy, sync_every=3))
    sampled = [SamplingParams(max_tokens=n, temperature=1.0, seed=s, ignore_eos=True) for s, n in [(1, 14), (2, 6), (3, 10)]]
    enc = [lean_backend.encode(PROMPTS[0])]
    batch = rows(generate_static(lean_backend.model, lean_backend.tokenizer, enc * 3, sampled, sync_every=4))
    singles = [rows(generate_static(lean_backend.model, lean_backend.tokenizer, enc, [p]))[0] for p in sampled]
    assert [[e.token_id for e in r] for r in batch] == [[e.token_id for e in r] for r in singles]
    assert [len(r) for r in batch] == [14, 6, 10]
    assert len({tuple(e.token_id for e in r[:6]) for r in batch}) > 1, "different seeds should give different samples"


def test_stop_strings_and_eos_are_found_on_the_host_between_reads(lean_backend):
    b = lean_backend
    (free,) = both(b, [PROMPTS[0]], [SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)])[0]
    text = "".join(e.text for e in free)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    eos = free[4].token_id
    params = [SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, stop=(stop,)),
              SamplingParams(max_tokens=12, temperature=0)]
    b.tokenizer.eos_ids, saved = {eos}, b.tokenizer.eos_ids
    try:
        plain, static = both(b, [PROMPTS[0]] * 2, params, sync_every=5)
    finally:
        b.tokenizer.eos_ids = saved
    assert_same(plain, static)
    assert static[0][-1].finish_reason == "stop" and static[1][-1].finish_reason == "eos"
    assert len(static[1]) == [e.token_id for e in free].index(eos) + 1


def test_sampled_tokens_are_the_inverse_cdf_at_the_hashed_uniform(lean_backend, reference):
    """Each sampled token is, by definition, the processed distribution's inverse CDF at uniform(seed, step);
    the logits come from transformers' own forward pass over the prompt and the tokens drawn so far."""
    b = lean_backend
    params = [SamplingParams(max_tokens=10, temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, repetition_penalty=1.2, seed=s)
              for s in (5, 2**40 + 9)]
    params = [p.with_(ignore_eos=True) for p in params]
    enc = [b.encode(PROMPTS[1]), b.encode(PROMPTS[2])]
    out = rows(generate_static(b.model, b.tokenizer, enc, params, sync_every=3))
    ref = reference(b.folder)
    for ids, p, events in zip(enc, params, out):
        cfg, seeds = RowParams([p], "cpu"), seed_tensor([p.seed], "cpu")
        context = list(ids)
        for ev in events:
            with torch.no_grad():
                logits = ref(torch.tensor([context])).logits[:, -1].float()
            seen = torch.zeros_like(logits, dtype=torch.bool)
            seen[0, context] = True
            want = invert_cdf(process(logits, cfg, seen), uniform(seeds, torch.tensor([ev.step])))
            assert ev.token_id == int(want)
            assert ev.logprob == pytest.approx(logits.log_softmax(-1)[0, ev.token_id].item(), abs=1e-4)
            context.append(ev.token_id)


def test_uniform_is_uniform_and_depends_on_seed_and_step_only():
    seeds = seed_tensor(list(range(200)), "cpu")
    u = torch.stack([uniform(seeds, torch.tensor([s])) for s in range(500)])  # (steps, rows)
    assert float(u.min()) >= 0 and float(u.max()) < 1
    counts = torch.histc(u.flatten(), bins=10, min=0, max=1)
    expected = u.numel() / 10
    assert float(((counts - expected) ** 2 / expected).sum()) < 30  # chi-square, 9 degrees of freedom: p < 0.001 above ~28
    assert torch.equal(uniform(seeds[7:8], torch.tensor([3])), u[3, 7:8])  # a row alone draws what it draws in a batch
    assert u[:, 0].unique().numel() == 500 and u[0].unique().numel() == 200


def test_static_cache_masks_padding_and_unwritten_columns():
    cache = StaticCache(1, 1, 2, batch=2, capacity=capacity_for(3, 2), dtype=torch.float32, device="cpu")
    assert cache.capacity == 64
    cache.fill_prompt(torch.tensor([[0, 1, 1], [1, 1, 1]]))
    mask, _ = cache.open_step(None, 3)
    assert mask.shape == (2, 1, 3, 64)
    assert mask[0, 0, :, :4].tolist() == [[True, False, False, False], [False, True, False, False], [False, True, True, False]]
    assert mask[1, 0, :, :4].tolist() == [[True, False, False, False], [True, True, False, False], [True, True, True, False]]
    cache.advance(3)
    cache.mark_next()
    mask, _ = cache.open_step(None, 1)
    assert mask[0, 0, 0, :5].tolist() == [False, True, True, True, False] and not mask[:, :, :, 5:].any()


def test_which_path_runs_where(lean_backend, tiny_backends, monkeypatch):
    model = lean_backend.model
    monkeypatch.delenv("BASECLI_DECODE", raising=False)
    assert not use_static(model)  # auto on the CPU: the plain loop (bench/README.md, "static cache on the CPU")
    assert use_static(model, "static") and not use_static(model, "plain")
    monkeypatch.setenv("BASECLI_DECODE", "static")
    assert pick_generate(model) is generate_static
    assert not use_static(tiny_backends["llama-transformers"].model)  # transformers' models: plain whatever is asked
    monkeypatch.setattr(model, "native", object())
    assert not use_static(model)  # the native q4/q8 step stays as it is
    monkeypatch.setenv("BASECLI_DECODE", "fast")
    with pytest.raises(UsageError, match="BASECLI_DECODE"):
        use_static(lean_backend.model)
    assert graph_mode("cpu", "cudagraph") == "off" and graph_mode("cpu") == "off" and graph_mode("cpu", "compile") == "compile"
    assert graph_mode("cuda") == "cudagraph" and graph_mode("cuda", "off") == "off"
    with pytest.raises(UsageError, match="BASECLI_GRAPH"):
        graph_mode("cpu", "always")


def test_complete_cli_forced_static_prints_what_plain_prints(tiny_dirs):
    from tests.conftest import invoke

    args = ("complete", "The quick", "-m", str(tiny_dirs["llama"]), "-n", "12", "-t", "0", "--ignore-eos", "--dtype", "float32")
    plain = invoke(*args, env={"BASECLI_DECODE": "plain"})
    static = invoke(*args, env={"BASECLI_DECODE": "static"})
    assert plain.returncode == 0 and static.returncode == 0, static.stderr
    assert static.stdout == plain.stdout and plain.stdout.strip()


def test_compiled_step_is_one_graph_and_gives_the_same_tokens(lean_backend, monkeypatch):
    """BASECLI_GRAPH=compile: torch.compile traces the whole decode step (sampling processors, cache write,
    forward) as one graph, with no break (fullgraph=True fails otherwise); the eager backend keeps it fast here."""
    params = [SamplingParams(max_tokens=8, temperature=0.7, top_k=20, top_p=0.9, min_p=0.01, repetition_penalty=1.2, seed=s,
                             ignore_eos=True) for s in (1, 2)]
    enc = [lean_backend.encode(p) for p in PROMPTS[:2]]
    want = rows(generate_static(lean_backend.model, lean_backend.tokenizer, enc, params, alternatives=2, entropy=True))
    monkeypatch.setattr(static_loop, "COMPILE_OPTIONS", {"dynamic": False, "fullgraph": True, "backend": "eager"})
    monkeypatch.setattr(static_loop, "note", lambda message: pytest.fail(message))  # no fallback to the eager step
    got = rows(generate_static(lean_backend.model, lean_backend.tokenizer, enc, params, alternatives=2, entropy=True, graph="compile"))
    assert [[(e.token_id, e.logprob, e.alternatives, e.entropy) for e in r] for r in got] == \
        [[(e.token_id, e.logprob, e.alternatives, e.entropy) for e in r] for r in want]


class FakeCuda:
    """torch.cuda's graph calls as their documented semantics, on the CPU: work done while capturing is recorded,
    not run, and a replay runs what was recorded. Counts what happened, so the Replay's control flow can be checked."""

    def __init__(self, fail_capture: bool = False):
        self.capturing, self.fail_capture, self.captures, self.replays, self.warm_on_side = False, fail_capture, 0, 0, 0
        self.side = False
        fake = self

        class Graph:
            def __init__(self):
                self.recorded = []

            def replay(self):
                fake.replays += 1
                for work in self.recorded:
                    work()

        class Capture:
            def __init__(self, graph):
                self.graph = graph

            def __enter__(self):
                fake.capturing, fake.graph = True, self.graph

            def __exit__(self, *exc):
                fake.capturing = False
                fake.captures += 1
                if fake.fail_capture:
                    raise RuntimeError("operation not permitted when stream is capturing")

        class Side:
            def __enter__(self):
                fake.side = True

            def __exit__(self, *exc):
                fake.side = False

        self.CUDAGraph, self.graph = Graph, Capture
        self.Stream = lambda: type("S", (), {"wait_stream": lambda s, o: None})()
        self.current_stream = self.Stream
        self.stream = lambda s: Side()
        self.synchronize = lambda: None

    def step(self, done: list):
        """A decode step's work: done now, or recorded if a capture is under way."""
        work = lambda: done.append(1)  # noqa: E731
        if self.capturing:
            self.graph.recorded.append(work)
        else:
            self.warm_on_side += self.side
            work()


@pytest.mark.parametrize("fail", [False, True])
def test_replay_warms_up_captures_once_and_falls_back_when_capture_fails(monkeypatch, fail):
    fake, done, notes = FakeCuda(fail_capture=fail), [], []
    for name in ("CUDAGraph", "graph", "Stream", "current_stream", "stream", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(static_loop, "note", notes.append)
    replay = static_loop.Replay(lambda: fake.step(done), "cudagraph", "cuda")
    for _ in range(10):
        replay()
    assert len(done) == 10  # every call did exactly one step's work, captured or not
    assert fake.warm_on_side == static_loop.WARMUP_STEPS and fake.captures == 1
    if fail:
        assert fake.replays == 0 and len(notes) == 1 and "capture" in notes[0]
    else:
        assert fake.replays == 10 - static_loop.WARMUP_STEPS and notes == []


@pytest.mark.slow
def test_static_equals_plain_on_the_embedded_model(real_model):
    """SmolLM2-135M in fp32: left-padded rows leaving at different lengths, greedy, static against plain.
    (In bf16 both paths round differently, as the plain path and transformers do: near-ties flip.)"""
    b = real_model
    prompts = ["The capital of France is", "def fib(n):", "Once upon a time, in a small village by the sea, there lived"]
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (24, 16, 32)]
    plain, static = both(b, prompts, params, alternatives=2, sync_every=4)
    assert [[e.token_id for e in r] for r in static] == [[e.token_id for e in r] for r in plain]
    for rp, rs in zip(plain, static):
        assert [e.logprob for e in rs] == pytest.approx([e.logprob for e in rp], abs=1e-4)


def test_buffers_and_captured_step_are_reused_across_runs_without_changing_a_token(lean_backend):
    """A run with the same shapes and processors reuses the last run's buffers (and, on CUDA, its captured graph):
    other settings and seeds are written into them. Rows leaving (a cut batch) and a second run started while the
    first is under way must not disturb the kept buffers."""
    b, m = lean_backend, lean_backend.model
    enc = [b.encode(p) for p in (PROMPTS[0], PROMPTS[2], PROMPTS[0], PROMPTS[1])]
    p1 = [SamplingParams(max_tokens=n, temperature=0.8, top_k=30, seed=s, ignore_eos=True) for s, n in [(1, 9), (2, 3), (3, 3), (4, 9)]]
    p2 = [p.with_(temperature=1.3, top_k=k, seed=p.seed + 10) for p, k in zip(p1, (30, 12, 30, 5))]  # top-k's bound stays 30

    def run(params, fresh=False):
        if fresh:
            m.static_held = None
        return [[(e.token_id, e.logprob) for e in r] for r in rows(generate_static(m, b.tokenizer, enc, params, sync_every=2))]

    want1, want2 = run(p1, fresh=True), run(p2, fresh=True)
    assert want1 != want2
    assert run(p1) == want1
    held = m.static_held
    where = buffers(held[1])
    assert run(p2) == want2 and m.static_held is held  # reused
    assert buffers(held[1]) == where  # written in place: a captured graph reads them where they were
    first = generate_static(m, b.tokenizer, enc, p1, sync_every=2)
    started = [next(first) for _ in range(3)]
    assert run(p2) == want2  # while `first` holds the kept buffers, this run gets its own
    assert [[(e.token_id, e.logprob) for e in r] for r in rows(started + list(first))] == want1
    assert run(p1) == want1 and m.static_held is held


def buffers(decoder) -> dict:
    """Where every tensor a decode step reads or writes lies in memory."""
    found = {}
    for owner, name in [(decoder, "decoder"), (decoder.cache, "cache"), (decoder.draw, "draw"), (decoder.draw.cfg, "cfg")]:
        for attr, value in vars(owner).items():
            if isinstance(value, torch.Tensor):
                found[f"{name}.{attr}"] = value.data_ptr()
    assert {"decoder.logits", "cache.k", "cache.keys", "cache.col", "draw.seeds", "cfg.temperature"} <= set(found)
    return found


def test_a_run_with_a_prefix_cache_is_the_plain_loops(lean_backend):
    """loom's prefix cache keeps growing caches: forced static, such a run goes to the plain loop, hits included."""
    from basecli.engine.prefix_cache import PrefixCache

    b = lean_backend
    params = [SamplingParams(max_tokens=6, temperature=1.0, seed=s, ignore_eos=True) for s in (1, 2)]
    enc = [b.encode(PROMPTS[0])] * 2
    keep = PrefixCache()
    first = [e.token_id for e in generate(b.model, b.tokenizer, enc, params, prefix_cache=PrefixCache())]
    for _ in range(2):  # a miss, then a hit
        got = [e.token_id for e in generate_static(b.model, b.tokenizer, enc, params, prefix_cache=keep)]
        assert got == first
