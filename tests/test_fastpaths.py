"""Every fast path against the plain one: the lean Llama engine against transformers' model code,
and the shared prefill of identical rows against separate single-row runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from basecli.backends.local import LocalBackend
from basecli.config import SamplingParams
from basecli.engine import attention, forwards, lean, mapped_weights
from conftest import stream_rows

PROMPTS = ["The quick brown fox", "Hello world! 안녕", "def add(a, b):\n"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    """The tiny Llama twice: transformers' LlamaForCausalLM and basecli's lean forward."""
    d = tiny_dirs["llama"]
    plain = LocalBackend(str(d), device="cpu", dtype="float32", engine="transformers")
    fast = LocalBackend(str(d), device="cpu", dtype="float32", engine="lean")
    assert type(fast.model).__name__ == "LeanLlama" and fast.engine == "lean"
    return plain, fast


def tokens(backend, prompts, params, **kw):
    return [[e.token_id for e in row] for row in stream_rows(backend, prompts, params, **kw)]


def test_lean_logits_equal_transformers(pair):
    plain, fast = pair
    ids = torch.tensor([plain.encode(PROMPTS[0] + " " + PROMPTS[2])])
    with torch.no_grad():
        want = plain.model(ids).logits
        got = fast.model(ids).logits
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_lean_greedy_equals_transformers_generate(pair):
    plain, fast = pair
    for prompt in PROMPTS:
        ids = plain.encode(prompt)
        want = plain.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
        got = tokens(fast, [prompt], [SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)])[0]
        assert got == want[0, len(ids):].tolist()


def test_lean_left_padded_batch_with_rows_leaving_equals_plain(pair):
    plain, fast = pair
    # different lengths pad differently; different max_tokens make rows leave the batch mid-way
    params = [SamplingParams(max_tokens=n, temperature=t, seed=s, top_k=k, ignore_eos=True)
              for n, t, s, k in [(6, 0, None, 0), (20, 1.0, 3, 0), (12, 0.7, 4, 20)]]
    assert tokens(fast, PROMPTS, params, alternatives=2) == tokens(plain, PROMPTS, params, alternatives=2)


def test_lean_logprobs_and_alternatives_match_plain(pair):
    plain, fast = pair
    p = [SamplingParams(max_tokens=8, temperature=1.0, seed=11, ignore_eos=True)]
    a = list(plain.stream(PROMPTS[1:2], p, alternatives=3))
    b = list(fast.stream(PROMPTS[1:2], p, alternatives=3))
    assert [e.token_id for e in a] == [e.token_id for e in b]
    for x, y in zip(a, b):
        assert y.logprob == pytest.approx(x.logprob, abs=1e-4)
        assert [i for i, _ in y.alternatives] == [i for i, _ in x.alternatives]


def test_lean_cache_growth_keeps_results(pair, monkeypatch):
    """A cache that starts tiny must grow (copying what it holds) without changing a token."""
    plain, fast = pair
    monkeypatch.setattr(fast.model, "new_cache", lambda: attention.KVCache(fast.model.n_layers, fast.model.n_kv,
                                                                      fast.model.head_dim, torch.float32, "cpu", capacity=2))
    p = [SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)] * 2
    assert tokens(fast, PROMPTS[:2], p) == tokens(plain, PROMPTS[:2], p)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("engine", ["transformers", "lean"])
def test_shared_prefill_equals_single_rows(tiny_dirs, kind, engine):
    """N samples of one prompt share one prefill; each must equal the same seed run on its own."""
    b = LocalBackend(str(tiny_dirs[kind]), device="cpu", dtype="float32", engine=engine)
    params = [SamplingParams(max_tokens=10, temperature=1.0, seed=s, ignore_eos=True) for s in (1, 2, 3)]
    batch = tokens(b, [PROMPTS[0]] * 3, params)
    singles = [tokens(b, [PROMPTS[0]], [p])[0] for p in params]
    assert batch == singles
    assert len({tuple(r) for r in batch}) > 1


def test_shared_prompt_attention_equals_unshared(pair, monkeypatch):
    """The prompt's keys kept once for all rows (two-part attention) gives the logprobs of a per-row copy,
    through cache growth from a tiny capacity and rows leaving the batch."""
    plain, fast = pair
    monkeypatch.setattr(fast.model, "new_cache", lambda: attention.KVCache(fast.model.n_layers, fast.model.n_kv,
                                                                      fast.model.head_dim, torch.float32, "cpu", capacity=2))
    params = [SamplingParams(max_tokens=n, temperature=1.0, seed=s, ignore_eos=True) for s, n in [(1, 30), (2, 7), (3, 19)]]
    shared = list(fast.stream([PROMPTS[2]] * 3, params))
    assert fast.model.new_cache().shared == 0
    single = [e for i, p in enumerate(params) for e in fast.stream([PROMPTS[2]], [p]) if not setattr(e, "row", i)]
    key = lambda e: (e.row, e.step)  # noqa: E731
    shared, single = sorted(shared, key=key), sorted(single, key=key)
    assert [(e.row, e.token_id) for e in shared] == [(e.row, e.token_id) for e in single]
    assert [e.logprob for e in shared] == pytest.approx([e.logprob for e in single], abs=1e-5)


def test_shared_prefix_cache_is_kept_once(pair):
    _, fast = pair
    cache = fast.model.new_cache()
    ids = torch.tensor([fast.encode(PROMPTS[0])])
    with torch.inference_mode():
        fast.model(ids, past_key_values=cache)
    cache.batch_repeat_interleave(4)
    assert cache.shared == ids.shape[1] and cache.prefix_k.shape[1] == 1 and cache.k is None


def test_lean_refuses_other_architectures(tiny_dirs, tmp_path, capsys):
    import shutil

    d = tmp_path / "mlp-bias"  # a Llama with MLP biases: transformers' code runs it, the lean engine does not
    shutil.copytree(tiny_dirs["llama"], d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "mlp_bias": True}))
    with pytest.raises(lean.Unsupported, match="MLP biases"):
        forwards.load(d, torch.float32, "cpu")
    assert LocalBackend(str(d), device="cpu", dtype="float32", engine="lean").engine == "transformers"
    assert "lean engine does not run this model (MLP biases)" in capsys.readouterr().err
    with pytest.raises(lean.Unsupported, match="rope scaling"):
        lean.check_supported({"model_type": "llama", "rope_scaling": {"rope_type": "yarn"}})


def test_complete_on_the_default_engine_never_imports_transformers(tiny_dirs):
    """The whole `complete` path on a Llama (resolve, tokenizer, load, generate, print) without
    transformers or huggingface_hub: importing them costs about a second of start-up."""
    probe = (
        "import sys; from basecli.cli import main\n"
        f"sys.argv = ['basecli', 'complete', 'The quick', '-m', {str(tiny_dirs['llama'])!r}, '-n', '3', '-t', '0', '--ignore-eos']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('transformers', 'huggingface_hub') if m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() and out.stderr.strip().splitlines()[-1] == "[]", out.stderr[-500:]


def test_weights_are_the_files_tensors(tiny_dirs):
    """Mapped in place, fused by copying, converted: each equals what safetensors itself reads."""
    from safetensors.torch import load_file

    path = tiny_dirs["llama"] / "model.safetensors"
    want = load_file(str(path))
    w = mapped_weights.Weights([path])
    a = "model.layers.1.self_attn."
    qkv = (a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight")
    assert torch.equal(w.read(qkv, torch.float32), torch.cat([want[n] for n in qkv]))
    assert torch.equal(w.read(("model.norm.weight",), torch.float32), want["model.norm.weight"])
    assert torch.equal(w.read(("lm_head.weight",), torch.bfloat16), want["lm_head.weight"].to(torch.bfloat16))
    # the pages of q, k and v were released after the copy: the file's values are still what a view reads
    assert torch.equal(w.view(a + "q_proj.weight"), want[a + "q_proj.weight"])
    # a weight used in place is copy-on-write: writing to it neither fails nor reaches the file
    w.read(("model.norm.weight",), torch.float32).add_(1.0)
    assert torch.equal(load_file(str(path))["model.norm.weight"], want["model.norm.weight"])


LOGPROB_TOLERANCE = 1e-4  # fp32, lean engine against transformers' model code; measured: 7e-6 (stream), 0 (score)


@pytest.mark.slow
def test_lean_equals_transformers_on_the_embedded_model(real_model, reference):
    """The default engine on SmolLM2 against transformers' LlamaForCausalLM on the same weights (fp32):
    sampled tokens' logprobs, teacher-forced scores, and left-padded batch rows against single rows.
    (Greedy tokens against `generate`: test_real_model.py.)"""
    from basecli.engine.score import start_ids

    assert real_model.engine == "lean"
    ref = reference(real_model.folder)
    prompt = "Here's my top-10 list of the top landmarks to see in Paris:"
    events = list(real_model.stream([prompt], [SamplingParams(max_tokens=12, temperature=1.0, seed=5, ignore_eos=True)]))
    n = len(real_model.encode(prompt))
    ids = real_model.encode(prompt) + [e.token_id for e in events]
    with torch.no_grad():
        logp = ref(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    assert [e.logprob for e in events] == pytest.approx([logp[n - 1 + i, e.token_id].item() for i, e in enumerate(events)],
                                                       abs=LOGPROB_TOLERANCE)

    text = "Four score and seven years ago our fathers brought forth on this continent, a new nation."
    start, tids = start_ids(real_model.tokenizer, None), real_model.tokenizer.encode(text)
    with torch.no_grad():
        logp = ref(torch.tensor([start + tids])).logits[0].float().log_softmax(-1)
    want = [logp[len(start) - 1 + i, t].item() for i, t in enumerate(tids)]
    assert [t.logprob for t in real_model.score(text)] == pytest.approx(want, abs=LOGPROB_TOLERANCE)

    prompts = ["The capital of France is", "def fib(n):", "Once upon a time, in a small village by the sea, there lived"]
    greedy = [SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)] * 3
    assert tokens(real_model, prompts, greedy) == [tokens(real_model, [p], greedy[:1])[0] for p in prompts]


def test_unknown_engine_is_a_usage_error(tiny_dirs):
    from basecli.errors import UsageError

    with pytest.raises(UsageError, match="unknown engine"):
        LocalBackend(str(tiny_dirs["llama"]), device="cpu", dtype="float32", engine="fast")


def test_default_engine_is_lean_for_a_llama_and_the_env_gives_transformers_back(tiny_dirs, monkeypatch):
    monkeypatch.delenv("BASECLI_ENGINE", raising=False)
    b = LocalBackend(str(tiny_dirs["llama"]), device="cpu", dtype="float32")
    assert b.engine == "lean" and type(b.model).__name__ == "LeanLlama"
    monkeypatch.setenv("BASECLI_ENGINE", "transformers")
    b = LocalBackend(str(tiny_dirs["llama"]), device="cpu", dtype="float32")
    assert b.engine == "transformers" and type(b.model).__name__ == "LlamaForCausalLM"
