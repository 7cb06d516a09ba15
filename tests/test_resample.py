"""resample: one batch equals separate runs seeded S+i; chunks equal one batch; --best, --tree, --jsonl; bad input."""

from __future__ import annotations

import io
import json
import math

import pytest

from basecli.backends.batching import Sample, collect, seeded, stream_rows
from basecli.config import SamplingParams
from conftest import invoke as run_in_process
from conftest import run_cli

PROMPT = "The quick brown fox"


def invoke(*args):
    result = run_in_process(*args)
    assert result.returncode == 0, result.stderr
    return result


def single(backend, prompt, params):
    """The reference: one row alone in its batch, as `complete --seed` runs it."""
    return [ev for ev in backend.stream([prompt], [params])]


def rows(backend, n, params, **kw):
    samples = [Sample(i, p) for i, p in enumerate(params)]
    return collect(samples, stream_rows(backend, [PROMPT] * n, params, **kw))


@pytest.mark.parametrize("base", [
    SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True),
    SamplingParams(max_tokens=12, temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.3, ignore_eos=True),
], ids=["plain", "filtered"])
def test_row_i_equals_a_single_run_seeded_s_plus_i(tiny_backend, base):
    params = seeded([base] * 5, 1000)
    batch = rows(tiny_backend, 5, params)
    for i, s in enumerate(batch):
        ref = single(tiny_backend, PROMPT, base.with_(seed=1000 + i))
        assert s.token_ids == [ev.token_id for ev in ref]
        assert s.logprobs == pytest.approx([ev.logprob for ev in ref], abs=1e-4)
    assert len({tuple(s.token_ids) for s in batch}) > 1, "different seeds should give different rows"


def test_chunks_give_the_same_samples_as_one_batch(tiny_backend):
    params = seeded([SamplingParams(max_tokens=10, temperature=1.0)] * 7, 42)
    whole = rows(tiny_backend, 7, params, batch_size=7)
    seen = []
    chunked = rows(tiny_backend, 7, params, batch_size=3, on_chunks=seen.append)
    assert [len(p) for p in seen[0]] == [3, 2, 2]
    assert [s.token_ids for s in chunked] == [s.token_ids for s in whole]
    assert [s.finish_reason for s in chunked] == [s.finish_reason for s in whole]


def test_memory_estimate_splits_a_set_that_does_not_fit(tiny_backends, monkeypatch):
    from basecli.backends import batching
    tiny_backend = tiny_backends["llama"]
    need = batching.bytes_per_row(tiny_backend.model, len(tiny_backend.encode(PROMPT)), 10)
    # the KV cache alone: 2 (k, v) x layers x kv heads x head dim x 4 bytes x (prompt + new tokens)
    cfg = tiny_backend.model.config
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    assert need >= 2 * layers * kv_heads * (hidden // heads) * 4 * (len(tiny_backend.encode(PROMPT)) + 10)
    monkeypatch.setattr(batching, "free_memory", lambda device: 3 * need + 1)
    assert batching.rows_per_batch(tiny_backend, PROMPT, 10) == 3
    seen = []
    params = seeded([SamplingParams(max_tokens=10)] * 7, 5)
    events = stream_rows(tiny_backend, [PROMPT] * 7, params, on_chunks=seen.append)
    next(events)  # the plan is made before the first batch runs
    events.close()
    assert [len(p) for p in seen[0]] == [3, 2, 2]


def test_finished_rows_leave_the_batch(tiny_backends):
    """A row that hits its stop string stops costing compute: later forward passes are narrower."""
    b = tiny_backends["gpt2"]
    base = SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True)
    free = rows(b, 4, seeded([base] * 4, 11))
    text = free[0].text
    at = next(i for i in range(1, len(text) - 1) if text.find(text[i : i + 2]) == i)
    stop = text[at : at + 2]  # text row 0 surely produces, early, and not before
    widths = []
    hook = b.model.register_forward_pre_hook(lambda _m, _a, kw: widths.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        stopped = rows(b, 4, seeded([base.with_(stop=(stop,))] * 4, 11))
    finally:
        hook.remove()
    assert stopped[0].finish_reason == "stop" and len(stopped[0].events) < 12
    assert max(widths) == 4 and widths[-1] < 4


def test_jsonl_rows_equal_complete_cli_with_seed_s_plus_i(tiny_dirs):
    model = str(tiny_dirs["gpt2"])
    out = invoke("resample", PROMPT, "-m", model, "-N", 3, "-n", 8, "-s", 70, "-t", 0.9, "--jsonl", "--device", "cpu", "--dtype", "float32")
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["index"] for r in lines] == [0, 1, 2] and [r["seed"] for r in lines] == [70, 71, 72]
    for r in lines:
        assert r["params"]["seed"] == r["seed"]
        lps = [t["logprob"] for t in r["tokens"]]
        assert r["mean_logprob"] == pytest.approx(sum(lps) / len(lps), abs=1e-4)
    ref = run_in_process("complete", PROMPT, "-m", model, "-n", "8", "-s", "72", "-t", "0.9", "--json", "--device", "cpu", "--dtype", "float32")
    assert ref.returncode == 0, ref.stderr
    want = json.loads(ref.stdout)
    assert [t["id"] for t in lines[2]["tokens"]] == [t["id"] for t in want["tokens"]]
    assert lines[2]["completion"] == want["completion"]


def test_best_keeps_the_highest_mean_logprobs_best_first(tiny_dirs):
    model = str(tiny_dirs["llama"])
    common = [PROMPT, "-m", model, "-N", 6, "-n", 6, "-s", 3, "--jsonl", "--device", "cpu"]
    everything = [json.loads(x) for x in invoke("resample", *common).stdout.splitlines()]
    kept = [json.loads(x) for x in invoke("resample", *common, "--best", 2).stdout.splitlines()]
    ranked = sorted(everything, key=lambda r: -r["mean_logprob"])
    assert [r["index"] for r in kept] == [r["index"] for r in ranked[:2]]
    assert kept[0]["mean_logprob"] >= kept[1]["mean_logprob"]


def test_plain_output_and_batch_size_note(tiny_dirs):
    model = str(tiny_dirs["gpt2"])
    common = [PROMPT, "-m", model, "-N", 4, "-n", 5, "-s", 9, "--device", "cpu", "--dtype", "float32"]
    one = invoke("resample", *common)
    split = invoke("resample", *common, "--batch-size", 3)
    assert one.stdout == split.stdout  # the chunks change nothing in the samples
    assert "2 batches" in split.stderr and "batches" not in one.stderr
    heads = [line for line in one.stdout.splitlines() if line.startswith("#")]
    assert [h.split()[:2] for h in heads] == [["#1", "seed=9"], ["#2", "seed=10"], ["#3", "seed=11"], ["#4", "seed=12"]]
    assert "4 samples" in one.stderr  # the summary goes to stderr in a pipe


def test_tree_view_on_hand_made_samples():
    """The tree shows, at each fork, how many samples took each token and the model's probability of it."""
    from basecli.events import Event
    from basecli.views import resample as view

    class Tok:
        eos_ids = frozenset({0})

        def token_bytes(self, i):
            return {1: b" Joe", 2: b" Biden", 3: b" Donald", 4: b" Trump", 5: b"."}[i]

    paths = [([1, 2, 5], [0.5, 0.9, 0.3]), ([1, 2, 0], [0.5, 0.9, 0.6]), ([3, 4, 5], [0.25, 0.99, 0.4])]
    samples = []
    for i, (ids, ps) in enumerate(paths):
        s = Sample(i, SamplingParams(seed=i))
        for k, (t, p) in enumerate(zip(ids, ps)):
            last = k == len(ids) - 1
            text = Tok().token_bytes(t).decode() if t else ""
            s.events.append(Event(i, k, t, text, text, math.log(p), finish_reason=("eos" if t == 0 else "length") if last else None))
        samples.append(s)
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(view.tree(Tok(), "The winner was", samples))
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0] == "The winner was"
    assert "2×   50% ·Joe Biden" in lines[1]
    assert "1×   60% ⟨end of text⟩" in text and "1×   30% .  #1 (length)" in text
    assert "1×   25% ·Donald Trump." in text and "#3 (length)" in text
    assert max(len(line) for line in lines) <= 80
    assert view.summary(samples).startswith("3 samples · 3 distinct · first split at token 1")


@pytest.mark.parametrize("args, message", [
    (["-N", "0"], "-N/--samples must be at least 1"),
    (["-N", "3", "--best", "4"], "--best must be between 1 and -N (3)"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    r = run_cli("resample", "hello", *args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert message in r.stderr and r.stdout == ""


def fake_events():
    """Two rows; row 1 finishes first."""
    from basecli.events import Event

    yield Event(0, 0, 1, " a", " a", -0.5)
    yield Event(1, 0, 2, " b", " b", -1.0, finish_reason="stop")
    yield Event(0, 1, 3, " c", " c", -0.5, finish_reason="length")


@pytest.mark.parametrize("height, live", [(6, False), (60, True)])
def test_panels_live_when_tall_enough_else_as_rows_finish(height, live):
    from rich.console import Console

    from basecli.views import resample as view

    assert view.live_fits(80, height, 2, 3, "prompt") is live
    out = io.StringIO()
    con = Console(file=out, width=80, height=height, force_terminal=True, color_system=None)
    samples = [Sample(i, SamplingParams(seed=10 + i)) for i in range(2)]
    view.watch(con, "prompt", samples, fake_events(), max_tokens=3)
    text = out.getvalue()
    assert [s.text for s in samples] == [" a c", " b"]
    final = text[text.rindex("prompt"):] if not live else text
    order = [final.rindex("#1 seed 10"), final.rindex("#2 seed 11")]
    # live: the last frame shows the panels in index order; short terminal: in the order rows finished
    assert (order[0] < order[1]) is live
    assert "stop · mean logprob −1.00" in text and "length · mean logprob −0.50" in text


def test_live_fits_depends_on_size():
    from basecli.views import resample as view

    assert not view.live_fits(80, 24, 8, 40, "The 2024 US presidential election was won by")
    assert view.live_fits(200, 50, 6, 24, "The 2024 US presidential election was won by")  # 3 panels a row


def test_tree_in_a_pipe_accounts_for_every_sample(tiny_dirs):
    import re

    out = invoke("resample", PROMPT, "-m", tiny_dirs["llama"], "-N", 5, "-n", 4, "-s", 1, "-t", 0.7, "--tree", "--device", "cpu")
    lines = out.stdout.splitlines()
    assert lines[0].startswith(PROMPT)
    top = [int(m.group(1)) for line in lines if (m := re.match(r"[├└]── (\d+)×", line))]
    assert sum(top) == 5 or "5× identical to the end" in out.stdout
    ends = [int(n) for group in re.findall(r"((?:#\d+ )+)\(", out.stdout) for n in re.findall(r"\d+", group)]
    assert sorted(ends) == [1, 2, 3, 4, 5]  # each sample ends exactly once
