"""Verbatim-overlap figures on a table of synthetic pairs, the prefix split, and recite against stream and score."""

from __future__ import annotations

import json
import math

import pytest

from basecli.config import SamplingParams
from basecli.errors import UsageError
from basecli.analyses.recitation import MIN_RUN, first_divergence, longest_run, overlap, recite, split_prefix
from conftest import invoke

R = list(range(10, 30))  # a 20-token reference

# (name, reference, continuation, longest run, reproduced tokens, diverged at)
PAIRS = [
    ("identical", R, R, 20, 20, None),
    ("nothing shared", R, list(range(100, 120)), 0, 0, 0),
    ("diverges at 7", R, R[:7] + [99] * 13, 7, 7, 7),
    ("short run by chance", R, [99] * 5 + R[5:8] + [99] * 12, 3, 0, 0),  # 3 < MIN_RUN: not counted as reproduced
    ("shifted by one", R, [99] + R[:-1], 19, 19, 0),
    ("stopped early", R, R[:12], 12, 12, 12),
    ("two runs, a token skipped", R, R[:6] + R[7:13] + [99] * 8, 6, 12, 6),
    ("empty continuation", R, [], 0, 0, 0),
    ("longer than the reference", R, R + [1, 2, 3], 20, 20, None),
]


@pytest.mark.parametrize("name,ref,cont,run,reproduced,diverged", PAIRS, ids=[p[0] for p in PAIRS])
def test_overlap_figures(name, ref, cont, run, reproduced, diverged):
    ov = overlap(ref, cont, "", "")
    assert ov.longest_run_tokens == run
    assert ov.reproduced == pytest.approx(reproduced / len(ref))
    assert ov.diverged_at == diverged
    assert all(n >= MIN_RUN and ref[a : a + n] == cont[b : b + n] for a, b, n in ov.runs)


@pytest.mark.parametrize("a,b,want", [
    ("the zebra has stripes", "a zebra has spots", len(" zebra has s")),
    ("abc", "xyz", 0),
    ("", "abc", 0),
    ("aaaa", "aa", 2),
    ("stripes", "stripes", 7),
])
def test_longest_run_in_characters(a, b, want):
    assert longest_run(a, b) == want
    assert overlap([1], [1], a, b).longest_run_chars == want


def test_first_divergence_of_strings_and_lists():
    assert first_divergence("abc", "abd") == 2
    assert first_divergence([1, 2], [1, 2, 3]) is None


def test_prefix_is_the_first_sentence(tiny_backends):
    tok = tiny_backends["gpt2"].tokenizer
    assert split_prefix(tok, "First one. Second one. Third.", None) == ("First one.", " Second one. Third.")
    assert split_prefix(tok, "A title\n\nBody text here", None) == ("A title", "\n\nBody text here")
    prefix, rest = split_prefix(tok, "The quick brown fox jumps over the lazy dog.", 3)
    assert tok.encode(prefix) == tok.encode("The quick brown fox jumps over the lazy dog.")[:3]
    assert prefix + rest == "The quick brown fox jumps over the lazy dog."
    with pytest.raises(UsageError, match="single sentence"):
        split_prefix(tok, "Only one sentence here.", None)
    with pytest.raises(UsageError, match="--prefix-tokens must be between"):
        split_prefix(tok, "The quick brown fox", 99)


REFERENCE = "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. Hello world!"


def test_greedy_recitation_equals_stream_and_score(tiny_backend):
    b = tiny_backend
    rec = recite(b, REFERENCE, prefix_tokens=None, params=SamplingParams(temperature=0, seed=1))
    (s,) = rec.samples
    events = list(b.stream([rec.prefix], [SamplingParams(temperature=0, max_tokens=len(rec.reference_ids))]))
    assert s.ids == [e.token_id for e in events if e.finish_reason != "eos"]
    assert rec.reference_ids == b.tokenizer.encode(rec.reference)
    assert rec.reference_logprobs == pytest.approx([t.logprob for t in b.score(rec.reference, context=rec.prefix)])
    d = s.overlap.diverged_at
    if d is not None:
        assert s.reference_logprob_at_divergence == pytest.approx(rec.reference_logprobs[d])


def test_cli_samples_are_a_batch_of_draws(tiny_dirs, tiny_backends, tmp_path):
    ref = tmp_path / "ref.txt"
    ref.write_text(REFERENCE)
    code, out, err = invoke("recite", str(ref), "-m", str(tiny_dirs["llama"]), "--samples", "3", "-t", "1.5", "-s", "5", "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert len(rec["samples"]) == 3 and rec["summary"]["samples"] == 3
    assert len({s["completion"] for s in rec["samples"]}) > 1  # draws, not three copies of the greedy text
    runs = [s["longest_run_tokens"] for s in rec["samples"]]
    assert rec["summary"]["longest_run_tokens"]["mean"] == pytest.approx(sum(runs) / 3)
    again = invoke("recite", str(ref), "-m", str(tiny_dirs["llama"]), "--samples", "3", "-t", "1.5", "-s", "5", "--json").stdout
    assert [s["completion"] for s in json.loads(again)["samples"]] == [s["completion"] for s in rec["samples"]]
    code, out, err = invoke("recite", str(ref), "-m", str(tiny_dirs["llama"]), "--prefix-tokens", "4", "--json")
    assert code == 0, err
    tok = tiny_backends["llama"].tokenizer
    assert tok.encode(json.loads(out)["prefix"]) == tok.encode(REFERENCE)[:4]
    code, out, err = invoke("recite", str(ref), "-m", str(tiny_dirs["llama"]))
    assert code == 0 and "longest verbatim run:" in out and "first divergence:" in out


@pytest.mark.parametrize("args,needle", [
    (["--samples", "3"], "identical greedy"),
    (["--prefix-tokens", "0"], "--prefix-tokens must be between"),
])
def test_cli_bad_inputs_exit_2(tiny_dirs, tmp_path, args, needle):
    ref = tmp_path / "ref.txt"
    ref.write_text(REFERENCE)
    code, out, err = invoke("recite", str(ref), "-m", str(tiny_dirs["gpt2"]), *args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and out == ""


def test_aggregate_over_samples_that_never_diverged_is_valid_json():
    from basecli.analyses.recitation import Sample, aggregate

    samples = [Sample("x", R, [], "length", overlap(R, R, "", ""), None, None, None) for _ in range(2)]
    stats = aggregate(samples)
    assert stats["never_diverged"] == 2 and stats["diverged_at"]["mean"] is None
    json.loads(json.dumps(stats, allow_nan=False))
