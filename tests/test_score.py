"""Teacher-forced scoring against a direct forward pass, and the sliding window against its definition."""

from __future__ import annotations

import json

import pytest
import torch

from basecli.engine.score import plan_windows, start_ids
from basecli.errors import UsageError
from conftest import invoke

TEXT = "The quick brown fox jumps over the lazy dog. Here's my top-10 list of the top landmarks to see in Paris."


def forward_logprobs(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_score_equals_a_direct_forward_pass(tiny_backend, reference):
    b = tiny_backend
    scored = b.score(TEXT, alternatives=3)
    ids = [b.tokenizer.bos_id] + b.tokenizer.encode(TEXT)
    logp = forward_logprobs(reference(b.folder), ids)
    assert [t.token_id for t in scored] == ids[1:]
    want = [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]
    assert [t.logprob for t in scored] == pytest.approx(want, abs=1e-4)
    assert sum(t.logprob for t in scored) == pytest.approx(sum(want), abs=1e-3)
    for i, t in enumerate(scored, start=1):
        row = logp[i - 1]
        assert t.rank == int((row > row[ids[i]]).sum()) + 1
        assert [a for a, _ in t.alternatives] == torch.topk(row, 3).indices.tolist()
        assert t.context == i


def test_context_replaces_the_start_token(tiny_backend, reference):
    b = tiny_backend
    scored = b.score("over the lazy dog", context="The quick brown fox jumps")
    ctx = b.tokenizer.encode("The quick brown fox jumps")
    ids = ctx + b.tokenizer.encode("over the lazy dog")
    logp = forward_logprobs(reference(b.folder), ids)
    assert [t.logprob for t in scored] == pytest.approx([logp[i - 1, ids[i]].item() for i in range(len(ctx), len(ids))], abs=1e-4)


class FakeTokenizer:
    def __init__(self, prefix_ids=(), bos_id=None, special_tokens=None):
        self.prefix_ids, self.bos_id, self.special_tokens = list(prefix_ids), bos_id, special_tokens or {}

    def encode(self, text):
        return [ord(c) for c in text]


@pytest.mark.parametrize("tok,context,want", [
    (FakeTokenizer(prefix_ids=[128000], bos_id=128000), None, [128000]),  # Llama 3: <|begin_of_text|> before everything
    (FakeTokenizer(bos_id=1, special_tokens={"<|endoftext|>": 0, "<|im_start|>": 1}), None, [0]),  # a chat bos is not a document start
    (FakeTokenizer(bos_id=7), None, [7]),
    (FakeTokenizer(), None, []),
    (FakeTokenizer(prefix_ids=[5], bos_id=5), "ab", [5, 97, 98]),
])
def test_what_the_first_token_is_conditioned_on(tok, context, want):
    assert start_ids(tok, context) == want


def test_without_a_start_token_the_first_token_is_not_scored(tiny_backends, reference, monkeypatch):
    b = tiny_backends["gpt2"]
    monkeypatch.setattr(b.tokenizer, "special_tokens", {})
    monkeypatch.setattr(b.tokenizer, "bos_id", None)
    scored = b.score(TEXT)
    assert scored[0].logprob is None and scored[0].context == 0
    ids = b.tokenizer.encode(TEXT)
    logp = forward_logprobs(reference(b.folder), ids)
    assert [t.logprob for t in scored[1:]] == pytest.approx([logp[i - 1, ids[i]].item() for i in range(1, len(ids))], abs=1e-4)


def test_sliding_window_equals_single_window_when_the_text_fits(tiny_backend):
    b = tiny_backend
    n = len(b.tokenizer.encode(TEXT)) + 1
    whole = b.score(TEXT)
    for window, stride in [(n, 1), (n + 7, 3), (b.context_length, 10)]:
        again = b.score(TEXT, window=window, stride=stride)
        assert [t.logprob for t in again] == pytest.approx([t.logprob for t in whole], abs=1e-5)


def test_sliding_window_scores_each_token_from_its_own_window(tiny_backends, reference):
    """Definition: a token with context c has the log-prob of a forward pass over its c predecessors alone.
    Llama: rotary positions restart at 0 in every window, as in that forward pass."""
    b = tiny_backends["llama"]
    window, stride = 8, 3
    ids = [b.tokenizer.bos_id] + b.tokenizer.encode(TEXT)
    assert len(ids) > 3 * window
    scored = b.score(TEXT, window=window, stride=stride)
    for pos, t in enumerate(scored, start=1):
        c = t.context
        assert c == pos if pos < window else window - stride <= c <= window - 1
        logp = forward_logprobs(reference(b.folder), ids[pos - c : pos + 1])
        assert t.logprob == pytest.approx(logp[-2, ids[pos]].item(), abs=1e-4)


@pytest.mark.parametrize("n,window,stride", [(10, 4, 1), (10, 4, 3), (100, 16, 8), (17, 16, 15), (5, 16, 8), (33, 8, 7)])
def test_windows_score_every_position_once(n, window, stride):
    targets = []
    for begin, first, end in plan_windows(n, window, stride):
        assert end - begin <= window and begin >= 0
        targets += range(first, end)
    assert targets == list(range(1, n))


@pytest.mark.parametrize("text,kw,needle", [
    ("", {}, "empty"),
    ("The", {}, "at least 2 tokens"),
    (TEXT, {"window": 8, "stride": 8}, "--stride 8"),
    (TEXT, {"window": 8, "stride": 20}, "--stride 20"),
    (TEXT, {"window": 10_000}, "larger than the model's context"),
    (TEXT, {"context": ""}, "--context is empty"),
])
def test_bad_input_is_a_usage_error(tiny_backends, text, kw, needle):
    with pytest.raises(UsageError, match=needle):
        tiny_backends["gpt2"].score(text, **kw)


def test_cli_json_matches_the_backend(tiny_dirs, tiny_backends):
    # the backend it is compared with runs fp32; the CLI's own dtype (auto: bf16 on some CPUs) is test_matrix's to check
    code, out, err = invoke("score", TEXT, "-m", str(tiny_dirs["llama"]), "--json", "--alternatives", "2", "--window", "12", "--stride", "4",
                            "--dtype", "float32")
    assert code == 0, err
    rec = json.loads(out)
    want = tiny_backends["llama"].score(TEXT, alternatives=2, window=12, stride=4)
    assert [t["logprob"] for t in rec["tokens"]] == pytest.approx([t.logprob for t in want], abs=1e-4)
    assert [t["rank"] for t in rec["tokens"]] == [t.rank for t in want]
    assert all(len(t["alternatives"]) == 2 for t in rec["tokens"])
    assert rec["windows"]["passes"] > 1 and rec["windows"]["min_context"] == 8
    first = rec["windows"]["first_with_less_context"]
    assert [t["context"] for t in rec["tokens"][:first]] == list(range(1, first + 1))  # the start token, then all before
    assert all(8 <= t["context"] <= 11 for t in rec["tokens"][first:])
    assert rec["summary"]["bits"] == pytest.approx(-sum(t.logprob for t in want) / 0.6931471805599453, rel=1e-4)
    assert rec["summary"]["bytes"] == len(TEXT.encode())
    assert set(rec["compression"]) == {"model", "gzip -9", "bz2 -9", "xz -9"}


def test_cli_plain_output_with_at_and_context(tiny_dirs):
    code, out, err = invoke("score", "over the lazy dog", "--context", "The quick brown fox jumps", "-m", str(tiny_dirs["gpt2"]), "--at", "2")
    assert code == 0, err
    lines = out.splitlines()
    table = lines[lines.index("top 5 alternatives at the chosen positions") + 2 :]
    assert table[0].split("\t")[0] == "2" and len(table[0].split("\t")[-1].split("  ")) == 5
    assert "bits per byte:" in out and "gzip -9:" in out


@pytest.mark.parametrize("args,needle", [
    (["@@"], None),
    ([""], "empty"),
    (["--stride", "64", "--window", "32", "some text here"], "--stride 64"),
])
def test_cli_bad_inputs_exit_2_with_one_line(tiny_dirs, tmp_path, args, needle):
    if args == ["@@"]:
        binary = tmp_path / "blob.bin"
        binary.write_bytes(b"\x00\x01\x02garbage\xff")
        args, needle = [f"@{binary}"], "binary"
    code, out, err = invoke("score", *args, "-m", str(tiny_dirs["gpt2"]))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert out == ""


def test_progress_is_reported_per_window_up_to_the_total(tiny_backends):
    b = tiny_backends["gpt2"]
    calls = []
    scored = b.score(TEXT, window=8, stride=4, progress=lambda done, total: calls.append((done, total)))
    n = len(scored)
    assert len(calls) == len(plan_windows(n + 1, 8, 4)) > 1
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and calls[-1] == (n, n)
