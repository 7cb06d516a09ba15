"""GPT-2 on the lean engine (engine/gpt2.py) against transformers' GPT2LMHeadModel: logits and greedy tokens
on the tiny random model and on random weights in GPT-2 124M's exact shapes, batch rows against single rows,
shared-prefix resample against separate runs, q8/q4 weights within stated bounds, a gpt2 GGUF's
conversion, and a clean stderr."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from basecli.backends.local import LocalBackend
from basecli.config import SamplingParams
from basecli.engine import forwards, lean
from basecli.engine.gpt2 import LeanGPT2
from tests.conftest import run_cli, stream_rows

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["The quick brown fox", "Hello world! 안녕", "def add(a, b):\n"]


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    """The tiny GPT-2 on transformers' model code and on basecli's lean forward."""
    d = tiny_dirs["gpt2"]
    plain = LocalBackend(str(d), device="cpu", dtype="float32", engine="transformers")
    fast = LocalBackend(str(d), device="cpu", dtype="float32")
    assert isinstance(fast.model, LeanGPT2) and fast.engine == "lean"
    return plain, fast


def ids_of(events):
    return [[e.token_id for e in row] for row in events]


def reference_greedy(model, ids: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """n greedy tokens and the logits they were chosen from, by full forward passes without a cache."""
    ids, logits = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            last = model(torch.tensor([ids])).logits[0, -1]
            logits.append(last)
            ids.append(int(last.argmax()))
    return ids[-n:], torch.stack(logits)


def lean_greedy(model, ids: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """The same with the lean engine's KV cache: one prefill, then one token per step."""
    cache, logits, out = model.new_cache(), [], []
    x = torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(n):
            last = model(x, past_key_values=cache).logits[0, -1]
            logits.append(last)
            out.append(int(last.argmax()))
            x = torch.tensor([[out[-1]]])
    return out, torch.stack(logits)


def test_tiny_logits_equal_transformers(pair):
    plain, fast = pair
    ids = torch.tensor([plain.encode(PROMPTS[0] + " " + PROMPTS[2])])
    with torch.no_grad():
        torch.testing.assert_close(fast.model(ids).logits, plain.model(ids).logits, atol=1e-5, rtol=1e-5)


def test_tiny_greedy_through_the_loop_equals_transformers(pair):
    plain, fast = pair
    for prompt in PROMPTS:
        ids = plain.encode(prompt)
        want, _ = reference_greedy(plain.model, ids, 20)
        got = ids_of(stream_rows(fast, [prompt], [SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)]))[0]
        assert got == want


def test_batch_rows_equal_single_rows(pair):
    """Left-padded rows of different lengths, rows leaving mid-way: each row as it is alone."""
    _, fast = pair
    params = [SamplingParams(max_tokens=n, temperature=t, seed=s, ignore_eos=True) for n, t, s in [(6, 0, None), (15, 1.0, 3), (10, 0.7, 4)]]
    batch = stream_rows(fast, PROMPTS, params, alternatives=2)
    for i, p in enumerate(params):
        single = stream_rows(fast, [PROMPTS[i]], [p], alternatives=2)[0]
        assert [e.token_id for e in batch[i]] == [e.token_id for e in single]
        assert [e.logprob for e in batch[i]] == pytest.approx([e.logprob for e in single], abs=1e-5)


def test_shared_prefix_resample_equals_separate_runs(pair):
    _, fast = pair
    params = [SamplingParams(max_tokens=n, temperature=1.0, seed=s, ignore_eos=True) for s, n in [(1, 25), (2, 7), (3, 16)]]
    shared = stream_rows(fast, [PROMPTS[2]] * 3, params)
    single = [stream_rows(fast, [PROMPTS[2]], [p])[0] for p in params]
    assert ids_of(shared) == ids_of(single)
    assert len({tuple(r) for r in ids_of(shared)}) > 1
    for a, b in zip(shared, single):
        assert [e.logprob for e in a] == pytest.approx([e.logprob for e in b], abs=1e-5)


def test_score_equals_transformers(pair):
    plain, fast = pair
    text = "The quick brown fox jumps over the lazy dog."
    a, b = plain.score(text, alternatives=2), fast.score(text, alternatives=2)
    assert [t.logprob for t in b] == pytest.approx([t.logprob for t in a], abs=1e-5)
    assert [t.rank for t in b] == [t.rank for t in a]


@pytest.fixture(scope="module")
def gpt2_124m(tmp_path_factory):
    """Random weights in GPT-2 124M's exact shapes (vocabulary 50257, 1024 positions, 12 x 768), saved as a model
    directory, and transformers' model of it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    path = tmp_path_factory.mktemp("gpt2-124m")
    model.save_pretrained(str(path), safe_serialization=True)
    return path, model


def test_124m_shapes_logits_and_greedy_equal_transformers(gpt2_124m):
    path, ref = gpt2_124m
    model = forwards.load(path, torch.float32, "cpu")
    assert [p.numel() for _, p in model.named_parameters()] == [p.numel() for _, p in ref.named_parameters()]
    ids = torch.randint(0, 50257, (12,), generator=torch.Generator().manual_seed(1)).tolist()
    want_ids, want = reference_greedy(ref, ids, 4)
    got_ids, got = lean_greedy(model, ids, 4)
    assert got_ids == want_ids
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


# q8 and q4 (engine/native.py): the same model with its matrices in Q8_0 / Q4_1 blocks (the head in Q8_0).
# Bounds on the 124M-shaped model against transformers' fp32: the mean KL of the next-token distributions (nats)
# and the mean logit error relative to the logits' spread. Measured: q8 6e-5 and 0.016, q4 7e-3 and 0.17
# (random weights spread the logits thinly, std 0.56, so these are larger than on a trained model).
QUANT_BOUNDS = {"q8": (3e-4, 0.05), "q4": (3e-2, 0.4)}


@pytest.mark.parametrize("mode", ["q8", "q4"])
def test_124m_shapes_quantised_within_bounds(gpt2_124m, mode):
    from basecli.engine import native
    from basecli.engine.quant import apply

    path, ref = gpt2_124m
    model = forwards.load(path, torch.float32, "cpu", populate=False, convert=native.converter(mode))
    apply(model, mode)
    assert {getattr(layer, f).format for layer in model.layers for f in model.MATRICES} == {native.FORMAT_NAMES[native.LAYER_TYPE[mode]]}
    ids = torch.randint(0, 50257, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        got = model(ids).logits
        want = ref(ids).logits
    kl = torch.nn.functional.kl_div(got.log_softmax(-1), want.log_softmax(-1), log_target=True, reduction="none").sum(-1).mean()
    err = (got - want).abs().mean() / want.std()
    assert kl < QUANT_BOUNDS[mode][0] and err < QUANT_BOUNDS[mode][1], (mode, kl, err)


@pytest.mark.parametrize("mode", ["q4", "q8"])
@pytest.mark.parametrize("case", ["batch1", "padded", "shared"])
def test_native_decode_step_equals_the_torch_forward_on_the_same_blocks(tiny_dirs, pair, mode, case):
    """The one-call C step (learned positions, LayerNorm, biases, GELU) against torch's forward over the same
    blocks, every log-prob of every step, under test_native's tolerance for int8 activations."""
    from tests.test_native import assert_close_steps, stepwise

    model = LocalBackend(str(tiny_dirs["gpt2"]), device="cpu", dtype="float32", quantize=mode).model
    assert model.native is not None
    ids = [pair[0].encode(p) for p in PROMPTS]
    prompts, kw = {"batch1": ([ids[0]], {}), "padded": (ids, {"drops": {5: [0, 2]}}),
                   "shared": ([ids[2]] * 3, {"shared": True, "drops": {4: [0, 2]}})}[case]
    forced = torch.randint(0, model.head.shape[0], (len(prompts), 12), generator=torch.Generator().manual_seed(8))
    assert_close_steps(stepwise(model, prompts, forced, **kw))


def test_124m_shapes_native_decode_step_equals_the_torch_forward(gpt2_124m):
    from basecli.engine import native
    from basecli.engine.quant import apply
    from tests.test_native import STEP_TOL, stepwise

    path, _ = gpt2_124m
    model = forwards.load(path, torch.float32, "cpu", populate=False, convert=native.converter("q8"))
    apply(model, "q8")
    prompts = [[464, 2068, 7586, 21831, 18045], [15496, 995]]
    forced = torch.randint(0, 50257, (2, 4), generator=torch.Generator().manual_seed(3))
    worst = torch.stack([d.abs().max() for _, _, d in stepwise(model, prompts, forced)])
    # 12 layers of 768-3072 int8 activations: an fp32 ulp between C's and torch's LayerNorm moves one level in
    # about a third of the steps (measured 0.009-0.034 there; the other steps agree to 2e-6)
    assert float(worst.max()) < STEP_TOL and float((worst < 1e-4).float().mean()) >= 0.5, worst


def test_quantised_tiny_runs_the_loop_and_keeps_the_argmax(tiny_dirs, pair):
    plain, _ = pair
    q8 = LocalBackend(str(tiny_dirs["gpt2"]), device="cpu", dtype="float32", quantize="q8")
    assert isinstance(q8.model, LeanGPT2) and q8.model.layers[0].qkv.format == "Q8_0"
    ids = plain.encode(PROMPTS[0])
    want, _ = reference_greedy(plain.model, ids, 8)
    got = ids_of(stream_rows(q8, [PROMPTS[0]], [SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)]))[0]
    assert got == want  # the tiny model's head is scaled x8: its argmax is far ahead of the runner-up


def test_info_describes_the_lean_gpt2_as_transformers_config_does(tiny_dirs, monkeypatch):
    from tests.conftest import invoke

    def architecture():
        r = invoke("info", "-m", str(tiny_dirs["gpt2"]), "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        return out["code"]["class"], out["architecture"]

    lean_class, ours = architecture()
    monkeypatch.setenv("BASECLI_ENGINE", "transformers")
    plain_class, theirs = architecture()
    assert lean_class.endswith("LeanGPT2") and plain_class.endswith("GPT2LMHeadModel")
    assert ours == theirs and ours["layers"] == 2 and ours["hidden_size"] == 32


def test_complete_prints_nothing_on_stderr(tiny_dirs):
    r = run_cli("complete", "-m", str(tiny_dirs["gpt2"]), "hi", "-n", "3")
    assert r.returncode == 0 and r.stderr == ""


@pytest.mark.parametrize("name, shape", [("distilgpt2", dict(n_layer=6)), ("gpt2", {}),
                                         ("gpt2-medium", dict(n_embd=1024, n_layer=24, n_head=16)),
                                         ("gpt2-large", dict(n_embd=1280, n_layer=36, n_head=20)),
                                         ("gpt2-xl", dict(n_embd=1600, n_layer=48, n_head=25))])
def test_every_released_gpt2_config_runs_on_the_lean_engine(name, shape):
    from transformers import GPT2Config

    from basecli.engine import gpt2

    cfg = GPT2Config(**shape).to_dict()
    assert forwards.forward_for(cfg) is gpt2.LeanGPT2
    assert cfg["n_embd"] // cfg["n_head"] == 64 and cfg["n_embd"] % 32 == 0  # the native kernels' block of 32 fits


def test_hub_checkpoint_names_without_the_transformer_prefix(tiny_dirs, tmp_path, reference):
    """openai-community/gpt2's own file names its tensors h.0.attn.c_attn.weight, wte.weight, ... and keeps the
    attention mask buffers (h.N.attn.bias); both layouts load to the same model."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = tiny_dirs["gpt2"]
    shutil.copytree(src, tmp_path / "m")
    state = {k.removeprefix("transformer."): v for k, v in load_file(str(src / "model.safetensors")).items()}
    state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 8, 8))
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    model = forwards.load(tmp_path / "m", torch.float32, "cpu")
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(src)(ids).logits, atol=1e-5, rtol=1e-5)


def test_unsupported_gpt2_variants_fall_back():
    from basecli.engine import gpt2

    with pytest.raises(lean.Unsupported, match="activation"):
        gpt2.check_supported({"model_type": "gpt2", "activation_function": "relu"})
    with pytest.raises(lean.Unsupported, match="attention scaling"):
        gpt2.check_supported({"model_type": "gpt2", "scale_attn_by_inverse_layer_idx": True})


# --- a gpt2 GGUF, in llama.cpp's tensor names and layout ---


def write_gpt2_gguf(hf_dir, path):
    """The tiny GPT-2 as llama.cpp's convert_hf_to_gguf writes it: (out, in) matrices, F32 and F16 tensors."""
    from gguf import GGUFWriter
    from safetensors.numpy import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    spec = json.loads((hf_dir / "tokenizer.json").read_text())
    tokens = [t for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w = GGUFWriter(str(path), "gpt2")
    w.add_name("tiny gpt2")
    w.add_block_count(cfg["n_layer"])
    w.add_context_length(cfg["n_positions"])
    w.add_embedding_length(cfg["n_embd"])
    w.add_feed_forward_length(4 * cfg["n_embd"])
    w.add_head_count(cfg["n_head"])
    w.add_layer_norm_eps(cfg["layer_norm_epsilon"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t == "<|endoftext|>" else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    state = load_file(str(hf_dir / "model.safetensors"))
    top = {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
           "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias"}
    for name, value in state.items():
        if name in top:
            w.add_tensor(top[name], value)
            continue
        _, _, layer, rest = name.split(".", 3)
        stem, kind = rest.rsplit(".", 1)
        if stem.endswith((".c_attn", ".c_proj", ".c_fc")) and kind == "weight":
            value = np.ascontiguousarray(value.T).astype(np.float16)  # Conv1D (in, out) -> (out, in); F16 as files ship
        w.add_tensor(f"blk.{layer}.{names[stem]}.{kind}", value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gpt2_gguf_converts_and_runs_on_the_lean_engine(tiny_dirs, tmp_path, reference):
    """Our conversion loads in transformers as the GPT-2 it was made from (to F16 rounding), and our forward on it
    equals transformers' on it. (transformers' own GGUF loading cannot be the reference: it ignores
    gpt2.context_length and builds 1024 positions, so it refuses this 128-position model.)"""
    import io

    from transformers import GPT2LMHeadModel

    from basecli.weights import gguf_convert

    (tmp_path / "src").mkdir()
    gguf = write_gpt2_gguf(tiny_dirs["gpt2"], tmp_path / "src" / "tiny-gpt2.gguf")
    out = tmp_path / "converted"
    out.mkdir()
    gguf_convert.convert(gguf, out, progress=gguf_convert.Progress(io.StringIO()))
    ours = forwards.load(out, torch.float32, "cpu")
    assert isinstance(ours, LeanGPT2)
    theirs = GPT2LMHeadModel.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 99, 3, 250, 42, 7]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(ids).logits, reference(tiny_dirs["gpt2"])(ids).logits, atol=2e-2, rtol=1e-2)
    # and through the CLI, from the .gguf path, on the lean engine, quietly
    r = run_cli("complete", "-m", str(gguf), "hi", "-n", "3", "--json")
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr.lower()
