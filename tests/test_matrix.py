"""Every command that generates or scores, on both tiny models, under every dtype and every engine, forced.

The product picks its dtype and engine from the machine (bf16 on CPUs with avx512_bf16 or AMX,
on CUDA; basecli's kernels where a C compiler is), so a suite that runs only what this machine
picks proves nothing about the next one. Here every cell is forced explicitly:

  engine:  transformers (BASECLI_ENGINE=transformers), lean (BASECLI_ENGINE=lean),
           q8 and q4 (--quantize: basecli's kernels on the lean engine, fp32 activations)
  dtype:   float32, bfloat16, float16 (where this torch runs fp16 matmuls on the CPU)

and each command's log-probabilities are checked against the reference, fp32 transformers,
teacher-forced on the same tokens: |logprob - reference| within the cell's tolerance, and
greedy picks within that tolerance of the reference's best token (a near-tie may break either
way in low precision). q8/q4 with bf16 or fp16 activations is a usage error, and checked as one.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest

from conftest import invoke

ENGINES = ("transformers", "lean", "q8", "q4")
DTYPES = ("float32", "bfloat16", "float16")
MODELS = ("llama", "gpt2")

# |logprob - fp32 reference| allowed, in nats, per dtype and per weight format: about three times the worst
# difference seen on these models (bf16 keeps 8 significant bits, fp16 11; q8 and q4 quantise the
# weights, and the kernels quantise activations to 8 bits per block of 32). fp32 differs only in
# the order of its sums, and the JSON's five decimals.
TOLERANCE = {"float32": 1e-4, "bfloat16": 0.04, "float16": 0.006, "q8": 0.06, "q4": 0.35}

PROMPT = "The quick brown fox"


def tolerance(engine: str, dtype: str) -> float:
    return TOLERANCE[engine] if engine in ("q8", "q4") else TOLERANCE[dtype]


def fp16_runs_on_cpu() -> bool:
    import torch

    try:
        x = torch.ones(2, 32, dtype=torch.float16)
        return bool(torch.isfinite(x @ x.T).all())
    except RuntimeError:
        return False


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    (root / "examples.tsv").write_text("teacher\t선생님\ncat\t고양이\ndog\t개\n")
    (root / "preamble.txt").write_text("You answer briefly.\n")
    (root / "reference.txt").write_text("The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog.\n")
    return root


def command_args(command: str, files) -> list[str]:
    return {
        "complete": ["complete", PROMPT, "-n", "4", "-t", "0", "--json"],
        "resample": ["resample", PROMPT, "-N", "3", "-n", "4", "-s", "1", "--jsonl"],
        "sweep": ["sweep", PROMPT, "-n", "3", "-s", "1", "--jsonl", "--yes"],
        "fewshot": ["fewshot", "--examples", str(files / "examples.tsv"), "-i", "fox", "--k", "2", "-n", "3", "-s", "1", "--json"],
        "chat": ["chat", str(files / "preamble.txt"), "--message", "hi", "-n", "3", "-s", "1"],
        "score": ["score", PROMPT + " jumps over", "--json"],
        "recite": ["recite", str(files / "reference.txt"), "--samples", "2", "-t", "0.8", "-s", "1", "--json"],
        "bench": ["bench", "--json", "--no-startup", "--prompt-tokens", "8", "--new-tokens", "4", "--batch", "1,3"],
    }[command]


COMMANDS = ("complete", "resample", "sweep", "fewshot", "chat", "score", "recite", "bench")


def run_cell(monkeypatch, model_dir, command: str, engine: str, dtype: str, files):
    monkeypatch.setenv("BASECLI_ENGINE", "transformers" if engine == "transformers" else "lean")
    monkeypatch.delenv("BASECLI_QUANTIZE", raising=False)
    args = [*command_args(command, files), "-m", str(model_dir), "--dtype", dtype]
    if engine in ("q8", "q4"):
        args += ["--quantize", engine]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke(*args)
    return result, [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]


class Reference:
    """fp32 transformers on one tiny model: teacher-forced log-probabilities of any token sequence."""

    def __init__(self, model_dir, load):
        from basecli.weights import models

        self.model = load(model_dir)
        self.tokenizer = models.tokenizer_for(model_dir, str(model_dir))

    def prompt_ids(self, text: str) -> list[int]:
        ids = self.tokenizer.prefix_ids + self.tokenizer.encode(text)
        return ids or [self.tokenizer.bos_id if self.tokenizer.bos_id is not None else min(self.tokenizer.eos_ids)]

    def logprobs(self, ids: list[int]):
        """(len(ids) - 1, vocab): row t is the distribution of token t + 1."""
        import torch

        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0].double()
        return logits.log_softmax(-1)[:-1]


def check_tokens(ref: Reference, prompt_ids: list[int], tokens: list[dict], tol: float, greedy: bool, cell: str) -> None:
    """Every token's logprob as the reference gives it, teacher-forced after the prompt and the tokens before it."""
    ids = [*prompt_ids, *(t["id"] for t in tokens)]
    lp = ref.logprobs(ids)
    for i, t in enumerate(tokens):
        row = lp[len(prompt_ids) - 1 + i]
        assert abs(t["logprob"] - float(row[t["id"]])) <= tol, (
            f"{cell}: token {i} ({t['id']}) logprob {t['logprob']:.5f}, reference {float(row[t['id']]):.5f}, tolerance {tol}")
        if greedy:
            assert float(row[t["id"]]) >= float(row.max()) - 2 * tol, f"{cell}: greedy token {i} is not the reference's best"


def check(command: str, out: str, ref: Reference, tol: float, cell: str, engine: str, dtype: str) -> None:
    if command in ("complete", "fewshot"):
        rec = json.loads(out)
        assert rec["tokens"], cell
        check_tokens(ref, ref.prompt_ids(rec["prompt"]), rec["tokens"], tol, rec["params"]["temperature"] == 0, cell)
    elif command in ("resample", "sweep"):
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert len(records) >= 3, cell
        for rec in records:
            check_tokens(ref, ref.prompt_ids(rec["prompt"]), rec["tokens"], tol, rec["params"]["temperature"] == 0, cell)
    elif command == "score":
        rec = json.loads(out)
        ids = [*rec["start_ids"], *(t["id"] for t in rec["tokens"])]
        lp = ref.logprobs(ids)
        assert len(rec["tokens"]) == len(ids) - len(rec["start_ids"])
        for i, t in enumerate(rec["tokens"]):
            expected = float(lp[len(rec["start_ids"]) - 1 + i][t["id"]])
            assert abs(t["logprob"] - expected) <= tol, f"{cell}: token {i} logprob {t['logprob']}, reference {expected}"
    elif command == "recite":
        rec = json.loads(out)
        assert len(rec["samples"]) == 2, cell
    elif command == "chat":
        assert out.strip(), f"{cell}: no reply"
    elif command == "bench":
        rec = json.loads(out)
        want_engine = "transformers" if engine == "transformers" else "lean"
        assert (rec["engine"], rec["dtype"]) == (want_engine, dtype), cell
        assert [d["batch"] for d in rec["decode"]] == [1, 3] and all(d["tokens_per_s"] > 0 for d in rec["decode"]), cell


@pytest.fixture(scope="module")
def references(tiny_dirs, reference):
    return {kind: Reference(tiny_dirs[kind], reference) for kind in MODELS}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", MODELS)
def test_every_command_in_every_cell(kind, engine, dtype, tiny_dirs, references, files, monkeypatch, one_thread):
    if dtype == "float16" and not fp16_runs_on_cpu():
        pytest.skip("this torch has no fp16 matmul on the CPU")
    ref, tol = references[kind], tolerance(engine, dtype)
    failures = []
    for command in COMMANDS:
        cell = f"{command} on {kind}, engine {engine}, dtype {dtype}"
        result, caught = run_cell(monkeypatch, tiny_dirs[kind], command, engine, dtype, files)
        if engine in ("q8", "q4") and dtype != "float32":  # the kernels take fp32 activations: a usage error, said once
            err = [ln for ln in result.stderr.strip().splitlines() if not ln.startswith("basecli bench:")]
            if not (result.returncode == 2 and len(err) == 1 and err[0].startswith("basecli: error:") and "--dtype float32" in err[0]):
                failures.append(f"{cell}: expected one usage error naming --dtype float32, got exit {result.returncode}: {result.stderr!r}")
            continue
        # bench reports its stages on stderr; nothing else may write there
        noise = [ln for ln in result.stderr.splitlines() if not (command == "bench" and ln.startswith("basecli bench:"))]
        if result.returncode != 0 or noise or caught:
            failures.append(f"{cell}: exit {result.returncode}, stderr {noise!r}, warnings {caught!r}")
            continue
        try:
            check(command, result.stdout, ref, tol, cell, engine, dtype)
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)
