"""The terminal view of a tokenization: coloured token spans with their ids underneath.

Each token is a cell: its text on top (background colour keyed by its id), its id below.
Tokens that hold only part of a UTF-8 character show their bytes (`<0xEA>`) and are kept
together with the neighbours that complete the character, followed by that character.
"""

from __future__ import annotations

import codecs
import sys
from dataclasses import dataclass

# named colours, so that neighbours stay distinct on 16-colour terminals too (hex pastels all become white)
PALETTE = ["bright_cyan", "bright_yellow", "bright_green", "bright_magenta", "cyan", "yellow", "green", "magenta", "blue", "red"]
WHITESPACE = str.maketrans({" ": "·", "\n": "↵", "\t": "→", "\r": "␍"})


def _hex_bytes(err: UnicodeDecodeError):
    return "".join(f"<0x{b:02X}>" for b in err.object[err.start:err.end]), err.end


codecs.register_error("basecli-hexbyte", _hex_bytes)


def token_text(data: bytes, *, whitespace: bool = True) -> str:
    """A token's bytes as text; bytes that are not whole UTF-8 characters as <0xNN>."""
    s = data.decode("utf-8", errors="basecli-hexbyte")
    return s.translate(WHITESPACE) if whitespace else s.replace("\t", " ").replace("\r", "")


def style_for(token_id: int) -> str:
    # multiplying by a large odd number spreads neighbouring ids over the palette
    colour = PALETTE[(token_id * 2654435761 >> 7) % len(PALETTE)]
    return f"{'white' if colour in ('blue', 'red') else 'black'} on {colour}"


@dataclass
class Cell:
    text: str
    label: str  # the id, or "" for an annotation
    style: str
    id_style: str
    newline: bool = False  # the token ends a line of the input


def counts(text: str, n_tokens: int) -> dict:
    chars = len(text)
    return {"tokens": n_tokens, "characters": chars, "bytes": len(text.encode("utf-8")),
            "characters_per_token": round(chars / n_tokens, 2) if n_tokens else None}


def header(name: str, c: dict) -> str:
    cpt = f"{c['characters_per_token']:.2f}" if c["characters_per_token"] is not None else "-"
    return (f"{name}: {c['tokens']:,} token{'' if c['tokens'] == 1 else 's'}, {c['characters']:,} characters, {c['bytes']:,} bytes, "
            f"{cpt} characters/token")


def units(text: str, ids, pieces, spans, *, whitespace: bool = True) -> list[list[Cell]]:
    """Tokens grouped so that the pieces of one character stay together; each group is one unit."""
    out: list[list[Cell]] = []
    group: list[int] = []
    for k in range(len(ids)):
        group.append(k)
        nxt = pieces[k + 1] if k + 1 < len(ids) else b""
        if nxt and 0x80 <= nxt[0] < 0xC0:  # the next token continues a character this one began
            continue
        cells = [_cell(ids[j], pieces[j], whitespace) for j in group]
        if len(group) > 1 or not _whole(pieces[k]):
            formed = text[spans[group[0]][0]:spans[group[-1]][1]] if text else ""
            if formed:
                shown = formed.translate(WHITESPACE) if whitespace else formed
                cells.append(Cell(f"={shown}", "", "dim", "dim"))
        out.append(cells)
        group = []
    return out


def _whole(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _cell(token_id: int, data: bytes, whitespace: bool) -> Cell:
    style = style_for(token_id)
    text = token_text(data, whitespace=whitespace)
    newline = data.endswith(b"\n")
    if not whitespace:
        text = text.replace("\n", "")
    return Cell(text, str(token_id), style, style.split(" on ")[1], newline)


def grid_lines(groups: list[list[Cell]], width: int, Text=None):
    """Pack units into rows no wider than `width`; yields (token row, id row) as rich Texts
    (or as `Text`, any class with rich Text's append/rstrip/plain)."""
    from rich.cells import cell_len

    if Text is None:
        from rich.text import Text

    top, bottom, used = Text(), Text(), 0
    for cells in groups:
        w = sum(max(cell_len(c.text), len(c.label)) for c in cells) + len(cells) - 1
        if used and used + 1 + w > width:
            yield top, bottom
            top, bottom, used = Text(), Text(), 0
        if used:
            top.append(" ")
            bottom.append(" ")
            used += 1
        for n, c in enumerate(cells):
            cw = max(cell_len(c.text), len(c.label))
            if n:
                top.append(" ")
                bottom.append(" ")
            top.append(c.text, style=c.style)
            top.append(" " * (cw - cell_len(c.text)))
            bottom.append(c.label.ljust(cw), style=c.id_style)
        used += w
        if any(c.newline for c in cells):  # keep the input's line shape
            yield top, bottom
            top, bottom, used = Text(), Text(), 0
    if used:
        yield top, bottom


def show(name: str, text: str, ids, pieces, spans, *, whitespace: bool = True, limit: int = 0, console=None) -> int:
    """Print the header and the grid; returns how many tokens were left out by `limit`."""
    con = console or terminal_console()
    line = (AnsiLine if con.colour else PlainLine) if isinstance(con, PlainConsole) else None
    con.print(header(name, counts(text, len(ids))), style="bold", markup=False, highlight=False)
    cut = len(ids) - limit if limit and len(ids) > limit else 0
    if cut:
        ids, pieces, spans = ids[:limit], pieces[:limit], spans[:limit]
    for top, bottom in grid_lines(units(text, ids, pieces, spans, whitespace=whitespace), max(con.width, 20), line):
        top.rstrip()
        bottom.rstrip()
        con.print(top)
        con.print(bottom)
    return cut


class PlainLine:
    """A row of the grid without styles, for pipes: rich.text's imports cost more than tokenizing."""

    def __init__(self):
        self.plain = ""

    def append(self, text: str, style=None) -> None:
        self.plain += text

    def rstrip(self) -> None:
        self.plain = self.plain.rstrip()


# SGR codes of the few styles this view uses; "X on Y" is foreground X on background Y
SGR = {"bold": 1, "dim": 2, **{name: 30 + i for i, name in enumerate(("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"))},
       **{f"bright_{name}": 90 + i for i, name in enumerate(("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"))}}


def sgr(style: str) -> str:
    fore, _, back = style.partition(" on ")
    codes = [SGR[word] for word in fore.split()] + ([SGR[back] + 10] if back else [])
    return ";".join(map(str, codes))


class AnsiLine(PlainLine):
    """A row with its colours as ANSI escapes: the 16 named colours work on every terminal."""

    def append(self, text: str, style=None) -> None:
        self.plain += f"\x1b[{sgr(style)}m{text}\x1b[0m" if style and text else text


def terminal_console() -> "PlainConsole":
    return PlainConsole(colour=sys.stdout.isatty() and colour_allowed())


def colour_allowed() -> bool:
    import os

    return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


class PlainConsole:
    """What the view needs of a rich Console: print a line, know the width. rich.console and
    rich.text cost more to import than `tokenize -e cl100k_base` has in all, and this view only
    needs 16 colours, so it writes text (pipes: 80 columns unless COLUMNS says otherwise, as
    rich does) or ANSI-coloured text (terminals: their width)."""

    def __init__(self, colour: bool = False):
        import shutil

        self.colour = colour
        self.width = shutil.get_terminal_size().columns

    def print(self, obj="", style=None, **_) -> None:
        text = getattr(obj, "plain", obj)
        sys.stdout.write(f"\x1b[{sgr(style)}m{text}\x1b[0m\n" if self.colour and style else text + "\n")
