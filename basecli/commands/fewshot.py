"""basecli fewshot: a task learned from examples in the prompt (in-context learning)."""

from __future__ import annotations

import sys
from typing import Annotated, List, Optional

import typer

from basecli import options as o
from basecli.views.records import write_json

SHOT_KEYS = ("input_prefix", "output_prefix", "target_delimiter", "fewshot_delimiter")


@o.grouped
def fewshot(
    args: Annotated[Optional[List[str]], typer.Argument(metavar="TEMPLATE [INPUT]...", help="A template file (or a shipped name like en_ko), then inputs; '-' reads one input per stdin line. With --examples every argument is an input.")] = None,
    input: Annotated[Optional[List[str]], typer.Option("--input", "-i", help="An input (repeatable), same as a positional INPUT.")] = None,
    var: Annotated[Optional[List[str]], typer.Option("--var", help="NAME=VALUE for a {{NAME}} of the template (repeatable); NAME=@FILE reads the value from a file.")] = None,
    examples: Annotated[Optional[str], typer.Option("--examples", help="Build the prompt from input<TAB>output rows of this TSV file instead of a template.", rich_help_panel="Examples table")] = None,
    k: Annotated[Optional[int], typer.Option("--k", min=0, help="Use the first K examples of the table (default: all).", rich_help_panel="Examples table")] = None,
    input_prefix: Annotated[Optional[str], typer.Option("--input-prefix", help="Before each input. Default 'Input: '.", rich_help_panel="Examples table")] = None,
    output_prefix: Annotated[Optional[str], typer.Option("--output-prefix", help="Between input and answer. Default '\\nOutput:'.", rich_help_panel="Examples table")] = None,
    target_delimiter: Annotated[Optional[str], typer.Option("--target-delimiter", help="Between the output prefix and each example's answer. Default ' '.", rich_help_panel="Examples table")] = None,
    fewshot_delimiter: Annotated[Optional[str], typer.Option("--fewshot-delimiter", help="Between examples. Default '\\n\\n'.", rich_help_panel="Examples table")] = None,
    show_prompt: Annotated[bool, typer.Option("--show-prompt", help="Print the rendered prompt with token boundaries marked at the seams, and exit.")] = False,
    json_out: o.Json = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON record per input, one per line.")] = False,
    model: o.ModelChoice = o.model_choice(),
    sampling: o.SamplingFlags = o.template_sampling(max_tokens=32, temperature=0.0, stop=("\n",), fresh_seed=True,
                                                    help={"stop": "Stop text (repeatable; \\n escapes work). Default: template, else a newline."}),
    truncate: o.Truncate = False,
):
    """Render a few-shot TEMPLATE with each INPUT, complete, and print only the answers.

    Several inputs run as one batch and print one answer per line, in input order.
    Front matter in the template sets defaults; flags override them.

    \b
    Examples:
      basecli fewshot prompts/en_ko.txt        # its default input: teacher
      printf 'cat\\ndog\\n' | basecli fewshot prompts/en_ko.txt - > ko.txt
      basecli fewshot --examples pairs.tsv --input teacher --k 5
      basecli fewshot prompts/en_ko.txt cat --show-prompt
    """
    from basecli.text import templates
    from basecli.errors import UsageError
    from basecli.text.inputs import read_text
    from basecli.views import fewshot as view

    o.at_most_one(json=json_out, jsonl=jsonl)
    args = list(args or [])
    if examples is None and not args:
        raise UsageError("give a TEMPLATE (e.g. prompts/en_ko.txt) or --examples pairs.tsv")
    tpl = None if examples else templates.load(args.pop(0))
    settings = tpl.settings if tpl else {}
    inputs = _inputs(args + list(input or []))
    values = {name: read_text(value, what=f"--var {name}") if value.startswith("@") else value
              for name, value in (v.split("=", 1) for v in var or [] if _is_var(v))}

    if not inputs and (tpl is None or "input" in tpl.variables) and sys.stdin is not None and not sys.stdin.isatty():
        inputs = _stdin_lines()  # piped inputs, as complete reads a piped prompt; none: the template's default
    unknown = [name for name in values if tpl is None or name not in tpl.variables]
    if unknown:
        where = f"{tpl.source} has no {{{{{unknown[0]}}}}}; its variables: {', '.join(tpl.variables) or 'none'}" if tpl \
            else "--examples builds its prompt from the table, which has no variables"
        raise UsageError(f"--var {unknown[0]}: {where}")
    if tpl is not None:
        for f in templates.check(tpl):
            print(f"basecli: warning: {tpl.source} {f}", file=sys.stderr)
        if "input" not in tpl.variables and inputs:
            raise UsageError(f"{tpl.source} has no {{{{input}}}} slot, so it takes no INPUT; use --var NAME=VALUE for its variables")
        if not inputs:
            inputs = [values.get("input", tpl.defaults.get("input"))] if "input" in tpl.variables else [None]
            if inputs == [None] and "input" in tpl.variables:
                raise UsageError(f"no input: pass one (e.g. `basecli fewshot {tpl.source} teacher`) or set `input:` in its front matter")
        prompts = [tpl.render({**values, **({"input": x} if x is not None else {})}) for x in inputs]
        spans = [tpl.render_spans({**values, **({"input": x} if x is not None else {})})[1] for x in inputs]
    else:
        if not inputs:
            raise UsageError("--examples needs an input: --input WORD (or positional inputs, or '-' for stdin lines)")
        flags = dict(zip(SHOT_KEYS, (input_prefix, output_prefix, target_delimiter, fewshot_delimiter)))
        shots = templates.Shots(**{key: o.unescape(v) for key, v in flags.items() if v is not None})
        pairs = templates.read_pairs(examples)
        prompts = [shots.prompt(pairs, x, k) for x in inputs]
        spans = [[(len(p) - len(shots.query(x)) + len(shots.input_prefix), len(p) - len(shots.output_prefix))] for p, x in zip(prompts, inputs)]

    params = sampling.resolve(settings)

    if show_prompt:
        from basecli.weights import models
        source = models.resolve(model.model)
        tokenizer = models.tokenizer_for(models.model_dir(source, allow_pickle=model.allow_pickle), source.name)
        view.show_prompts(tokenizer, prompts, spans)
        return

    from basecli.views.records import Timer, completion_record, gather

    backend = model.open()
    timer = Timer(backend.load_seconds)
    rows: list[list] = [[] for _ in prompts]
    # one batch, one row per input; every row gets the same seed so a batch equals the single runs
    for ev in gather(timer.timed(backend.stream(prompts, [params] * len(prompts), alternatives=5 if (json_out or jsonl) else 0,
                                                seeds=[params.seed] * len(prompts), truncate=truncate))):
        rows[ev.row].append(ev)
    answers = [templates.trim_answer("".join(ev.text for ev in evs)) for evs in rows]
    if json_out or jsonl:
        records = [completion_record(model=backend.name, prompt=p, events=evs, params=params, tokenizer=backend.tokenizer,
                                     timings=timer.as_dict(), input=x, answer=a, template=tpl.source if tpl else examples)
                   for p, evs, x, a in zip(prompts, rows, inputs, answers)]
        if jsonl:
            write_json(*records)
        else:
            write_json(records[0] if len(records) == 1 else records)
        return
    view.answers(inputs, answers)


def _inputs(raw: list[str]) -> list[str]:
    """'-' stands for stdin, one input per non-blank line."""
    out = []
    for x in raw:
        if x == "-":
            lines = _stdin_lines()
            if not lines:
                from basecli.errors import UsageError

                raise UsageError("'-' reads inputs from stdin, one per line, but stdin had none")
            out += lines
        else:
            out.append(x)
    return out


def _stdin_lines() -> list[str]:
    from basecli.text.inputs import read_text

    return [line.strip() for line in read_text("-", what="inputs").splitlines() if line.strip()]


def _is_var(v: str) -> bool:
    from basecli.errors import UsageError

    if "=" not in v or not v.split("=", 1)[0]:
        raise UsageError(f"--var takes NAME=VALUE, got {v!r}")
    return True
