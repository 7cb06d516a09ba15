"""Hypothesis against every numeric flag, the sampler and template text: whatever is typed, the
answer is a result or one clean error line, never a traceback (issue 15)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from conftest import invoke  # noqa: E402

# Every numeric flag of every command. A missing model makes a value that parses fail right after,
# without loading anything, so each example costs milliseconds.
MISSING = "/nonexistent/basecli-model"
NUMERIC_FLAGS = [("complete", f) for f in ("-n", "-t", "--top-k", "--top-p", "--min-p", "--repetition-penalty", "-s", "--alternatives")] \
  + [("resample", f) for f in ("-N", "--best", "--batch-size", "-n", "-t", "-s")] \
  + [("sweep", f) for f in ("-t", "--top-k", "--top-p", "--min-p", "-N", "-n", "--repetition-penalty")] \
  + [("fewshot", f) for f in ("--k", "-n", "-t", "--top-k", "--top-p", "--min-p", "--repetition-penalty", "-s")] \
  + [("chat", f) for f in ("-n", "-t", "--top-k", "--top-p", "-s")] \
  + [("score", f) for f in ("--window", "--stride", "--at", "--alternatives")] \
  + [("recite", f) for f in ("--samples", "--prefix-tokens", "-t", "-s")] \
  + [("tokenize", "--limit"), ("bench", "--prompt-tokens"), ("bench", "--new-tokens"), ("bench", "--threads")]

LEAD = {  # what each command needs before the flag so that only the value is in question
    "complete": ["x", "-m", MISSING], "resample": ["x", "-m", MISSING], "sweep": ["x", "-m", MISSING],
    "fewshot": ["--examples", "{tsv}", "-i", "x", "-m", MISSING], "chat": ["--message", "x", "-m", MISSING],
    "score": ["x", "-m", MISSING], "recite": ["{ref}", "-m", MISSING], "tokenize": ["x", "-m", MISSING],
    "bench": ["-m", MISSING],
}

numbers_as_typed = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-inf", "inf", "1e309", "1e-38", "-0", "0x10", "1_000", " 3", "", "½", "٣", "1,2", "0,,1"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6),
)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "pairs.tsv").write_text("cat\t고양이\ndog\t개\n")
    (root / "ref.txt").write_text("The quick brown fox jumps over the lazy dog. It was not amused at all.")
    return {"tsv": str(root / "pairs.tsv"), "ref": str(root / "ref.txt")}


def clean(r) -> None:
    out = r.stdout + r.stderr
    assert "Traceback" not in out and "internal error" not in out, out
    assert r.returncode in (0, 2), out
    if r.returncode:
        assert len([line for line in r.stderr.splitlines() if line.startswith("basecli: error:")]) == 1, out


@pytest.mark.parametrize("command,flag", NUMERIC_FLAGS, ids=[f"{c} {f}" for c, f in NUMERIC_FLAGS])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=numbers_as_typed)
def test_any_value_of_a_numeric_flag_is_a_result_or_one_error_line(command, flag, value, files):
    lead = [a.format(**files) for a in LEAD[command]]
    clean(invoke(command, *lead, f"{flag}={value}"))


@pytest.fixture(scope="module")
def tiny(tiny_dirs):
    from basecli.backends.local import LocalBackend

    return LocalBackend(str(tiny_dirs["llama"]), device="cpu", dtype="float32")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    temperature=st.one_of(st.just(0.0), st.floats(min_value=0, max_value=100), st.floats(min_value=1e-45, max_value=1e-30)),
    top_k=st.integers(min_value=0, max_value=1_000_000),
    top_p=st.floats(min_value=1e-45, max_value=1.0, exclude_min=False),
    min_p=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    penalty=st.floats(min_value=0.01, max_value=10000.0),
    seed=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_every_setting_inside_its_range_samples_a_token_of_the_vocabulary(tiny, temperature, top_k, top_p, min_p, penalty, seed):
    """What the ranges admit, the sampler handles: a valid token each step, a finite log-probability or -inf."""
    from basecli.config import SamplingParams

    p = SamplingParams(max_tokens=3, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                       repetition_penalty=penalty, seed=seed, ignore_eos=True)
    events = list(tiny.stream(["The quick brown fox", "Hello"], [p, p.with_(seed=(seed + 1) % 2**63)]))
    assert len(events) == 6
    assert all(0 <= ev.token_id < tiny.tokenizer.vocab_size for ev in events)
    assert all(ev.logprob == ev.logprob and ev.logprob <= 0 for ev in events)  # no NaN


template_text = st.lists(
    st.one_of(st.sampled_from(list("{}-:\n\r\t #\"\\ ") + ["{{", "}}", "---\n", "{{input}}", "{{ x }}", "max_tokens: ",
                                                        "stop: ", "seed: 9", "temperature: -1", "k: 3", "human: "]),
              st.characters(blacklist_categories=("Cs",))),
    max_size=40,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=template_text)
def test_any_template_text_parses_or_is_refused_in_one_line(text):
    """parse -> check -> render: a UsageError at most, never another exception, never code run."""
    from basecli.errors import UsageError
    from basecli.text import templates

    try:
        tpl = templates.parse(text, "fuzz.txt")
    except UsageError as e:
        assert "\n" not in str(e).strip() or "line" in str(e)
        return
    for finding in templates.check(tpl):
        assert str(finding).startswith("line ")
    values = {v: "x" for v in tpl.variables}
    try:
        prompt = tpl.render(values)
    except UsageError:
        return
    assert isinstance(prompt, str)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=template_text)
def test_template_check_and_fewshot_on_any_template_file_end_cleanly(text, tmp_path_factory):
    if "\x00" in text:
        return
    path = tmp_path_factory.mktemp("tpl") / "t.txt"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    for args in (("template", "check", str(path)), ("fewshot", str(path), "x", "-m", MISSING)):
        r = invoke(*args)
        out = r.stdout + r.stderr
        assert "Traceback" not in out and "internal error" not in out, out
        assert r.returncode in (0, 1, 2), out
