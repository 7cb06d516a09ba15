"""Which well-known texts does a model recite? `basecli recite` over every file in docs/demos/recitation/.

    python docs/demos/recitation_scan.py                     # the embedded model, greedy, 24-token prefixes
    python docs/demos/recitation_scan.py -m smollm2-360m --prefix-tokens 12

Each text is given as its first --prefix-tokens tokens (the same for every text: a first sentence
can be the whole text). Prints a Markdown table, most reproduced first: for each text the share of the reference that comes
back verbatim (in-order runs of >= 4 tokens), the longest verbatim run and the token where the model
first leaves the text. Greedy, so the table is the same on every run of the same weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TEXTS = Path(__file__).with_name("recitation")


def recite(path: Path, extra: list[str]) -> dict:
    run = subprocess.run([sys.executable, "-m", "basecli", "recite", str(path), "--json", *extra],
                         capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"{path.name}: {run.stderr.strip()}")
    record = json.loads(run.stdout)
    sample = record["samples"][0]
    return {"text": path.stem, "reference": sample["reference_tokens"], "reproduced": sample["reproduced"],
            "run": sample["longest_run_tokens"], "diverged": sample["diverged_at"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", help="any basecli model (default: the embedded one)")
    parser.add_argument("--prefix-tokens", type=int, default=24, help="give the model the first N tokens (default 24)")
    args = parser.parse_args()
    extra = (["-m", args.model] if args.model else []) + ["--prefix-tokens", str(args.prefix_tokens)]
    rows = sorted((recite(path, extra) for path in sorted(TEXTS.glob("*.txt"))),
                  key=lambda r: (-r["reproduced"], -r["run"], r["text"]))
    print("| text | reference tokens | reproduced | longest verbatim run | first divergence |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        diverged = "never" if r["diverged"] is None or r["diverged"] >= r["reference"] else f"token {r['diverged']}"
        print(f"| {r['text']} | {r['reference']} | {r['reproduced']:.0%} | {r['run']} tokens | {diverged} |")


if __name__ == "__main__":
    main()
