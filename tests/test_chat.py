"""basecli chat: assembly, stopping at the next turn, context overflow, transcripts (kill -9), the REPL's slash commands."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from basecli.config import SamplingParams
from basecli.chat.conversation import Chat
from basecli.errors import UsageError
from basecli.events import Event
from basecli.text.templates import parse
from conftest import invoke

CHAT = "---\nmax_tokens: 8\n---\nA chat.\nHuman: hi\nAssistant: hello\n"


class Scripted:
    """A backend that 'generates' given replies through the engine's real stop-string handling."""

    def __init__(self, tokenizer, replies, context_length=128, interrupt_after=None):
        self.tokenizer, self.replies, self.context_length = tokenizer, list(replies), context_length
        self.name = "scripted"
        self.calls = []
        self.interrupt_after = interrupt_after

    def stream(self, prompts, params, seeds=None, **kw):
        from basecli.engine.loop import TextStream

        self.calls.append((prompts[0], params[0], seeds))
        stream = TextStream(params[0].stop)
        reply = self.replies.pop(0)
        for step, ch in enumerate(reply):
            if self.interrupt_after is not None and step == self.interrupt_after:
                raise KeyboardInterrupt
            text, stopped = stream.push(ch.encode())
            yield Event(0, step, 1, ch, text, -0.1, finish_reason="stop" if stopped else None)
            if stopped:
                return
        yield Event(0, len(reply), 0, "", stream.flush(), -0.1, finish_reason="eos")


@pytest.fixture
def tok(tiny_backends):
    return tiny_backends["gpt2"].tokenizer


def test_answer_stops_at_the_next_human_turn_and_is_trimmed(tok):
    backend = Scripted(tok, ["  Paris is the capital.\nHuman: and Spain?\nAssistant: Madrid"])
    chat = Chat(backend, parse(CHAT), SamplingParams(max_tokens=8))
    assert chat.ask("capital of France?") == "Paris is the capital."
    prompt, params, _ = backend.calls[0]
    assert prompt == "A chat.\nHuman: hi\nAssistant: hello\nHuman: capital of France?\nAssistant:"
    assert "\nHuman:" in params.stop
    assert chat.turns == [("capital of France?", "Paris is the capital.")]
    assert chat.prompt().endswith("Human: capital of France?\nAssistant: Paris is the capital.\n")


def test_overflow_drops_the_oldest_turns_keeps_the_preamble_and_says_so(tiny_backends):
    backend = tiny_backends["gpt2"]
    notes = []
    chat = Chat(backend, parse(CHAT), SamplingParams(max_tokens=20, temperature=0), notify=notes.append)
    message = "the quick brown fox jumps over the lazy dog " * 2
    for _ in range(4):
        chat.ask(message)
    assert any("dropped the oldest" in n for n in notes)
    assert len(chat.turns) < 4
    text = chat.prompt("next")
    assert text.startswith("A chat.\nHuman: hi\nAssistant: hello\n")
    assert chat.count(text) + 20 <= backend.context_length + 40  # the check is made with the message included
    with pytest.raises(UsageError, match="context window"):
        chat.ask("word " * 200)


def test_ctrl_c_keeps_the_partial_answer(tok):
    notes = []
    chat = Chat(Scripted(tok, ["Hello there friend"], interrupt_after=5), parse(CHAT), SamplingParams(), notify=notes.append)
    assert chat.ask("hi") == "Hello"
    assert chat.turns == [("hi", "Hello")] and "interrupted" in notes[0]


def run_repl(tmp_path, backend, keys: str):
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from basecli.chat.repl import Repl, make_session
    from basecli.chat.transcripts import Transcript

    log = Transcript.new("t.txt", "scripted")
    chat = Chat(backend, parse(CHAT), SamplingParams(max_tokens=8), transcript=log)
    out = io.StringIO()
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        repl = Repl(chat, session=make_session(input=pipe, output=DummyOutput()), out=out)
        chat.notify = repl.note
        repl.run()
    log.close()
    return chat, out.getvalue(), log.path


def test_repl_slash_commands(tmp_path, tok):
    backend = Scripted(tok, ["first answer", "second answer", "third answer"])
    save = tmp_path / "saved.txt"
    keys = ("hello\r/temp 0.5\r/top-k 3\r/top-p 0.9\r/max 5\r/seed 42\r/retry\r/show\r"
            "/undo\r/bogus\r/temp abc\r/top-p 2\r\r"
            "two\\\rlines\r/save " + str(save) + "\r/help\r/reset\r/quit\rnever sent\r")
    chat, out, path = run_repl(tmp_path, backend, keys)
    p = chat.params
    assert (p.temperature, p.top_k, p.top_p, p.max_tokens, p.seed) == (0.5, 3, 0.9, 5, 42)
    # /retry samples with the new settings, and a fixed seed is shifted so that it really resamples
    assert backend.calls[1][1].temperature == 0.5 and backend.calls[1][2] == [43]
    assert "Assistant: first answer" in out and "Assistant: second answer" in out
    assert "Human: hello\nAssistant: second answer" in out  # /show: the raw text after /retry
    assert "tokens of context window" in out
    assert "unknown command /bogus" in out and "/temp needs a number" in out and "--top-p must be in (0, 1]" in out
    assert "(empty message" in out and "/retry" in out  # /help
    assert backend.calls[2][0].endswith("Human: two\nlines\nAssistant:")  # a trailing \ continued the message
    saved = save.read_text(encoding="utf-8")
    assert parse(saved).render().endswith("Human: two\nlines\nAssistant: third answer")
    assert chat.turns == []  # /reset; "never sent" came after /quit
    kinds = [json.loads(line)["type"] for line in path.read_text().splitlines()]
    assert kinds == ["start", "user", "assistant", "undo", "user", "assistant", "undo", "user", "assistant", "reset"]


def test_repl_ctrl_c_stops_the_answer_and_the_chat_goes_on(tmp_path, tok):
    backend = Scripted(tok, ["Hello there friend", "fine"], interrupt_after=3)
    chat, out, _ = run_repl(tmp_path, backend, "hi\r/undo\rhow are you\r/quit\r")
    assert "Assistant: Hel\n(interrupted" in out
    assert chat.turns == [("how are you", "fin")]  # the second answer was interrupted too, and kept


def test_repl_history_is_kept_across_runs(tmp_path, tok):
    from basecli.chat.repl import make_session

    run_repl(tmp_path, Scripted(tok, ["a"]), "remember me\r\x04")
    assert "remember me" in list(make_session().history.load_history_strings())


def test_transcript_survives_kill_9(tmp_path, tiny_dirs):
    from basecli.chat import transcripts
    template = tmp_path / "c.txt"
    template.write_text(CHAT, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "basecli", "chat", str(template), "-m", str(tiny_dirs["llama"]),
                             "--transcript", "crash", "-t", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ)
    path = transcripts.folder() / "crash.jsonl"

    def answers():
        return path.read_text().count('"type": "assistant"') if path.exists() else 0

    try:
        for n, message in enumerate(["one", "two"], 1):
            proc.stdin.write(message + "\n")
            proc.stdin.flush()
            deadline = time.time() + 120
            while answers() < n and time.time() < deadline:
                time.sleep(0.05)
            assert answers() == n, proc.stderr.read() if proc.poll() is not None else "no answer in time"
        proc.stdin.write("three\n")
        proc.stdin.flush()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    header, turns = transcripts.replay(path)
    assert header["template"] == str(template)
    assert [u for u, _ in turns] in (["one", "two"], ["one", "two", "three"])  # at most the answer in flight is lost


def test_resume_continues_a_named_transcript(tmp_path, tiny_backends):
    from basecli.chat import transcripts
    t = tmp_path / "c.txt"
    t.write_text(CHAT, encoding="utf-8")
    b = Scripted(tiny_backends["gpt2"].tokenizer, ["A1", "A2", "A3"])
    invoke("chat", str(t), "--transcript", "mine", "--message", "one", backend=b)
    invoke("chat", str(t), "--message", "elsewhere", backend=b)  # a newer transcript
    code, _, err = invoke("chat", "--resume", "--transcript", "mine", "--message", "two", backend=b)
    assert code == 0 and "resuming" in err
    assert b.calls[-1][0] == "A chat.\nHuman: hi\nAssistant: hello\nHuman: one\nAssistant: A1\nHuman: two\nAssistant:"
    assert transcripts.replay(transcripts.folder() / "mine.jsonl")[1] == [("one", "A1"), ("two", "A3")]
    code, _, err = invoke("chat", "--resume", "--transcript", "nope", "--message", "x", backend=b)
    assert code == 2 and "no transcript 'nope'" in err


def test_replay_applies_undo_reset_and_skips_a_cut_line(tmp_path, capsys):
    from basecli.chat.transcripts import replay

    p = tmp_path / "t.jsonl"
    recs = [{"type": "start", "template": "x"}, {"type": "user", "text": "a"}, {"type": "assistant", "text": "A"},
            {"type": "user", "text": "b"}, {"type": "assistant", "text": "B"}, {"type": "undo"},
            {"type": "user", "text": "c"}, {"type": "assistant", "text": "C"}, {"type": "user", "text": "lost"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"type": "assis', encoding="utf-8")
    assert replay(p) == ({"type": "start", "template": "x"}, [("a", "A"), ("c", "C")])
    assert "cut short" in capsys.readouterr().err


def test_cli_message_stdin_lines_resume_and_bad_input(tmp_path, tok):
    t = tmp_path / "c.txt"
    t.write_text(CHAT, encoding="utf-8")
    backend = Scripted(tok, [" four\nHuman: x", "A1", "A2", "again"])
    code, out, _ = invoke("chat", str(t), "--message", "What is 2+2?", backend=backend)
    assert (code, out) == (0, "four\n")
    code, out, _ = invoke("chat", str(t), input="q1\n\nq2\n", backend=backend)
    assert (code, out) == (0, "A1\nA2\n")
    code, out, _ = invoke("chat", "--resume", "--message", "more", backend=backend)
    assert code == 0 and backend.calls[-1][0].endswith("Human: q1\nAssistant: A1\nHuman: q2\nAssistant: A2\nHuman: more\nAssistant:")
    code, out, err = invoke("chat", str(t), "--message", "  ", backend=backend)
    assert code == 2 and out == "" and "--message is empty" in err and len(err.strip().splitlines()) == 1
    code, out, err = invoke("chat", str(tmp_path / "missing.txt"), "--message", "hi", backend=backend)
    assert code == 2 and "file not found" in err


def test_chat_flags_override_the_template_which_overrides_defaults(tmp_path, tok):
    t = tmp_path / "c.txt"
    t.write_text("---\nmax_tokens: 8\ntop_p: 0.9\nstop: END\n---\nA chat.\n", encoding="utf-8")
    b = Scripted(tok, ["x", "y"])
    invoke("chat", str(t), "--message", "hi", backend=b)
    p = b.calls[-1][1]
    assert (p.max_tokens, p.top_p, p.temperature) == (8, 0.9, 0.7) and set(p.stop) == {"\nHuman:", "END"}
    invoke("chat", str(t), "--message", "hi", "-n", "4", "-t", "0.2", "--top-k", "5", "--top-p", "0.5",
           "--min-p", "0.1", "--repetition-penalty", "1.2", "-s", "9", "--stop", "###", backend=b)
    p = b.calls[-1][1]
    assert (p.max_tokens, p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty) == (4, 0.2, 5, 0.5, 0.1, 1.2)
    assert b.calls[-1][2] == [9] and "###" in p.stop and "\nHuman:" in p.stop


def test_a_bad_slash_command_is_a_message_and_the_session_goes_on(tmp_path, tok):
    """/save to a missing folder or to a directory, a seed past 64 bits: each says so; the next message is answered."""
    folder = tmp_path / "a-dir"
    folder.mkdir()
    keys = (f"/save {tmp_path}/missing/dir/x.txt\r/save {folder}\r/seed 1180591620717411303424\r/max 1e3\r"
            "/temp nan\rhello\r/quit\r")
    chat, out, _ = run_repl(tmp_path, Scripted(tok, ["still here"]), keys)
    assert "error: cannot write" in out and "No such file or directory" in out
    assert "that is a directory" in out
    assert "--seed must be a whole number from 0 to" in out and "/max needs a number" in out and "--temperature" in out
    assert "Assistant: still here" in out and chat.turns == [("hello", "still here")]
    assert chat.params.seed is None and "Traceback" not in out


def test_transcripts_and_the_history_are_private(tmp_path, tok):
    from basecli.chat.repl import history_path

    _, _, path = run_repl(tmp_path, Scripted(tok, ["a"]), "secret plans\r\x04")
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert history_path().stat().st_mode & 0o777 == 0o600
    os.chmod(history_path(), 0o644)  # an older basecli left it readable: the next session closes it
    run_repl(tmp_path, Scripted(tok, ["b"]), "more\r\x04")
    assert history_path().stat().st_mode & 0o777 == 0o600
