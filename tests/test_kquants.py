"""llama.cpp's K-quants (Q4_K, Q5_K, Q6_K) in basecli's kernels (engine/kquants.c, weights/gguf_blocks.py).

References: gguf's own dequantisers (`gguf.quants.dequantize`), bit for bit; the float64 product of the
dequantised matrix with the int8-rounded activations (the kernels' definition); llama.cpp itself on
the same file (llama-cpp-python). Files are random-weight tiny Llamas (hidden 256, MLP 512, 3 layers:
every row a multiple of 256, so llama.cpp keeps its K types) written as F16 and quantised by llama.cpp's
own `llama_model_quantize`; tests that need it skip where llama-cpp-python is not installed.

Tolerances, measured here (AMD EPYC, AVX2, 2 cores) and set with a margin:
- matmul vs the definition: relative to the sum of |terms|, measured 3.3e-7, set 1e-5 (fp32 sums).
- the portable and avx2 builds: dequantisation, matmul and decode step bit-identical to the native build's (the
  K-quant matmul by its integer sums and one float order; native.c's plain C loops add in the SIMD order,
  lane for lane; tests/test_native_builds.py).
- logits vs llama.cpp on the same file: both round activations to 8 bits per 256 values (llama.cpp's Q8_K;
  basecli with a 4-bit sub-scale per 32 inside it) and sum in other orders: mean KL(llama.cpp || basecli) measured 1.6e-3 on each
  file, set 5e-3; basecli's top token is llama.cpp's or within 0.3 of it in llama.cpp's logits (measured 0.125;
  the logits themselves differ by up to 0.28 of 6).
- accuracy: mean KL from the fp32 dequantised model (the same file, basecli's converter + lean fp32),
  measured 5.4e-4 (Q4_K_M), 5.8e-4 (Q5_K_M), 5.6e-4 (Q6_K) for basecli against llama.cpp's 1.1e-3 to
  1.2e-3: basecli's must be no larger than llama.cpp's.
- the one-call decode step vs the prefill's last position (torch around the same matmuls): within 0.05
  of logits a few units large (int8 rounding flips, as in test_native).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from basecli.engine import native
from basecli.weights import gguf_reader
from tests.conftest import invoke, run_cli, share_kernels

KTYPES = {"Q4_K": (12, native.Q4_K, 144), "Q5_K": (13, native.Q5_K, 176), "Q6_K": (14, native.Q6_K, 210)}
FILES = ("Q4_K_M", "Q5_K_M", "Q6_K")
PROMPT = [400, 5, 17, 99, 250, 3, 42, 77, 123, 321, 8, 64, 200, 11, 399, 150]


def random_blocks(ggml_type: int, n: int, seed: int = 0) -> np.ndarray:
    """n blocks of random bytes (every scale and bit pattern) with finite fp16 d (and dmin)."""
    size = KTYPES[next(k for k, v in KTYPES.items() if v[0] == ggml_type)][2]
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, (n, size), dtype=np.uint8)
    halves = rng.normal(0, 0.01, (n, 2)).astype(np.float16).view(np.uint8)
    if ggml_type == 14:
        b[:, 208:210] = halves[:, :2]
    else:
        b[:, 0:4] = halves
    return b


def gguf_reference(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    return dequantize(np.ascontiguousarray(raw).reshape(-1), GGMLQuantizationType(ggml_type)).reshape(-1)


def rounded(x: np.ndarray) -> np.ndarray:
    """x as the K-quant kernels see it, in float64: per 256 values a scale d = max|x| / (127 * 15), per 32 a
    sub-scale s = ceil(15 max|x_32| / max|x|) in 1..15, each value an int8 times d * s (engine/kquants.c)."""
    b = x.astype(np.float32).reshape(x.shape[0], -1, 8, 32)
    sub = np.abs(b).max(-1, keepdims=True)
    amax = sub.max(-2, keepdims=True)
    d = amax / np.float32(127 * 15)
    ratio = np.divide(sub, amax, out=np.zeros_like(sub), where=amax != 0)
    s = np.where(amax > 0, np.clip(np.ceil(np.float32(15) * ratio), 1, 15), 1).astype(np.float32)
    inv = np.divide(np.float32(1), d * s, out=np.zeros_like(sub), where=d != 0)
    return (np.rint(b * inv).astype(np.float64) * (d * s).astype(np.float64)).reshape(x.shape)


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BASECLI_HOME", str(share_kernels(tmp_path_factory.mktemp("kq-portable") / "home")))
        lib = native.load(native.build(native.flag_sets("portable")))
        assert not lib.basecli_has_avx2()
        return lib


@pytest.fixture(scope="module")
def avx2(tmp_path_factory):
    """The AVX2 build (no VNNI: its tiles take maddubs where this CPU's native build may take dpbusd), or None."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BASECLI_HOME", str(share_kernels(tmp_path_factory.mktemp("kq-avx2") / "home")))
        try:
            return native.load(native.build(native.flag_sets("avx2")))
        except native.NativeUnavailable:  # a compiler without AVX2: the native and portable builds are still compared
            return None


# ---- 1. dequantisation against gguf's reference -----------------------------------------------------------

@pytest.mark.parametrize("name", KTYPES)
def test_dequantisation_is_ggufs_bit_for_bit(name, portable, avx2):
    ggml_type, kind, _ = KTYPES[name]
    blocks = random_blocks(ggml_type, 96)
    want = gguf_reference(blocks, ggml_type)
    ours = gguf_reader.dequantize(blocks.reshape(-1), ggml_type, (96 * 256,))
    assert np.array_equal(ours.view(np.uint32), want.view(np.uint32))
    for lib in (native.library(), portable, *([avx2] if avx2 else [])):
        m = native.QuantizedMatrix.from_blocks(torch.from_numpy(blocks.reshape(-1).copy()), kind, (48, 512), lib)
        assert np.array_equal(m.dequantize().numpy().reshape(-1).view(np.uint32), want.view(np.uint32))
        rows = m.rows(torch.tensor([[5, 0], [47, 5]]))  # the embedding lookup: rows dequantised alone
        assert torch.equal(rows, m.dequantize()[torch.tensor([[5, 0], [47, 5]])])


def test_a_layout_by_hand():
    """Q4_K: d = 1, dmin = 0.5; sub-block 5 has scale (byte 9 low nibble | top bits of byte 1) and min
    (byte 9 high nibble | top bits of byte 5); its values are the high nibbles of qs[64:96]."""
    b = np.zeros(144, dtype=np.uint8)
    b[0:2] = np.array([1.0], dtype=np.float16).view(np.uint8)
    b[2:4] = np.array([0.5], dtype=np.float16).view(np.uint8)
    b[4 + 1] = 0b01_000000  # sc[5] top bits = 1 -> +16
    b[4 + 5] = 0b10_000000  # m[5] top bits = 2 -> +32
    b[4 + 9] = 0x3_2  # sc[5] low 4 bits = 2, m[5] low 4 bits = 3
    b[16 + 64 : 16 + 96] = np.arange(32, dtype=np.uint8) % 16 << 4
    m = native.QuantizedMatrix.from_blocks(torch.from_numpy(b), native.Q4_K, (1, 256))
    values = m.dequantize().numpy()[0]
    assert np.array_equal(values[160:192], 18.0 * (np.arange(32) % 16) - 0.5 * 35)
    assert np.all(values[:160] == 0) and np.all(values[192:] == 0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: no llama.cpp to quantise or compare with")
    from tests.llama_gguf import quantize, write_llama_gguf

    root = tmp_path_factory.mktemp("kquants")
    source = write_llama_gguf(root / "tiny-F16.gguf", hidden=256, ffn=512, layers=3, heads=4, kv_heads=2)
    return {f: quantize(source, root / f"tiny-{f}.gguf", f) for f in FILES}


@pytest.mark.parametrize("ftype", FILES)
def test_llama_cpp_blocks_dequantise_as_ggufs(files, ftype):
    gguf = gguf_reader.GGUFFile(files[ftype])
    seen = set()
    for info in gguf.tensors:
        if info.ggml_type in (12, 13, 14):
            seen.add(info.ggml_type)
            raw = gguf.raw(info)
            ours = gguf_reader.dequantize(raw, info.ggml_type, info.shape)
            assert np.array_equal(ours.reshape(-1).view(np.uint32), gguf_reference(raw, info.ggml_type).view(np.uint32)), info.name
    assert seen == ({14} if ftype == "Q6_K" else {12 if ftype == "Q4_K_M" else 13, 14})  # the mix llama.cpp writes


# ---- 2. the matmul against its definition ---------------------------------------------------------------

@pytest.mark.parametrize("name", KTYPES)
@pytest.mark.parametrize("batch", [1, 3, 4, 9, 24, 70])  # tiles of 8 rows (in pairs, or one), of 4, rows left over, chunks of 64
def test_matmul_is_the_defined_int8_product(name, batch, portable, avx2):
    ggml_type, kind, _ = KTYPES[name]
    rows, cols = 26, 512  # weight rows 4 at a time, and 2 left over
    blocks = torch.from_numpy(random_blocks(ggml_type, rows * cols // 256, seed=batch).reshape(-1).copy())
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    x[0, 256:512] = 0  # a zero activation super-block (scale 0)
    if batch > 1:
        x[1] *= 1000  # a row of large activations: no other row may notice
    outs = []
    for lib in (native.library(), portable, *([avx2] if avx2 else [])):
        m = native.QuantizedMatrix.from_blocks(blocks, kind, (rows, cols), lib)
        w = m.dequantize().numpy().astype(np.float64)
        xr = rounded(x)
        want, scale = xr @ w.T, np.abs(xr) @ np.abs(w).T
        got = m(torch.from_numpy(x)).numpy()
        assert np.all(np.abs(got - want) <= 1e-5 * scale + 1e-30), lib
        for i in range(batch):  # a row alone equals the same row in the batch, to the bit
            assert np.array_equal(m(torch.from_numpy(x[i : i + 1])).numpy()[0], got[i])
        outs.append(got)
    for other in outs[1:]:  # integer sums, the same float steps: the same bits in every build
        assert np.array_equal(outs[0].view(np.uint32), other.view(np.uint32))


def test_stacked_parts_of_different_types_are_one_matmul():
    parts = [native.QuantizedMatrix.from_blocks(torch.from_numpy(random_blocks(t, r, seed=t).reshape(-1).copy()), k, (r, 256))
             for (t, k, _), r in zip(KTYPES.values(), (8, 4, 4))]
    stacked = native.Stacked(parts)
    x = torch.randn(5, 256)
    assert stacked.shape == (16, 256) and stacked.format == "Q4_K+Q5_K+Q6_K"
    assert torch.equal(stacked(x), torch.cat([p(x) for p in parts], dim=-1))
    assert torch.equal(stacked.dequantize(), torch.cat([p.dequantize() for p in parts]))


def test_blocks_of_the_wrong_size_or_width_are_refused():
    with pytest.raises(ValueError, match="needs 144 contiguous bytes"):
        native.QuantizedMatrix.from_blocks(torch.zeros(100, dtype=torch.uint8), native.Q4_K, (1, 256))
    with pytest.raises(native.NativeUnavailable, match="multiple of 256"):
        native.QuantizedMatrix.from_blocks(torch.zeros(144, dtype=torch.uint8), native.Q4_K, (2, 128))
    with pytest.raises(native.NativeUnavailable, match="read from GGUF files"):
        native.QuantizedMatrix(torch.zeros(2, 256), native.Q6_K)


# ---- 3. whole models against llama.cpp and the fp32 dequantised model -------------------------------------

@pytest.fixture(scope="module")
def loaded(files, tmp_path_factory):
    from basecli.weights import gguf_blocks, models

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BASECLI_HOME", str(share_kernels(tmp_path_factory.mktemp("kq-home") / "home")))
        out = {}
        for ftype, path in files.items():
            folder = models.model_dir(models.resolve(str(path)))
            out[ftype] = (gguf_blocks.load(path, folder, threads=2), folder)
        return out


def log_softmax(x) -> torch.Tensor:
    return torch.log_softmax(torch.as_tensor(np.asarray(x), dtype=torch.float64), -1)


def mean_kl(p_logits, q_logits) -> float:
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


@pytest.mark.parametrize("ftype", FILES)
def test_logits_agree_with_llama_cpp_and_are_no_less_accurate(files, loaded, ftype):
    import llama_cpp

    from basecli.engine import forwards

    model, folder = loaded[ftype]
    assert not any(isinstance(t, torch.Tensor) and t.dim() == 2 for t in model.tensors())  # no fp32 matrix anywhere
    llm = llama_cpp.Llama(str(files[ftype]), logits_all=True, n_ctx=64, n_threads=2, verbose=False)
    llm.eval(PROMPT)
    theirs = np.array(llm.scores[: len(PROMPT)])
    with torch.inference_mode():
        ours = model(torch.tensor([PROMPT])).logits[0]
        fp32 = forwards.load(folder, torch.float32, "cpu")(torch.tensor([PROMPT])).logits[0]
    assert mean_kl(theirs, ours) < 5e-3
    # our top token is llama.cpp's, or one it puts within 0.3 of its own (near-ties of a random model; measured 0.125)
    top = ours.numpy().argmax(-1)
    assert np.all(theirs[np.arange(len(top)), top] >= theirs.max(-1) - 0.3)
    assert mean_kl(fp32, ours) <= mean_kl(fp32, theirs)


@pytest.mark.parametrize("ftype", FILES)
def test_the_one_call_decode_step_agrees_with_the_prefill(loaded, ftype):
    model, _ = loaded[ftype]
    with torch.inference_mode():
        full = model(torch.tensor([PROMPT])).logits[0]
        cache = model.new_cache()
        model(torch.tensor([PROMPT[:8]]), past_key_values=cache)
        steps = torch.stack([model(torch.tensor([[t]]), past_key_values=cache).logits[0, -1] for t in PROMPT[8:]])
    assert model.native is not None
    assert float((steps - full[8:]).abs().max()) < 0.05


@pytest.mark.parametrize("ftype", FILES)
def test_the_portable_decode_step_gives_the_same_bits(loaded, portable, ftype):
    model, _ = loaded[ftype]
    other = native.NativeDecoder(model, lib=portable)
    with torch.inference_mode():
        logits = []
        for decoder in (model.native, other):
            cache = model.new_cache()
            model(torch.tensor([PROMPT[:8]]), past_key_values=cache)
            mask = torch.ones(1, 9, dtype=torch.long)
            logits.append(decoder.step(torch.tensor([[PROMPT[8]]]), mask, torch.tensor([[8]]), cache))
    assert torch.equal(logits[0], logits[1])


# ---- 4. through the CLI ---------------------------------------------------------------------------------

def test_complete_runs_a_q4_k_m_file_in_its_own_format(files, tmp_path):
    env = {"BASECLI_HOME": str(tmp_path / "home")}
    r = invoke("info", "-m", str(files["Q4_K_M"]), "--json", env=env)
    assert r.returncode == 0, r.stderr
    runtime = json.loads(r.stdout)["runtime"]
    assert runtime["quantize"] == "gguf"
    assert set(runtime["weights"]["attention"].split(", ")) == {"Q4_K", "Q6_K"}
    assert runtime["weights"]["embeddings"] == "Q6_K"
    file_bytes = Path(files["Q4_K_M"]).stat().st_size
    assert runtime["memory_bytes"] < file_bytes  # the blocks, not an fp32 copy (4x bigger and more)
    r = invoke("complete", "-m", str(files["Q4_K_M"]), "Hello", "--max-tokens", "5", "--temperature", "0", env=env)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    assert not list((tmp_path / "home").rglob("*.safetensors"))  # no float32 copy, not even on disk
    # --quantize still asks for basecli's own formats instead
    r = invoke("info", "-m", str(files["Q4_K_M"]), "--json", "--quantize", "q8", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["runtime"]["quantize"] == "q8", r.stderr


def test_quantize_gguf_asks_for_the_files_blocks_and_says_when_it_cannot(files, tmp_path):
    env = {"BASECLI_HOME": str(tmp_path / "home")}
    r = invoke("info", "-m", str(files["Q6_K"]), "--json", "--quantize", "gguf", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["runtime"]["weights"]["attention"] == "Q6_K", r.stderr
    for args, says in ((["-m", str(Path(files["Q6_K"]).with_name("tiny-F16.gguf"))], "is not one: use q4 or q8"),
                       (["-m", str(files["Q6_K"]), "--dtype", "bfloat16"], "float32 activations")):
        r = invoke("complete", *args, "--quantize", "gguf", "hi", env=env)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not list((tmp_path / "home").rglob("*.safetensors"))  # refused before any conversion, or never needed


def test_without_a_compiler_the_file_runs_dequantised_with_a_note(files, tmp_path):
    env = {"BASECLI_HOME": str(tmp_path / "home"), "CC": str(tmp_path / "no-such-compiler")}
    r = run_cli("info", "-m", str(files["Q4_K_M"]), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert "no C compiler" in r.stderr and "Traceback" not in r.stderr
    runtime = json.loads(r.stdout)["runtime"]
    assert runtime["quantize"] is None and runtime["weights"]["attention"] in ("float32", "bfloat16")


def test_files_without_k_quants_keep_their_path(files, tmp_path):
    from basecli.weights import gguf_blocks

    assert gguf_blocks.runs_in_place(files["Q4_K_M"])
    assert not gguf_blocks.runs_in_place(Path(files["Q4_K_M"]).with_name("tiny-F16.gguf"))


@pytest.mark.slow
def test_the_embedded_files_own_blocks_are_what_q4_makes_of_them(real_model):
    """--quantize gguf reads the embedded Q4_1/Q8_0 blocks where they lie; --quantize q4 re-makes the same blocks
    from the dequantised weights: the same matrices, so the same logits to the bit, in a prefill and a decode step."""
    from basecli.backends.local import LocalBackend

    ids = torch.tensor([real_model.encode("The capital of France is")])
    logits = []
    for mode in ("gguf", "q4"):
        model = LocalBackend(None, quantize=mode).model
        with torch.inference_mode():
            cache = model.new_cache()
            prefill = model(ids, past_key_values=cache).logits[0]
            step = model(torch.tensor([[11]]), past_key_values=cache).logits[0]
        logits.append((prefill, step))
    assert torch.equal(logits[0][0], logits[1][0]) and torch.equal(logits[0][1], logits[1][1])
