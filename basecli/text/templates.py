"""Prompt templates: optional front matter + a body with {{variables}}; few-shot and chat assembly; seam lint.

A template is data. Front matter is `key: value` lines between two `---` lines, parsed here
by hand (no YAML, nothing evaluated). The body is the prompt text; one final newline is
dropped because editors add it and a few-shot prompt must end exactly at the answer slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from basecli.errors import UsageError

VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# settings a template may carry; every other front-matter key is a default for a {{variable}}
INT_KEYS = {"max_tokens", "top_k", "seed", "k"}
FLOAT_KEYS = {"temperature", "top_p", "min_p", "repetition_penalty"}
TEXT_KEYS = {"description", "human", "assistant", "input_prefix", "output_prefix", "target_delimiter", "fewshot_delimiter"}
LIST_KEYS = {"stop"}  # repeatable; an empty value means "no stop strings"
SETTINGS = INT_KEYS | FLOAT_KEYS | TEXT_KEYS | LIST_KEYS


def unescape(s: str) -> str:
    """\\n, \\t, \\\\ and \\" in a front-matter value; anything else stays as written."""
    return re.sub(r'\\([nt"\\])', lambda m: {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}[m.group(1)], s)


@dataclass
class Template:
    body: str
    settings: dict = field(default_factory=dict)  # typed values of SETTINGS keys
    defaults: dict = field(default_factory=dict)  # default values of variables
    source: str = "<text>"
    body_line: int = 1  # file line number of the body's first line, for findings

    @property
    def variables(self) -> list[str]:
        return list(dict.fromkeys(VAR.findall(self.body)))

    def render(self, values: dict | None = None) -> str:
        return self.render_spans(values)[0]

    def render_spans(self, values: dict | None = None) -> tuple[str, list[tuple[int, int]]]:
        """The prompt, and the (start, end) character span of every substituted value (the seams)."""
        merged = {**self.defaults, **(values or {})}
        missing = [v for v in self.variables if v not in merged]
        if missing:
            names = ", ".join(missing)
            raise UsageError(f"{self.source} needs a value for {{{{{missing[0]}}}}} (missing: {names}); "
                             f"pass --var {missing[0]}=VALUE or give it a default in the front matter")
        out, spans, pos = [], [], 0
        length = 0
        for m in VAR.finditer(self.body):
            out.append(self.body[pos:m.start()])
            length += m.start() - pos
            value = str(merged[m.group(1)])
            spans.append((length, length + len(value)))
            out.append(value)
            length += len(value)
            pos = m.end()
        out.append(self.body[pos:])
        return "".join(out), spans


def parse(text: str, source: str = "<text>") -> Template:
    if "\x00" in text:
        raise UsageError(f"{source} looks like a binary file (it contains NUL bytes); a template is UTF-8 text")
    lines = text.split("\n")
    settings: dict = {}
    defaults: dict = {}
    body_start = 0
    if lines and lines[0].strip() == "---":
        end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
        if end is None:
            raise UsageError(f"{source} line 1: front matter opened with '---' is never closed; add a '---' line after it")
        for i in range(1, end):
            _front_line(lines[i], i + 1, source, settings, defaults)
        body_start = end + 1
    body = "\n".join(lines[body_start:])
    if body.endswith("\n"):
        body = body[:-1]
    tpl = Template(body=body, settings=settings, defaults=defaults, source=source, body_line=body_start + 1)
    unused = [k for k in defaults if k not in tpl.variables]
    if unused:
        raise UsageError(f"{source}: front matter key {unused[0]!r} is neither a setting ({', '.join(sorted(SETTINGS))}) "
                         f"nor a {{{{variable}}}} of the body")
    return tpl


def _front_line(line: str, n: int, source: str, settings: dict, defaults: dict) -> None:
    if not line.strip() or line.lstrip().startswith("#"):
        return
    key, sep, raw = line.partition(":")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key):
        raise UsageError(f"{source} line {n}: front matter lines are 'key: value', got {line.strip()!r}")
    key = key.replace("-", "_")
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':  # quotes keep leading/trailing spaces
        raw = raw[1:-1]
    value = unescape(raw)
    try:
        if key in INT_KEYS:
            settings[key] = int(value)
        elif key in FLOAT_KEYS:
            settings[key] = float(value)
        elif key in LIST_KEYS:
            settings.setdefault(key, [])
            if value:
                settings[key].append(value)
        elif key in TEXT_KEYS:
            settings[key] = value
        else:
            defaults[key] = value
    except ValueError:
        kind = "an integer" if key in INT_KEYS else "a number"
        raise UsageError(f"{source} line {n}: {key} must be {kind}, got {raw!r}") from None


def load(path: str | Path) -> Template:
    from basecli.text.inputs import read_file

    p = Path(path)
    if not p.exists() and not p.is_absolute() and len(p.parts) == 1:
        shipped = prompts_dir() / (p.name if p.suffix else p.name + ".txt")
        if shipped.exists():  # `basecli fewshot en_ko` finds prompts/en_ko.txt
            p = shipped
    return parse(read_file(p), str(path))


def prompts_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "prompts"


def trim_answer(text: str) -> str:
    """The answer without the seam's space and trailing whitespace; an answer that starts on a new line
    (code) keeps its indentation."""
    text = text.rstrip()
    head = text.lstrip(" \t")
    if head.startswith("\n"):
        return head.lstrip("\n")
    return head


# --- few-shot from a table ------------------------------------------------------------------


@dataclass
class Shots:
    """How input/output pairs become a prompt, named as in lm-evaluation-harness."""

    input_prefix: str = "Input: "
    output_prefix: str = "\nOutput:"
    target_delimiter: str = " "  # between the output prefix and the answer
    fewshot_delimiter: str = "\n\n"  # between examples

    def example(self, inp: str, out: str) -> str:
        return f"{self.input_prefix}{inp}{self.output_prefix}{self.target_delimiter}{out}"

    def query(self, inp: str) -> str:
        # the answer's first token carries the target delimiter (" 선생님"), so the prompt stops before it
        return f"{self.input_prefix}{inp}{self.output_prefix}"

    def prompt(self, pairs: list[tuple[str, str]], inp: str, k: int | None = None, header: str = "") -> str:
        shots = [p for p in pairs if p[0] != inp][:k]  # never show the model the answer to the question itself
        parts = [self.example(a, b) for a, b in shots] + [self.query(inp)]
        return header + self.fewshot_delimiter.join(parts)


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """input<TAB>output rows; blank lines and #comments skipped, \\n escapes allowed, an `input<TAB>output` header skipped."""
    from basecli.text.inputs import read_file

    pairs = []
    for n, line in enumerate(read_file(path).splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if len(cells) != 2:
            raise UsageError(f"{path} line {n}: expected 'input<TAB>output', found {len(cells)} tab-separated cells")
        if n == 1 and [c.strip().lower() for c in cells] == ["input", "output"]:
            continue
        pairs.append((unescape(cells[0]), unescape(cells[1])))
    if not pairs:
        raise UsageError(f"{path} has no input<TAB>output rows")
    return pairs


# --- chat -----------------------------------------------------------------------------------


def chat_labels(tpl: Template) -> tuple[str, str]:
    return tpl.settings.get("human", "Human"), tpl.settings.get("assistant", "Assistant")


def chat_prompt(tpl: Template, turns: list[tuple[str, str]], message: str | None) -> str:
    """Preamble, then one Human/Assistant pair per turn, then the new message and the open assistant label."""
    human, assistant = chat_labels(tpl)
    text = tpl.render().rstrip("\n") + "\n"
    for user, answer in turns:
        text += f"{human}: {user}\n{assistant}: {answer}\n"
    if message is not None:
        text += f"{human}: {message}\n{assistant}:"
    return text


def chat_stops(tpl: Template) -> tuple[str, ...]:
    """The restart text: the model has finished its turn when it starts writing the human's next one."""
    human, _ = chat_labels(tpl)
    return (f"\n{human}:",) + tuple(tpl.settings.get("stop", ()))


# --- seam lint ------------------------------------------------------------------------------


@dataclass
class Finding:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


LABEL = re.compile(r"^([^\s:][^:]{0,30}?)(\s*):(\s*)(.*)$")


def check(tpl: Template) -> list[Finding]:
    """The traps that silently wreck few-shot prompts, each with the file line it is on."""
    findings: list[Finding] = []
    lines = tpl.body.split("\n")
    first = tpl.body_line
    if not tpl.body.strip():
        return [Finding(first, "the template body is empty; the model would get no prompt")]
    for i, line in enumerate(lines):
        left = VAR.sub("", line)
        if "{{" in left or "}}" in left:
            bad = left.find("{{") if "{{" in left else left.find("}}")
            findings.append(Finding(first + i, f"{left[bad:bad + 20]!r} is not a {{{{variable}}}}: a slot is {{{{name}}}} "
                                               f"(letters, digits, _), opened and closed on one line"))
    last = len(lines) - 1
    for i, line in enumerate(lines):
        n = first + i
        if line.endswith("\r"):
            findings.append(Finding(n, "ends with a carriage return (Windows line ending); the model sees it as an extra token"))
            line = line[:-1]
        if i == last and line != line.rstrip(" \t") and VAR.sub("", line).strip():
            findings.append(Finding(n, "the prompt ends with a space before the answer slot; the answer's first token "
                                       "normally carries that space (' Paris'), so remove it"))
        elif line != line.rstrip(" \t"):
            findings.append(Finding(n, "stray trailing whitespace"))
        if "  " in line.strip():
            col = line.index("  ", len(line) - len(line.lstrip())) + 1
            findings.append(Finding(n, f"double space at column {col}"))
    findings += _delimiters(lines, first)
    return sorted(findings, key=lambda f: f.line)


def _delimiters(lines: list[str], first: int) -> list[Finding]:
    """Labelled example lines ('English: cat') must use one delimiter per label, one case, one line each."""
    findings = []
    seen: dict[str, list[tuple[int, str, str]]] = {}
    for i, line in enumerate(lines):
        m = LABEL.match(line.rstrip("\r"))
        if m and not VAR.fullmatch(m.group(1).strip()):
            seen.setdefault(m.group(1).strip(), []).append((first + i, m.group(2), m.group(3)))
    folded: dict[str, list[str]] = {}
    for name in seen:
        folded.setdefault(name.lower(), []).append(name)
    # a label used once is prose, not an example field
    labels = {k: v for k, v in seen.items() if sum(len(seen[n]) for n in folded[k.lower()]) >= 2}
    for names in folded.values():
        if len(names) > 1:
            common = max(names, key=lambda s: len(seen[s]))
            for rare in names:
                if rare != common:
                    findings.append(Finding(seen[rare][0][0], f"label {rare!r} differs in case from {common!r}"))
    for name, uses in labels.items():
        # compare the space before ':' and the kind of space after it; double spaces have their own finding
        shapes = [(pre, post[:1]) for _, pre, post in uses]
        slot = first + len(lines) - 1
        examples = [sh for (n, _, _), sh in zip(uses, shapes) if n != slot] or shapes
        common = max(examples, key=examples.count)
        for (n, pre, post), shape in zip(uses, shapes):
            # the open answer slot ('Korean:' with nothing after it) is judged by its front only
            if shape[0] != common[0] or (n != slot and shape[1] != common[1]):
                findings.append(Finding(n, f"delimiter after {name!r} is {pre + ':' + post[:1]!r} but the other examples use "
                                           f"{common[0] + ':' + common[1]!r}"))
    for i, line in enumerate(lines):
        for name in labels:
            j = line.find(name + ":")
            if j > 0 and not line[:j].endswith((" ", "\t")) and LABEL.match(line) and LABEL.match(line).group(1).strip() != name:
                findings.append(Finding(first + i, f"{name + ':'!r} starts mid-line; the previous example is missing its final newline"))
    return findings
