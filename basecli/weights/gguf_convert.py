"""GGUF -> safetensors + config.json + tokenizer.json for Llama, Qwen2 and GPT-2 GGUFs, without transformers.

transformers' own GGUF loading is slow (most of it building the tokenizer in Python, and importing
itself; figures in bench/README.md); this does the same conversion several times faster:

- weights: dequantised in numpy (gguf_reader), llama.cpp's q/k row permutation undone exactly as
  transformers' LlamaTensorProcessor does (GPT-2's matrices transposed back to its Conv1D layout, as
  its GPT2TensorProcessor does), renamed to the Hugging Face names, and streamed into a
  float32 safetensors file laid out as `safetensors.save_file` lays it out (tensors sorted by
  name), by a few threads each writing its tensors at their offsets;
- config.json: the fields transformers' GGUF config mapping reads for llama, plus the class
  defaults that describe the architecture, so both directories load to the same LlamaConfig;
- tokenizer.json: built with `tokenizers` from tokenizer.ggml.* the way transformers' GGUF
  tokenizer converter builds it (byte-level BPE, control tokens special, user-defined tokens
  added, the split regex of the pre-tokenizer type, BOS/EOS by add_bos/add_eos).

Anything else raises Unsupported and models.py falls back to transformers.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from basecli.weights.gguf_reader import GGUFFile, TensorInfo, dequantize
from basecli.text.tokenizers import byte_alphabet


class Unsupported(Exception):
    """This GGUF needs transformers' converter."""


# The split regex of each tokenizer.ggml.pre type, copied from transformers' GGUF tokenizer
# converter (integrations/gguf/gguf_tokenizer_mapping.py); a test checks they still agree.
# A type not listed there gets ByteLevel's own (GPT-2) regex, in transformers as here.
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
_QWEN35 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "dbrx", "smaug-bpe"], _LLAMA3),
    "tekken": _TEKKEN,
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"], _QWEN2),
    "qwen35": _QWEN35,
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], _GPT4O),
}

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# llama.cpp's gpt2 tensors; GPT-2 stores its matrices (in, out), llama.cpp (out, in)
_GPT2_LAYER_NAMES = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2",
                     "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
_GPT2_TOP_NAMES = {"token_embd": "transformer.wte", "position_embd": "transformer.wpe", "output_norm": "transformer.ln_f",
                   "output": "lm_head"}
_GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# GGUF architecture -> the transformers class its conversion loads
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel"}
# transformers' llama model has no parameter for llama.cpp's precomputed rope frequencies and drops them
_DROPPED = {"rope_freqs.weight"}


def hf_name(gguf_name: str, arch: str = "llama") -> str | None:
    """The Hugging Face parameter name of a llama/qwen2/gpt2 GGUF tensor; None for one transformers drops too."""
    if gguf_name in _DROPPED:
        return None
    layers, top, prefix = (_GPT2_LAYER_NAMES, _GPT2_TOP_NAMES, "transformer.h") if arch == "gpt2" else (_LAYER_NAMES, _TOP_NAMES, "model.layers")
    if m := _BLOCK.fullmatch(gguf_name):
        layer, part, kind = m.groups()
        if part in layers:
            return f"{prefix}.{layer}.{layers[part]}.{kind}"
    else:
        stem, _, kind = gguf_name.rpartition(".")
        if stem in top and kind in ("weight", "bias"):
            return f"{top[stem]}.{kind}"
    raise Unsupported(f"tensor {gguf_name} has no {'gpt2' if arch == 'gpt2' else 'llama'} counterpart")


def check_supported(gguf: GGUFFile) -> None:
    meta = gguf.metadata
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise Unsupported(f"architecture {arch!r}")
    if meta.get("general.name") == "mistral":  # transformers loads this one name as a Mistral model
        raise Unsupported("a GGUF named 'mistral'")
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise Unsupported(f"tokenizer {meta.get('tokenizer.ggml.model')!r} (only byte-level BPE is converted here)")
    for info in gguf.tensors:
        hf_name(info.name, arch)


# --- config.json ---------------------------------------------------------------------------------


def model_config(gguf: GGUFFile) -> dict:
    """config.json as transformers' conversion (models.py's fallback) writes it: the fields its GGUF
    config mapping reads, the class's own fields at their defaults, and the generic PretrainedConfig
    ones, so that the file says what the transformers-converted one says (less transformers_version)."""
    meta = gguf.metadata
    arch = meta["general.architecture"]
    key = lambda name, default=None: meta.get(f"{arch}.{name}", default)  # noqa: E731
    heads = key("attention.head_count")
    names = {t.name for t in gguf.tensors}

    def token_id(name: str, default):
        value = meta.get(f"tokenizer.ggml.{name}")
        return default if value is None else int(value)

    if arch == "gpt2":
        return gpt2_config(gguf, key, token_id, "output.weight" not in names)

    layers = key("block_count")
    shape = {
        "vocab_size": key("vocab_size") or len(meta["tokenizer.ggml.tokens"]),
        "hidden_size": key("embedding_length"),
        "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": key("attention.head_count_kv", heads),
        "hidden_act": "silu",
        "max_position_embeddings": key("context_length"),
        "initializer_range": 0.02,
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon"),
        "use_cache": True,
    }
    # the class defaults where the file names no token: LlamaConfig's 1 and 2, Qwen2Config's None
    defaults = (1, 2) if arch == "llama" else (None, None)
    tokens = {
        "pad_token_id": token_id("padding_token_id", None),
        "bos_token_id": token_id("bos_token_id", defaults[0]),
        "eos_token_id": token_id("eos_token_id", defaults[1]),
    }
    # llama.cpp writes the output projection only when it is not the embedding matrix
    tied = {"tie_word_embeddings": "output.weight" not in names}
    rope = {"rope_parameters": {"rope_theta": float(key("rope.freq_base", 10000.0)), "rope_type": "default"}}
    head = {"architectures": [ARCHITECTURES[arch]], "output_hidden_states": False, "return_dict": True, "dtype": "float32",
            "chunk_size_feed_forward": 0, "is_encoder_decoder": False, "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
            "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "problem_type": None}
    if arch == "llama":
        body = {**shape, **tokens, "pretraining_tp": 1, **tied, **rope, "attention_bias": False, "attention_dropout": 0.0,
                "mlp_bias": False, "head_dim": key("rope.dimension_count") or shape["hidden_size"] // heads}
    else:  # qwen2: no sliding window unless a config says so, which a GGUF cannot
        body = {**shape, **tied, **rope, "use_sliding_window": False, "sliding_window": None, "max_window_layers": 28,
                "layer_types": ["full_attention"] * layers, "attention_dropout": 0.0, **tokens}
    cfg = {**head, **body, "_name_or_path": str(gguf.path.parent), "model_type": arch,
           "_model_name_or_path": meta.get("general.name")}
    if "tokenizer.ggml.unknown_token_id" in meta:
        cfg["unk_token_id"] = int(meta["tokenizer.ggml.unknown_token_id"])
    cfg["output_attentions"] = False
    cfg["torch_dtype"] = "float32"
    missing = [k for k, v in shape.items() if v is None]
    if missing:
        raise Unsupported(f"metadata lacks {', '.join(missing)}")
    return cfg


def gpt2_config(gguf: GGUFFile, key, token_id, tied: bool) -> dict:
    """config.json of a gpt2 GGUF: GPT2Config's fields, the shape and tokens from the file (the rest are GPT-2's own)."""
    shape = {"vocab_size": key("vocab_size") or len(gguf.metadata["tokenizer.ggml.tokens"]), "n_positions": key("context_length"),
             "n_embd": key("embedding_length"), "n_layer": key("block_count"), "n_head": key("attention.head_count"),
             "n_inner": key("feed_forward_length"), "layer_norm_epsilon": key("attention.layer_norm_epsilon", 1e-5)}
    missing = [k for k, v in shape.items() if v is None]
    if missing:
        raise Unsupported(f"metadata lacks {', '.join(missing)}")
    return {"architectures": [ARCHITECTURES["gpt2"]], "model_type": "gpt2", **shape, "activation_function": "gelu_new",
            "bos_token_id": token_id("bos_token_id", 50256), "eos_token_id": token_id("eos_token_id", 50256),
            "tie_word_embeddings": tied, "torch_dtype": "float32", "_model_name_or_path": gguf.metadata.get("general.name")}


# --- tokenizer.json ------------------------------------------------------------------------------

_CONTROL, _USER_DEFINED = 3, 4


def build_tokenizer(meta: dict):
    """(tokenizers.Tokenizer, tokenizer_config dict) from tokenizer.ggml.* metadata."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    spelling = byte_alphabet()
    alphabet = set(spelling.values())

    def spelled(token: str) -> str:
        """A token holding characters outside the byte alphabet is respelled byte by byte, as transformers does."""
        return token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))

    vocab = {spelled(t): i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False))
    split = PRE_TOKENIZER_SPLITS.get(meta.get("tokenizer.ggml.pre"))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()

    # A control token spelled outside the byte alphabet is a llama.cpp mislabel; transformers skips it.
    control = [t for t, kind in zip(tokens, types) if kind == _CONTROL and set(t) <= alphabet]
    special_ids = {}
    for name, field in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                        ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        index = meta.get(f"tokenizer.ggml.{field}")
        if index is not None and 0 <= int(index) < len(tokens):
            special_ids[name] = int(index)
    specials = {name: tokens[i] for name, i in special_ids.items()}
    # transformers builds the tokenizer as a GPT2Tokenizer, whose default unk/bos/eos "<|endoftext|>"
    # becomes special wherever the vocabulary has it. (Where it does not, transformers appends it as a
    # new id past the model's embedding; that token could never be fed to the model, so it is left out.)
    named = [t for t in [*specials.values(), "<|endoftext|>"] if t in vocab]
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in dict.fromkeys(control + named)])
    user = [t for t, kind in zip(tokens, types) if kind == _USER_DEFINED and t in vocab]
    if user:
        tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])

    add_bos, add_eos = bool(meta.get("tokenizer.ggml.add_bos_token", False)), bool(meta.get("tokenizer.ggml.add_eos_token", False))
    bos, eos = specials.get("bos_token"), specials.get("eos_token")
    add_bos, add_eos = add_bos and bos is not None, add_eos and eos is not None
    # the template transformers' TokenizersBackend.update_post_processor writes
    single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
    pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
    ids = [(bos, special_ids["bos_token"])] * add_bos + [(eos, special_ids["eos_token"])] * add_eos
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids)

    config = {"backend": "tokenizers", **specials, "model_max_length": 1000000000000000019884624838656,
              "tokenizer_class": "TokenizersBackend"}
    return tok, config


def write_tokenizer(gguf_path: Path, out: Path) -> None:
    """tokenizer.json of any GGUF with a byte-level BPE vocabulary, whatever its architecture, and a
    config.json naming its start and end tokens (models.tokenizer_for reads them); no weights read."""
    meta = GGUFFile(gguf_path).metadata
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise Unsupported(f"tokenizer {meta.get('tokenizer.ggml.model')!r}")
    tok, _ = build_tokenizer(meta)
    tok.save(str(out / "tokenizer.json"))
    ids = {"bos_token_id": meta.get("tokenizer.ggml.bos_token_id"), "eos_token_id": meta.get("tokenizer.ggml.eos_token_id")}
    (out / "config.json").write_text(json.dumps(ids))


# --- weights -------------------------------------------------------------------------------------


def reverse_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of each head's rotary halves (convert_hf_to_gguf.py permute)."""
    dim = w.shape[0] // heads // 2
    return w.reshape(heads, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def write_safetensors(gguf: GGUFFile, path: Path, cfg: dict, *, threads: int, on_tensor: Callable[[int, int], None]) -> None:
    """float32 safetensors of every tensor, header and order as safetensors.save_file writes them."""
    chosen: dict[str, TensorInfo] = {}
    arch = cfg["model_type"]
    for info in gguf.tensors:
        name = hf_name(info.name, arch)
        if name is not None and not (name == "lm_head.weight" and cfg["tie_word_embeddings"]):
            chosen[name] = info
    transposed = {name for name in chosen if arch == "gpt2" and name.endswith(_GPT2_CONV1D)}
    header: dict = {"__metadata__": {"format": "pt"}}
    at = 0
    for name in sorted(chosen):
        size = int(np.prod(chosen[name].shape)) * 4
        shape = list(chosen[name].shape)[:: -1 if name in transposed else 1]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [at, at + size]}
        at += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors pads the header to 8 bytes
    base = 8 + len(blob)
    heads, kv_heads = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads")
    # llama.cpp permutes q and k rows for llama only (its Qwen2 converter writes them as they are)
    permuted = arch == "llama"

    def one(name: str) -> None:
        info = chosen[name]
        w = dequantize(gguf.raw(info), info.ggml_type, info.shape)
        if permuted and ".self_attn.q_proj." in name:
            w = reverse_permute(w, heads)
        elif permuted and ".self_attn.k_proj." in name:
            w = reverse_permute(w, kv_heads)
        elif name in transposed:
            w = w.T
        data = memoryview(np.ascontiguousarray(w, dtype="<f4")).cast("B")
        offset = base + header[name]["data_offsets"][0]
        while data:  # pwrite may write less than asked
            written = os.pwrite(fd, data, offset)
            data, offset = data[written:], offset + written

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, len(blob).to_bytes(8, "little") + blob)
        os.ftruncate(fd, base + at)
        # biggest first, so no thread is left alone with the embedding at the end
        order = sorted(chosen, key=lambda n: -chosen[n].nbytes)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for done, _ in enumerate(pool.map(one, order), 1):
                on_tensor(done, len(order))
    finally:
        os.close(fd)


# --- the whole conversion ------------------------------------------------------------------------


class Progress:
    """One line rewritten in place on a terminal; a few plain lines otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def line(self, text: str) -> None:
        print(f"basecli: {text}", file=self.stream, flush=True)

    def count(self, label: str, done: int, total: int) -> None:
        if self.tty:
            end = "\n" if done == total else ""
            print(f"\rbasecli: {label} {done}/{total}", end=end, file=self.stream, flush=True)
        elif done == total:
            self.line(f"{label} {done}/{total}")


def convert(gguf_path: Path, out: Path, *, progress: Progress | None = None, threads: int | None = None,
            weights: bool = True) -> dict:
    """Write model.safetensors, config.json, tokenizer.json (+ tokenizer_config.json, chat_template.jinja)
    into `out`; return seconds per stage. Raises Unsupported before writing anything. weights=False leaves
    out model.safetensors (a file whose blocks run in place: weights/gguf_blocks.py)."""
    progress = progress or Progress()
    times = {}
    t = time.perf_counter()
    gguf = GGUFFile(gguf_path)
    check_supported(gguf)
    cfg = model_config(gguf)
    times["read_s"] = time.perf_counter() - t

    t = time.perf_counter()
    progress.line("[1/2] building the tokenizer" if weights else "building the tokenizer")
    tok, tok_config = build_tokenizer(gguf.metadata)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    if template := gguf.metadata.get("tokenizer.chat_template"):
        (out / "chat_template.jinja").write_text(template)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    times["tokenizer_s"] = time.perf_counter() - t
    if not weights:
        return {k: round(v, 2) for k, v in times.items()}

    t = time.perf_counter()
    threads = threads or min(4, os.cpu_count() or 1)
    progress.line(f"[2/2] dequantising {len(gguf.tensors)} tensors to float32 safetensors")
    write_safetensors(gguf, out / "model.safetensors", cfg, threads=threads,
                      on_tensor=lambda done, total: progress.count("tensors", done, total))
    times["tensors_s"] = time.perf_counter() - t
    return {k: round(v, 2) for k, v in times.items()}
