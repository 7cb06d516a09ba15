"""sweep: every cell row equals a separate run with its parameters and seed; grids fit the width; bad input."""

from __future__ import annotations

import io
import json
import re

import pytest

from basecli.backends.batching import Sample
from basecli.commands.sweep import parse_axis
from basecli.config import SamplingParams
from basecli.errors import UsageError
from conftest import invoke, run_cli

PROMPT = "Here's my top-10 list"


@pytest.mark.parametrize("text, kind, want", [
    ("0,0.7,1.2", float, [0.0, 0.7, 1.2]),
    (" 1 , 40 ", int, [1, 40]),
    ("0.5", float, [0.5]),
])
def test_parse_axis(text, kind, want):
    assert parse_axis("--x", text, kind) == want


@pytest.mark.parametrize("text, kind, message", [
    ("", float, "needs a comma-separated list"),
    ("1,,2", int, "needs a comma-separated list"),
    ("0,hot", float, "'hot' is not a number"),
    ("1.5", int, "'1.5' is not a whole number"),
    ("0.5,0.50", float, "lists 0.50 more than once"),
])
def test_parse_axis_rejects(text, kind, message):
    with pytest.raises(UsageError, match=message.replace(".", r"\.")):
        parse_axis("--x", text, kind)


def test_every_cell_equals_a_separate_run(tiny_backends, tiny_dirs):
    b = tiny_backends["llama"]
    out = invoke("sweep", PROMPT, "-m", tiny_dirs["llama"], "-t", "0,1", "--top-k", "0,5", "-N", 2, "-n", 8, "-s", 7,
                 "--ignore-eos", "--jsonl", "--device", "cpu", "--dtype", "float32")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [(r["cell"]["temperature"], r["cell"]["top_k"], r["sample"], r["seed"]) for r in lines] == [
        (0.0, 0, 0, 7), (0.0, 0, 1, 8), (0.0, 5, 0, 7), (0.0, 5, 1, 8),
        (1.0, 0, 0, 7), (1.0, 0, 1, 8), (1.0, 5, 0, 7), (1.0, 5, 1, 8)]
    greedy = [ev.token_id for ev in b.stream([PROMPT], [SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)])]
    for r in lines:
        ids = [t["id"] for t in r["tokens"]]
        if r["cell"]["temperature"] == 0:  # the temperature-0 cells are greedy `complete`
            assert ids == greedy and r["mean_entropy"] == 0.0
            continue
        ref = SamplingParams(max_tokens=8, temperature=1.0, top_k=r["cell"]["top_k"], seed=r["seed"], ignore_eos=True)
        assert ids == [ev.token_id for ev in b.stream([PROMPT], [ref])]
        assert r["params"]["top_k"] == r["cell"]["top_k"] and r["mean_entropy"] > 0


def test_the_grid_limit_needs_yes(tiny_dirs):
    args = ["sweep", PROMPT, "-m", tiny_dirs["gpt2"], "-t", "0,0.5,1,1.5,2", "--top-k", "0,1,2,3,4,5,6", "-N", 2, "-n", 1,
            "--device", "cpu"]
    refused = invoke(*args)
    assert refused.returncode == 2 and re.search(r"35 cells x 2 samples = 70 rows.*--yes", refused.stderr), refused.stderr
    out = invoke(*args, "--yes")
    assert out.returncode == 0
    assert out.stdout.count("distinct=") == 35


def test_plain_output_names_each_cell_and_seed(tiny_dirs):
    out = invoke("sweep", PROMPT, "-m", tiny_dirs["gpt2"], "-t", "0,1.5", "-N", 2, "-n", 4, "-s", 3, "--device", "cpu")
    heads = [line for line in out.stdout.splitlines() if line.startswith("[")]
    assert [h.split("]")[0] for h in heads] == ["[t=0", "[t=1.5"]
    assert heads[0].endswith("distinct=1/2 mean_entropy=0.000")  # greedy rows agree and draw from a point mass
    assert "  2 seed=4: " in out.stdout


def fake_cells(texts_by_cell):
    from basecli.events import Event
    from basecli.views.sweep import AXES, Cell

    cells = []
    for values, texts in texts_by_cell:
        cell = Cell(dict(zip(AXES, values)))
        for j, text in enumerate(texts):
            s = Sample(j, SamplingParams(seed=j))
            s.events = [Event(j, 0, 1, text, text, -1.0, finish_reason="length", entropy=0.5 * len(cell.samples))]
            cell.samples.append(s)
        cells.append(cell)
    return cells


LONG = "\n1. The Eiffel Tower, a wrought-iron lattice tower\n2. The Louvre Museum\n3. Notre-Dame Cathedral"


@pytest.mark.parametrize("width", [40, 80, 200])
def test_grid_fits_the_width(width):
    from rich.console import Console

    from basecli.views.sweep import grids

    axes = {"temperature": [0.0, 0.8, 1.5], "top_k": [1, 40], "top_p": [1.0], "min_p": [0.0]}
    cells = fake_cells([((t, k, 1.0, 0.0), [LONG, LONG + "!", LONG]) for t in axes["temperature"] for k in axes["top_k"]])
    out = io.StringIO()
    con = Console(file=out, width=width, color_system=None)
    for g in grids(cells, axes, width):
        con.print(g)
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width
    text = out.getvalue()
    assert text.count("2/3 distinct · H 0.50") == 6  # per cell: distinct continuations, mean entropy
    assert text.count("2× ") == 6  # a continuation two samples share is shown once, counted
    if width >= 80:
        assert "top-k=1" in lines[1] and "top-k=40" in lines[1]  # one grid: columns are top-k
    else:
        assert "t=0.8 · top-k=40" in text  # too narrow for a grid: one panel per cell


def test_more_axes_give_one_grid_per_value():
    from rich.console import Console

    from basecli.views.sweep import grids

    axes = {"temperature": [0.5, 1.0], "top_k": [0, 5], "top_p": [0.5, 0.9], "min_p": [0.0]}
    cells = fake_cells([((t, k, p, 0.0), ["x"]) for t in axes["temperature"] for k in axes["top_k"] for p in axes["top_p"]])
    found = grids(cells, axes, 120)
    assert len(found) == 2
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(*found)
    assert "top-p=0.5" in out.getvalue() and "top-p=0.9" in out.getvalue()


@pytest.mark.parametrize("args, message", [
    (["--top-k", ""], "--top-k needs a comma-separated list"),
    (["-t", "0,1", "-N", "0"], "-N/--samples must be at least 1"),
    (["-t", "0,1,2,3,4,5,6,7,8", "--top-k", "0,1,2,3,4,5,6,7"], "pass --yes"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    r = run_cli("sweep", "hello", *args)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr
