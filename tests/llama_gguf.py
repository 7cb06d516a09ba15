"""Random-weight Llama GGUFs in any shape, quantised by llama.cpp's own quantiser (tests and bench/kquant.py).

`write_llama_gguf` writes F16 (or F32) tensors with gguf.GGUFWriter and a real byte-level BPE
vocabulary (the tests' tokenizer, padded with unreachable tokens to the vocabulary size asked for);
`quantize` runs llama-cpp-python's `llama_model_quantize` on it, so the K-quant blocks are exactly
the ones llama.cpp writes for a Q4_K_M, Q5_K_M or Q6_K file.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from tests.conftest import build_tokenizer

FTYPES = {"Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}  # llama.cpp's LLAMA_FTYPE_MOSTLY_*


def write_llama_gguf(path: Path, *, hidden: int, ffn: int, layers: int, heads: int, kv_heads: int, vocab: int | None = None,
                     tied: bool = True, f32: bool = False, seed: int = 0, context: int = 2048, rope_theta: float = 10000.0) -> Path:
    """A Llama GGUF of these shapes with random weights (normal, std 1/sqrt(columns); norms near 1)."""
    from gguf import GGUFWriter

    with tempfile.TemporaryDirectory() as tmp:
        spec = json.loads(build_tokenizer(Path(tmp)).read_text())
    tokens = [t for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])]
    types = [3 if t == "<|endoftext|>" else 1 for t in tokens]  # 3: control
    tokens += ["<|begin|>"]
    types += [3]
    vocab = vocab or len(tokens)
    tokens += [f"<unused{i}>" for i in range(vocab - len(tokens))]  # normal tokens no merge ever makes
    types += [1] * (vocab - len(types))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w = GGUFWriter(str(path), "llama")
    w.add_name("random llama")
    w.add_block_count(layers)
    w.add_context_length(context)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(rope_theta)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(vocab)
    w.add_file_type(0 if f32 else 1)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|begin|>"))
    w.add_eos_token_id(0)
    w.add_add_bos_token(True)
    rng = np.random.default_rng(seed)
    dtype = np.float32 if f32 else np.float16

    def add(name, rows, cols=None, scale=None):
        if cols is None:
            value = 1 + 0.1 * rng.standard_normal(rows, dtype=np.float32)
            w.add_tensor(name, value.astype(np.float32))
            return
        value = rng.standard_normal((rows, cols), dtype=np.float32)
        value *= scale or cols ** -0.5
        w.add_tensor(name, value.astype(dtype))

    kv = kv_heads * hidden // heads
    add("token_embd.weight", vocab, hidden, scale=0.1)  # a tied head: logits of a few units, not one-hot
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", hidden)
        add(f"blk.{i}.ffn_norm.weight", hidden)
        add(f"blk.{i}.attn_q.weight", hidden, hidden)
        add(f"blk.{i}.attn_k.weight", kv, hidden)
        add(f"blk.{i}.attn_v.weight", kv, hidden)
        add(f"blk.{i}.attn_output.weight", hidden, hidden)
        add(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        add(f"blk.{i}.ffn_up.weight", ffn, hidden)
        add(f"blk.{i}.ffn_down.weight", hidden, ffn)
    add("output_norm.weight", hidden)
    if not tied:
        add("output.weight", vocab, hidden, scale=0.5)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantize(source: Path, target: Path, ftype: str, threads: int = 2) -> Path:
    """`source` quantised by llama.cpp (llama-cpp-python's llama_model_quantize) into `ftype`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantise {source} to {ftype}")
    return target
