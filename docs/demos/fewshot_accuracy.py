"""How often does a model get an in-context task right? `basecli fewshot` over prompts/<task>.tsv.

    python docs/demos/fewshot_accuracy.py                    # every task, both formats, the embedded model
    python docs/demos/fewshot_accuracy.py antonyms -m smollm2-360m

Each prompts/<task>.tsv holds input<TAB>answer rows: the first five are the examples in the prompt,
the rest (at least 20) are the test inputs, none of which the prompt contains; '|' separates
accepted answers. Each task runs in two formats, `France => Paris` lines and `Country: France` /
`Capital: Paris` blocks, plus the shipped template prompts/<task>.txt where there is one. Greedy;
an answer counts when it equals an accepted one exactly. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PROMPTS = Path(__file__).resolve().parents[2] / "prompts"
EXAMPLES = 5
LABELS = {  # the two labels of the "colon" format
    "capitals": ("Country", "Capital"),
    "antonyms": ("Word", "Opposite"),
    "plurals": ("Singular", "Plural"),
    "past_tense": ("Present", "Past"),
    "addition": ("Question", "Answer"),
}


def formats(task: str) -> dict[str, list[str]]:
    """fewshot arguments per format name."""
    left, right = LABELS[task]
    table = str(PROMPTS / f"{task}.tsv")
    found = {
        "a => b": ["--examples", table, "--k", str(EXAMPLES), "--input-prefix", "",
                   "--output-prefix", " =>", "--fewshot-delimiter", "\\n"],
        "A: a / B: b": ["--examples", table, "--k", str(EXAMPLES), "--input-prefix", f"{left}: ",
                        "--output-prefix", f"\\n{right}:"],
    }
    template = PROMPTS / f"{task}.txt"
    if template.exists():
        found[f"prompts/{task}.txt"] = [str(template)]
    return found


def test_set(task: str) -> list[tuple[str, set[str]]]:
    rows = [line.split("\t") for line in (PROMPTS / f"{task}.tsv").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    return [(question, set(answers.split("|"))) for question, answers in rows[EXAMPLES:]]


def accuracy(args: list[str], cases: list[tuple[str, set[str]]], extra: list[str]) -> tuple[int, list[str]]:
    """Right answers out of len(cases), and the wrong ones as 'input -> answer'."""
    run = subprocess.run([sys.executable, "-m", "basecli", "fewshot", *args, "-", "--jsonl", "-t", "0", *extra],
                         input="".join(q + "\n" for q, _ in cases), capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"fewshot {' '.join(args)}: {run.stderr.strip()}")
    answers = [json.loads(line)["answer"] for line in run.stdout.splitlines()]
    wrong = [f"{q} -> {a}" for (q, accepted), a in zip(cases, answers) if a.strip() not in accepted]
    return len(cases) - len(wrong), wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="*", default=list(LABELS), help=f"some of {', '.join(LABELS)}")
    parser.add_argument("-m", "--model", help="any basecli model (default: the embedded one)")
    parser.add_argument("--wrong", action="store_true", help="list the wrong answers under the table")
    args = parser.parse_args()
    extra = ["-m", args.model] if args.model else []
    print("| task | format | right | accuracy |")
    print("|---|---|---:|---:|")
    mistakes = []
    for task in args.tasks:
        cases = test_set(task)
        for name, fewshot_args in formats(task).items():
            right, wrong = accuracy(fewshot_args, cases, extra)
            print(f"| {task} | `{name}` | {right}/{len(cases)} | {right / len(cases):.0%} |")
            mistakes += [f"{task}, {name}: {w}" for w in wrong]
    if args.wrong:
        print("\nWrong answers:\n")
        print("\n".join(f"- {m}" for m in mistakes))


if __name__ == "__main__":
    main()
