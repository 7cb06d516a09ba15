"""Terminal views of `basecli fewshot`: the answers, and the prompt with its seams made visible."""

from __future__ import annotations

import sys

from basecli.views.render import console, is_tty

SHADES = ("black on bright_cyan", "black on bright_yellow")  # alternate so neighbouring tokens stay apart


def answers(inputs: list, answers: list[str]) -> None:
    """One answer per line in input order; on a terminal, several answers show their inputs too."""
    if not is_tty():
        sys.stdout.write("".join(a + "\n" for a in answers))
        sys.stdout.flush()
        return
    con = console()
    if len(answers) == 1:
        con.print(answers[0], style="bold", markup=False)
        return
    from rich.table import Table

    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
    table.add_column(style="dim")
    table.add_column(style="bold")
    for x, a in zip(inputs, answers):
        table.add_row(str(x), a)
    con.print(table)


def token_spans(tokenizer, text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each token of `text`; a token that splits a character gets it whole."""
    ids = tokenizer.encode(text)
    spans, consumed, start = [], b"", 0
    for i in ids:
        consumed += tokenizer.token_bytes(i)
        end = len(consumed.decode("utf-8", errors="ignore"))
        spans.append((start, end))
        start = end
    return spans


def marked(tokenizer, prompt: str, seams: list[tuple[int, int]], tty: bool):
    """The prompt with every token boundary shown on the lines that hold a seam (a substituted value or the
    answer slot at the end): '|' between tokens in plain text, alternating colours on a terminal."""
    from rich.text import Text

    line_starts = [0] + [i + 1 for i, ch in enumerate(prompt) if ch == "\n"]
    line_of = lambda pos: max(n for n, s in enumerate(line_starts) if s <= pos)  # noqa: E731
    hot = {line_of(max(0, len(prompt) - 1))}
    for a, b in seams:
        hot |= {line_of(a), line_of(max(a, b - 1))}
    spans = token_spans(tokenizer, prompt)
    out = Text()
    for n, (a, b) in enumerate(spans):
        piece = prompt[a:b]
        mark = line_of(a) in hot or line_of(max(a, b - 1)) in hot
        if tty:
            shown = piece.replace(" ", "·") if mark else piece  # a space token must stay visible
            out.append(shown, style=SHADES[n % 2] if mark else "dim")
        else:
            out.append("|" + piece if mark else piece)
    if not tty and spans:
        out.append("|")
    return out if tty else out.plain


def show_prompts(tokenizer, prompts: list[str], seams: list[list[tuple[int, int]]]) -> None:
    tty = is_tty()
    for i, (p, s) in enumerate(zip(prompts, seams)):
        if i:
            (console().print if tty else sys.stdout.write)("\n" + "-" * 40 + "\n")
        body = marked(tokenizer, p, s, tty)
        if tty:
            console().print(body, end="")
            console().print()
        else:
            sys.stdout.write(body + "\n")
        n = len(tokenizer.prefix_ids) + len(tokenizer.encode(p))
        print(f"basecli: {n} tokens; token boundaries are marked on the lines with a seam (a variable or the answer slot)",
              file=sys.stderr)
