"""basecli fewshot and basecli template check, in process with the tiny models (and twice on the real one)."""

from __future__ import annotations

import json

import pytest

from conftest import invoke

FEWSHOT = "---\ninput: cat\nmax_tokens: 3\ntemperature: 0.7\nstop:\n---\nEnglish: dog\nKorean: 개\nEnglish: {{input}}\nKorean:\n"


@pytest.fixture
def tpl(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(FEWSHOT, encoding="utf-8")
    return str(p)


def records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("kind", ["llama"])
def test_batch_equals_single_runs_in_input_order(tiny_backends, kind, tpl):
    tiny_backend = tiny_backends[kind]
    words = ["cat", "dog", "fox"]
    code, out, _ = invoke("fewshot", tpl, *words, "-s", "7", "--jsonl", backend=tiny_backend)
    assert code == 0
    batch = records(out)
    assert [r["input"] for r in batch] == words
    for word, rec in zip(words, batch):
        _, single, _ = invoke("fewshot", tpl, word, "-s", "7", "--jsonl", backend=tiny_backend)
        (one,) = records(single)
        assert [t["id"] for t in one["tokens"]] == [t["id"] for t in rec["tokens"]]
        assert rec["prompt"].endswith(f"English: {word}\nKorean:")
        assert rec["answer"] == rec["completion"].strip(" \n\t") or rec["completion"].lstrip(" \t").startswith("\n")


def test_stdin_dash_gives_one_plain_line_per_input(tiny_backends, tpl):
    code, out, _ = invoke("fewshot", tpl, "-", "--stop", "\\n", input="cat\n\ndog\n",
                          backend=tiny_backends["llama"])
    # split on newlines only: a random tiny model can emit \x1c-\x1f, which str.splitlines() also splits on
    assert code == 0 and len(out.split("\n")) == 3 and out.endswith("\n")


def test_flags_override_front_matter_which_overrides_defaults(tiny_backends, tpl):
    b = tiny_backends["gpt2"]
    _, out, _ = invoke("fewshot", tpl, "--json", backend=b)
    rec = json.loads(out)
    assert rec["input"] == "cat"  # the front matter's default input
    assert rec["params"]["max_tokens"] == 3 and rec["params"]["temperature"] == 0.7 and rec["params"]["stop"] == []
    assert len(rec["tokens"]) <= 3
    _, out, _ = invoke("fewshot", tpl, "--json", "-n", "5", "-t", "0", "--stop", "x", backend=b)
    rec = json.loads(out)
    assert rec["params"]["max_tokens"] == 5 and rec["params"]["temperature"] == 0 and rec["params"]["stop"] == ["x"]
    if rec["finish_reason"] == "length":
        assert len(rec["tokens"]) == 5


def test_sampling_flags_reach_the_sampler_and_json_of_several_inputs_is_an_array(tiny_backends, tpl):
    code, out, _ = invoke("fewshot", tpl, "cat", "dog", "--json", "--top-k", "4", "--top-p", "0.8",
                          "--min-p", "0.05", "--repetition-penalty", "1.3", "-s", "11", backend=tiny_backends["gpt2"])
    recs = json.loads(out)
    assert code == 0 and [r["input"] for r in recs] == ["cat", "dog"]
    assert {k: recs[1]["params"][k] for k in ("top_k", "top_p", "min_p", "repetition_penalty", "seed")} == \
        {"top_k": 4, "top_p": 0.8, "min_p": 0.05, "repetition_penalty": 1.3, "seed": 11}


def test_truncate_cuts_a_prompt_longer_than_the_context_window(tiny_backends, tpl):
    long_input = "the quick brown fox " * 60  # far beyond the tiny models' 128 positions
    code, out, err = invoke("fewshot", tpl, long_input, backend=tiny_backends["gpt2"])
    assert code == 2 and "--truncate" in err
    code, out, err = invoke("fewshot", tpl, long_input, "--truncate", "-n", "1", backend=tiny_backends["gpt2"])
    assert code == 0 and "cut" in err


def test_default_stop_is_a_newline_and_the_answer_is_trimmed(tiny_backends, tmp_path):
    p = tmp_path / "plain.txt"
    p.write_text("English: {{input}}\nKorean:\n", encoding="utf-8")
    _, out, _ = invoke("fewshot", str(p), "cat", "--json", "-n", "40", backend=tiny_backends["gpt2"])
    rec = json.loads(out)
    assert rec["params"]["stop"] == ["\n"] and "\n" not in rec["completion"]
    assert rec["answer"] == rec["completion"].strip()


def test_examples_table_builds_the_prompt_with_k_and_delimiters(tiny_backends, tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("cat\t고양이\ndog\t개\nteacher\t선생님\nfox\t여우\n", encoding="utf-8")
    code, out, _ = invoke("fewshot", "--examples", str(tsv), "--input", "teacher", "--k", "2",
                          "--input-prefix", "English: ", "--output-prefix", "\\nKorean:", "--fewshot-delimiter", "\\n",
                          "--target-delimiter", "\\t", "--json", "-n", "2", backend=tiny_backends["gpt2"])
    assert code == 0
    assert json.loads(out)["prompt"] == "English: cat\nKorean:\t고양이\nEnglish: dog\nKorean:\t개\nEnglish: teacher\nKorean:"
    _, out, _ = invoke("fewshot", "--examples", str(tsv), "fox", "--json", "-n", "2",
                       backend=tiny_backends["gpt2"])
    assert json.loads(out)["prompt"] == ("Input: cat\nOutput: 고양이\n\nInput: dog\nOutput: 개\n\n"
                                         "Input: teacher\nOutput: 선생님\n\nInput: fox\nOutput:")


def test_show_prompt_marks_token_boundaries_at_the_seams(tiny_dirs, tpl):
    from basecli.text.tokenizers import HFTokenizer

    code, out, _ = invoke("fewshot", tpl, "fox", "--show-prompt", "-m", str(tiny_dirs["gpt2"]))
    assert code == 0
    lines = out.rstrip("\n").split("\n")
    assert lines[:2] == ["English: dog", "Korean: 개"]  # no seam on these lines, shown as written
    tok = HFTokenizer.from_file(tiny_dirs["gpt2"] / "tokenizer.json", "t")
    tail = "English: fox\nKorean:"
    expected = "".join("|" + tok.decode([i]) for i in tok.encode(tail)) + "|"
    assert "\n".join(lines[2:]) == expected.replace("|\n", "|\n", 1)


def test_var_fills_other_variables_and_templates_without_input_take_none(tiny_backends, tmp_path):
    p = tmp_path / "tldr.txt"
    p.write_text("---\nmax_tokens: 1\n---\n{{article}}\n\nTL;DR:\n", encoding="utf-8")
    b = tiny_backends["gpt2"]
    code, _, err = invoke("fewshot", str(p), backend=b)
    assert code == 2 and "{{article}}" in err and len(err.strip().splitlines()) == 1
    code, out, _ = invoke("fewshot", str(p), "--var", "article=Cats sleep.", "--json", backend=b)
    assert code == 0 and json.loads(out)["prompt"] == "Cats sleep.\n\nTL;DR:"
    (tmp_path / "news.txt").write_text("Dogs bark.", encoding="utf-8")
    code, out, _ = invoke("fewshot", str(p), "--var", f"article=@{tmp_path / 'news.txt'}", "--json", backend=b)
    assert code == 0 and json.loads(out)["prompt"] == "Dogs bark.\n\nTL;DR:"
    code, _, err = invoke("fewshot", str(p), "word", "--var", "article=x", backend=b)
    assert code == 2 and "no {{input}} slot" in err


def test_fewshot_warns_about_seams_on_stderr(tiny_backends, tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("English: {{input}}\nKorean: \n", encoding="utf-8")
    code, out, err = invoke("fewshot", str(p), "cat", "-n", "1", backend=tiny_backends["gpt2"])
    assert code == 0 and "warning" in err and "line 2" in err and "warning" not in out


@pytest.mark.parametrize("content, args, message", [
    (None, [], "file not found"),
    (b"\x00\x01binary", [], "binary"),
    (b"---\ntop_k: x\n---\n{{input}}", ["a"], "top_k must be an integer"),
    (b"{{input}}", ["--var", "novalue"], "--var takes NAME=VALUE"),
])
def test_bad_templates_are_one_line_exit_2(tmp_path, content, args, message):
    p = tmp_path / "t.txt"
    if content is not None:
        p.write_bytes(content)
    code, out, err = invoke("fewshot", str(p), *args)
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1


def test_template_check_names_lines_and_exits_1(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("---\ndescription: x\n---\nQ:  1\nA: 2 \nQ: {{input}}\nA: \n", encoding="utf-8")
    code, out, _ = invoke("template", "check", str(p))
    assert code == 1
    assert [line.split(":")[0] for line in out.splitlines()] == [f"{p} line 4", f"{p} line 5", f"{p} line 7"]
    code, out, err = invoke("template", "check", "en_ko")
    assert code == 0 and out == "" and "ok" in err


@pytest.mark.slow
def test_real_model_en_ko_prints_one_line(real_model):
    code, out, _ = invoke("fewshot", "prompts/en_ko.txt", backend=real_model)
    assert code == 0 and out.count("\n") == 1 and out.endswith("\n") and out.strip()


@pytest.mark.slow
def test_real_model_two_inputs_from_stdin_print_two_lines(real_model):
    code, out, err = invoke("fewshot", "prompts/en_ko.txt", "-", input="cat\ndog\n", backend=real_model)
    assert code == 0, err
    lines = out.split("\n")
    assert len(lines) == 3 and lines[2] == "" and all(line.strip() for line in lines[:2])


@pytest.mark.slow
def test_every_shipped_prompt_renders_for_the_embedded_model_with_its_seams_marked(real_model):
    from basecli.text import templates
    for path in sorted(templates.prompts_dir().glob("*.txt")):
        code, out, err = invoke("fewshot", str(path), "--show-prompt")
        assert code == 0, err
        last = templates.load(path).render().split("\n")[-1]
        assert out.rstrip("\n").split("\n")[-1].replace("|", "") == last  # the answer slot's line, every token marked
        assert int(err.split()[1]) < real_model.context_length


@pytest.mark.slow
def test_real_model_chat_answers_and_stops_before_the_next_turn(monkeypatch, tmp_path, real_model):
    monkeypatch.setattr("basecli.chat.transcripts.folder", lambda: tmp_path)  # slow tests share the real BASECLI_HOME
    code, out, err = invoke("chat", "--message", "What is the capital of Italy?", "-s", "1", "-t", "0",
                            backend=real_model)
    assert code == 0, err
    assert out.strip() and "Human:" not in out and not out.startswith(" ")
    assert len(list(tmp_path.glob("*.jsonl"))) == 1
