"""Template parsing, rendering, few-shot and chat assembly, and the seam lint (its cases are a table)."""

from __future__ import annotations

import pytest

from basecli.text import templates
from basecli.errors import UsageError
from basecli.text.templates import Shots, chat_prompt, chat_stops, check, parse


def test_front_matter_is_parsed_typed_and_kept_out_of_the_body():
    tpl = parse("---\ndescription: demo\ntop_k: 2\ntemperature: 0.5\nstop: \\n\\n\nstop: \"END \"\ninput: teacher\n---\n"
                "Q: {{input}}\nA:\n")
    assert tpl.settings == {"description": "demo", "top_k": 2, "temperature": 0.5, "stop": ["\n\n", "END "]}
    assert tpl.defaults == {"input": "teacher"}
    assert tpl.body == "Q: {{input}}\nA:"  # the editor's final newline is not part of the prompt
    assert tpl.body_line == 9  # the file line of "Q: ..."


def test_variables_render_with_defaults_and_overrides_and_leave_single_braces_alone():
    tpl = parse("---\ninput: cat\n---\ndef f(x): return {'k': x}  # {{ input }} and {{other}}")
    assert tpl.variables == ["input", "other"]
    assert tpl.render({"other": "O"}) == "def f(x): return {'k': x}  # cat and O"
    text, spans = tpl.render_spans({"input": "dog", "other": "O"})
    assert [text[a:b] for a, b in spans] == ["dog", "O"]


def test_a_missing_variable_is_an_error_that_names_it():
    with pytest.raises(UsageError, match=r"\{\{article\}\}"):
        parse("{{article}}\n\nTL;DR:").render()


def test_template_text_is_never_executed_or_expanded():
    body = "{{input}} {% for x in y %} ${HOME} $(rm -rf /) {{input.__class__}}"
    assert parse(body).render({"input": "{{input}}"}) == "{{input}} {% for x in y %} ${HOME} $(rm -rf /) {{input.__class__}}"


def test_empty_stop_value_means_no_stop_strings():
    assert parse("---\nstop:\n---\nx").settings["stop"] == []


@pytest.mark.parametrize("text, message", [
    ("---\ntop_k: 2\nx", "never closed"),
    ("---\njust words\n---\nx", "line 2: front matter lines are 'key: value'"),
    ("---\ntop_k: two\n---\nx", "line 2: top_k must be an integer"),
    ("---\ntemprature: 0.5\n---\nx", "'temprature' is neither a setting"),
    ("a\x00b", "binary"),
])
def test_malformed_templates_are_one_clear_error(text, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("'", "'")):
        parse(text, "t.txt")


def test_load_finds_shipped_prompts_by_name_and_every_shipped_prompt_is_clean():
    names = sorted(p.stem for p in templates.prompts_dir().glob("*.txt"))
    assert {"en_ko", "assistant", "paris_top10", "zebra", "future_election", "tldr"} <= set(names)
    for name in names:
        tpl = templates.load(name)
        assert check(tpl) == [], name
        tpl.render()  # every variable has a default
    assert templates.load("en_ko").defaults["input"] == "teacher"
    assert templates.load("tldr").settings["top_k"] == 2  # as in the GPT-2 paper
    assert len(templates.load("en_ko").render().split("\n")) == 22  # ten pairs and the slot


# --- seam lint: (body, [(line, words in the message)]) ---------------------------------------
SEAMS = [
    ("English: cat\nKorean: 고양이\nEnglish: {{input}}\nKorean:", []),
    ("English: cat\nKorean: 고양이\nEnglish: {{input}}\nKorean: ", [(4, "space before the answer slot")]),
    ("English: cat \nKorean: 고양이\nEnglish: {{input}}\nKorean:", [(1, "trailing whitespace")]),
    ("English:  cat\nKorean: 고양이\nEnglish: {{input}}\nKorean:", [(1, "double space")]),
    ("English: cat\nKorean:고양이\nEnglish: dog\nKorean: 개\nEnglish: fox\nKorean: 여우\nEnglish: {{input}}\nKorean:",
     [(2, "delimiter after 'Korean'")]),
    ("English: cat\nKorean : 고양이\nEnglish: dog\nKorean: 개\nEnglish: fox\nKorean: 여우\nEnglish: {{input}}\nKorean:",
     [(2, "delimiter after 'Korean'")]),
    ("English: cat\nKorean: 고양이English: dog\nKorean: 개\nEnglish: {{input}}\nKorean:", [(2, "missing its final newline")]),
    ("English: cat\nKorean: 고양이\nenglish: dog\nKorean: 개\nenglish: {{input}}\nKorean:", [(1, "differs in case")]),
    ("Q: 1+1\r\nA: 2\r\nQ: {{input}}\r\nA:", [(1, "carriage return"), (2, "carriage return"), (3, "carriage return")]),
    ("Some prose: a colon once.\nQ: {{input}}\nA:", []),
]


@pytest.mark.parametrize("body, expected", SEAMS)
def test_seam_check(body, expected):
    findings = check(parse("---\ndescription: x\n---\n" + body))
    got = [(f.line - 3, f.message) for f in findings]  # body lines, front matter is 3 lines
    assert [line for line, _ in got] == [line for line, _ in expected], got
    for (_, message), (_, words) in zip(got, expected):
        assert words in message


# --- few-shot from a table -------------------------------------------------------------------


def test_shots_follow_lm_eval_delimiters_and_leave_the_answer_space_to_the_model():
    shots = Shots(input_prefix="English: ", output_prefix="\nKorean:", target_delimiter=" ", fewshot_delimiter="\n\n")
    pairs = [("cat", "고양이"), ("dog", "개"), ("teacher", "선생님"), ("fox", "여우")]
    assert shots.prompt(pairs, "teacher", k=2) == "English: cat\nKorean: 고양이\n\nEnglish: dog\nKorean: 개\n\nEnglish: teacher\nKorean:"
    # the row whose input is the question is never one of the shots
    assert "선생님" not in shots.prompt(pairs, "teacher")
    assert shots.prompt(pairs, "teacher", k=0) == "English: teacher\nKorean:"


def test_read_pairs(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_text("input\toutput\n# a comment\ncat\t고양이\n\nline\ta\\nb\n", encoding="utf-8")
    assert templates.read_pairs(f) == [("cat", "고양이"), ("line", "a\nb")]
    f.write_text("cat\t고양이\ndog 개\n", encoding="utf-8")
    with pytest.raises(UsageError, match="line 2: expected 'input<TAB>output'"):
        templates.read_pairs(f)


# --- chat ------------------------------------------------------------------------------------


def test_chat_prompt_appends_turns_and_opens_the_assistant_label():
    tpl = parse("---\nhuman: User\nassistant: Bot\nstop: ###\n---\nA chat.\nUser: hi\nBot: hello\n")
    text = chat_prompt(tpl, [("one", "1")], "two")
    assert text == "A chat.\nUser: hi\nBot: hello\nUser: one\nBot: 1\nUser: two\nBot:"
    assert chat_stops(tpl) == ("\nUser:", "###")
    assert chat_prompt(parse("Preamble without newline"), [], "x") == "Preamble without newline\nHuman: x\nAssistant:"


@pytest.mark.parametrize("raw, answer", [(" 선생님", "선생님"), (" Paris \n", "Paris"), ("\n    return x\n\n", "    return x"),
                                         (" \n\tpass", "\tpass"), ("", "")])
def test_trim_answer_drops_the_seam_space_but_keeps_code_indentation(raw, answer):
    assert templates.trim_answer(raw) == answer
