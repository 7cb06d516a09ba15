"""The embedded SmolLM2-135M-Instruct, as README's set-up leaves it (fetched and converted once)."""

from __future__ import annotations

import json

import pytest
import torch

from basecli.config import SamplingParams
from conftest import run_cli

pytestmark = pytest.mark.slow

PARIS = "Here's my top-10 list of the top landmarks to see in Paris:"


def test_embedded_model_facts(real_model):
    assert real_model.model.config.architectures == ["LlamaForCausalLM"]
    assert real_model.tokenizer.vocab_size == 49152
    assert sum(p.numel() for p in real_model.model.parameters()) == 134_515_008
    assert real_model.context_length == 8192


def test_greedy_completion_equals_transformers_generate(real_model, reference):
    ids = real_model.encode(PARIS)
    events = list(real_model.stream([PARIS], [SamplingParams(max_tokens=30, temperature=0)]))
    want = reference(real_model.folder).generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False)
    got = [e.token_id for e in events if e.finish_reason != "eos"]
    assert got == want[0, len(ids):].tolist()[: len(got)]
    assert "Eiffel" in "".join(e.text for e in events) or "Notre" in "".join(e.text for e in events)


def test_cli_completes_with_the_default_model(real_model):
    r = run_cli("complete", PARIS, "-n", "12", "-t", "0", "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["model"] == "smollm2-135m-instruct" and len(rec["tokens"]) >= 1 and rec["completion"].strip()
