"""basecli tokenize: see how text becomes tokens, with tiktoken encodings or any model's tokenizer."""

from __future__ import annotations

import re
import sys
from typing import Annotated, List, Optional

import typer

from basecli import options as o
from basecli.views.records import write_json
TextArg = Annotated[Optional[List[str]], typer.Argument(
    help="The text, '-' for stdin, or @FILE (words are joined with spaces). With --decode: token ids. Read from stdin when omitted and piped.",
    show_default=False)]
Encoding = Annotated[Optional[str], typer.Option("--encoding", "-e", help="A tiktoken encoding: gpt2, r50k_base, p50k_base, cl100k_base, o200k_base.", show_default=False)]

DEFAULT_LIMIT = 1000


@o.grouped
def tokenize(
    ctx: typer.Context,
    text: TextArg = None,
    encoding: Encoding = None,
    choice: o.ModelChoice = o.model_choice("model", "base_url"),
    compare: Annotated[Optional[str], typer.Option("--compare", "-c", metavar="LIST", show_default=False,
                       help="Comma-separated tokenizers to compare on the same text: encodings and model:NAME, e.g. cl100k_base,gpt2,model:smollm2-135m.")] = None,
    ids_out: Annotated[bool, typer.Option("--ids", help="Print only the ids, space separated.")] = False,
    count: Annotated[bool, typer.Option("--count", help="Print only the number of tokens.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print per token id, text, bytes (hex) and start/end offsets, plus the counts.")] = False,
    decode: Annotated[bool, typer.Option("--decode", "-d", help="Turn ids (arguments or stdin, any separators) back into text, byte for byte, ended by a newline unless it has one (--json for the exact text).")] = False,
    allow_special: Annotated[bool, typer.Option("--allow-special", help="Parse special tokens such as <|endoftext|> (default: plain text).")] = False,
    whitespace: Annotated[bool, typer.Option("--whitespace/--no-whitespace", help="Show spaces as ·, newlines as ↵, tabs as →.")] = True,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Show at most this many tokens in the terminal view (0 = all); --ids, --json and --count are never cut.")] = DEFAULT_LIMIT,
):
    """Show how TEXT becomes tokens: coloured spans, ids and counts.

    With neither --encoding nor --model, the default model's tokenizer is used, so counts match `complete`.

    \b
    Examples:
      basecli tokenize -e cl100k_base "hello world"
      basecli tokenize @notes.txt --count
      basecli tokenize --compare cl100k_base,o200k_base,model:smollm2-135m "안녕하세요 😀"
      basecli tokenize -e cl100k_base --ids "hello" | basecli tokenize -e cl100k_base --decode -
      basecli tokenize --base-url http://localhost:8000/v1 "hello world"   (the server's own tokenizer)
    """
    from basecli.errors import UsageError

    model, base_url = choice.model, choice.base_url
    if model and (encoding or compare) and ctx.get_parameter_source("model").name == "ENVIRONMENT":
        model = None  # BASECLI_MODEL is a default; a tokenizer named on the command line wins
    if sum((ids_out, count, json_out)) > 1:
        raise UsageError("--ids, --count and --json each choose the output; give at most one")
    for flag, value in (("--encoding", encoding), ("--compare", compare), ("--model", model)):
        if value is not None and not value.strip():  # "" used to mean the default tokenizer, silently
            raise UsageError(f"{flag} is empty; name a tokenizer (e.g. cl100k_base), or leave {flag} out for the default model's")
    if compare and (encoding or model):
        raise UsageError("--compare names its own tokenizers; drop --encoding/--model or put them in the list (model:NAME)")
    if encoding and model:
        raise UsageError("give --encoding or --model, not both (use --compare to see several tokenizers)")
    if decode and (compare or ids_out or count):
        raise UsageError("--decode prints the text of the ids; it combines only with --json")

    if decode:
        tok = _tokenizer(encoding, model, base_url)
        return _decode(tok, _read_ids(text), json_out)
    source = _read(text)
    if compare:
        return _compare(compare, source, allow_special=allow_special, count=count, json_out=json_out, ids_out=ids_out,
                        whitespace=whitespace, limit=limit)
    tok = _tokenizer(encoding, model, base_url)
    if ids_out or count:  # ids alone: no bytes or offsets to work out, so a megabyte takes a fraction of a second
        ids = tok.encode(source, allow_special=allow_special)
        sys.stdout.write((" ".join(map(str, ids)) if ids_out else str(len(ids))) + "\n")
        return
    from basecli.text.tokenizers import segment

    ids, pieces, spans = segment(tok, source, allow_special=allow_special)
    if json_out:
        write_json(record(tok.name, source, ids, pieces, spans))
    else:
        _view(tok.name, source, ids, pieces, spans, whitespace, limit)


def _read(text: Optional[List[str]]) -> str:
    from basecli.errors import UsageError
    from basecli.text.inputs import read_text

    if text and len(text) > 1 and any(t == "-" or t.startswith("@") for t in text):
        raise UsageError("'-' and @FILE stand for the whole text; quote text that has several words instead")
    source = read_text(" ".join(text) if text else None, what="text")
    try:
        source.encode("utf-8")
    except UnicodeEncodeError as e:  # an argument with bytes the locale could not decode
        raise UsageError(f"the text is not valid UTF-8 (character {e.start}); pass it as a UTF-8 file with @FILE") from None
    return source


def _tokenizer(encoding: Optional[str], model: Optional[str], base_url: Optional[str] = None):
    from basecli.text.tokenizers import tiktoken_tokenizer
    from basecli.weights.model_tokenizer import model_tokenizer

    if base_url and not encoding:  # --encoding names a local tokenizer, which wins over the server
        from basecli.errors import UsageError

        tok = o.ModelChoice(model, base_url).open().tokenizer
        if not tok.available:
            raise UsageError(f"the server at {base_url} has no tokenize endpoint; name a local tokenizer with --encoding "
                             "(or BASECLI_TOKENIZER=MODEL_DIR|ENCODING)")
        return tok
    return tiktoken_tokenizer(encoding) if encoding else model_tokenizer(model)


def _spec(spec: str):
    from basecli.errors import UsageError
    from basecli.text.tokenizers import TIKTOKEN_ENCODINGS, tiktoken_tokenizer
    from basecli.weights.model_tokenizer import model_tokenizer

    if spec.startswith("model:"):
        return model_tokenizer(spec[len("model:"):] or None)
    if spec in TIKTOKEN_ENCODINGS or spec.endswith("_base"):
        return tiktoken_tokenizer(spec)
    raise UsageError(f"--compare: {spec!r} is neither an encoding ({', '.join(TIKTOKEN_ENCODINGS)}) nor model:NAME")


def _compare(specs: str, source: str, *, allow_special, count, json_out, ids_out, whitespace, limit):
    from basecli.text.encodings import Unavailable
    from basecli.errors import UsageError
    from basecli.text.tokenizers import segment
    from basecli.views.tokens import terminal_console

    names = [s.strip() for s in specs.split(",") if s.strip()]
    if len(names) < 1:
        raise UsageError("--compare needs a comma-separated list, e.g. cl100k_base,gpt2,model:smollm2-135m")
    if ids_out:
        raise UsageError("--ids prints one tokenizer's ids; use --json with --compare")
    blocks = []
    for spec in names:
        try:
            tok = _spec(spec)
        except Unavailable as e:  # one tokenizer missing offline should not hide the others
            print(f"basecli: skipping {spec}: {e}", file=sys.stderr, flush=True)
            blocks.append({"tokenizer": spec, "error": str(e)})
            continue
        blocks.append(record(tok.name, source, *segment(tok, source, allow_special=allow_special)))
    if all("error" in b for b in blocks):
        raise UsageError(f"none of the tokenizers in --compare could be loaded ({blocks[0]['error']})")
    if json_out:
        write_json({"text": source, "tokenizers": [{k: v for k, v in b.items() if k != "text"} for b in blocks]})
        return
    if count:
        width = max(len(b["tokenizer"]) for b in blocks)
        for b in blocks:
            sys.stdout.write(f"{b['tokenizer']:<{width}}  {b['counts']['tokens'] if 'counts' in b else '-'}\n")
        return
    con = terminal_console()
    for n, b in enumerate(blocks):
        if n:
            con.print()
        if "error" in b:
            con.print(f"{b['tokenizer']}: not available (see stderr)", style="bold red")
            continue
        ids = [t["id"] for t in b["tokens"]]
        pieces = [bytes.fromhex(t["bytes"]) for t in b["tokens"]]
        spans = [(t["start"], t["end"]) for t in b["tokens"]]
        _view(b["tokenizer"], source, ids, pieces, spans, whitespace, limit)


def record(name: str, source: str, ids, pieces, spans) -> dict:
    """{tokenizer, text, counts, tokens: [{id, text, bytes, start, end}]}; text is null for a partial UTF-8 character."""
    from basecli.views.tokens import counts

    memo: dict[int, tuple] = {}
    tokens = []
    for i, b, (start, end) in zip(ids, pieces, spans):
        known = memo.get(i)
        if known is None:
            try:
                known = memo[i] = (b.decode("utf-8"), b.hex())
            except UnicodeDecodeError:
                known = memo[i] = (None, b.hex())
        tokens.append({"id": i, "text": known[0], "bytes": known[1], "start": start, "end": end})
    return {"tokenizer": name, "text": source, "counts": counts(source, len(ids)), "tokens": tokens}


def _view(name, source, ids, pieces, spans, whitespace, limit):
    from basecli.views.tokens import show

    cut = show(name, source, ids, pieces, spans, whitespace=whitespace, limit=limit)
    if cut:
        print(f"basecli: {cut:,} more tokens not shown (--limit {limit}; --limit 0 shows all, --ids/--json/--count never cut)",
              file=sys.stderr, flush=True)


def _read_ids(text: Optional[List[str]]) -> list[int]:
    """Ids from the arguments, or stdin ('-' or piped), separated by anything but letters and digits."""
    from basecli.errors import UsageError
    from basecli.text.inputs import read_text

    raw = read_text(None, what="ids") if not text or text == ["-"] else " ".join(text)
    ids = []
    for word in re.findall(r"[^\s,;:\[\](){}\"']+", raw):
        if not word.isdigit():
            raise UsageError(f"--decode: {word[:40]!r} is not a token id; give non-negative integers (any separators)")
        ids.append(int(word))
    return ids


def _decode(tok, ids: list[int], json_out: bool) -> None:
    from basecli.errors import UsageError
    from basecli.text.tokenizers import char_spans, check_ids

    check_ids(tok, ids)
    try:
        pieces = [tok.token_bytes(i) for i in ids]
    except KeyError as e:  # tiktoken has unused ids inside its range
        raise UsageError(f"token id {e.args[0]} is not in {tok.name}'s vocabulary") from None
    data = b"".join(pieces)
    if json_out:
        text = data.decode("utf-8", errors="replace")
        write_json(record(tok.name, text, ids, pieces, char_spans(pieces)))
        return
    sys.stdout.flush()
    sys.stdout.buffer.write(data if data.endswith(b"\n") else data + b"\n")  # a line, like every other output
    sys.stdout.buffer.flush()
