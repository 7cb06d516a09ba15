"""basecli's own GGUF converter against transformers' GGUF loading, the reference it replaces.

Tiny Llama GGUFs are written here with gguf.GGUFWriter (F32, F16, Q8_0, Q4_0 and Q4_1 tensors,
a small byte-level BPE vocabulary with merges, control and user-defined tokens); each is
converted by basecli and read by transformers (from_pretrained(gguf_file=...)), and the
weights, config and token ids must agree. One test does the same on the real embedded model.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from basecli.weights import gguf_convert
from basecli.weights import models
from basecli.text.tokenizers import HFTokenizer
from conftest import CORPUS, build_tokenizer

TEXTS = [
    "Hello world", "The quick brown fox jumps over the lazy dog.", "  two  spaces\n\n\ttab\t\t end   ",
    "English: teacher\nKorean: 선생님\nEnglish: cat\nKorean: 고양이\n", "안녕하세요 세계 😀🎉👍🏽 emoji",
    "def add(a, b):\n    return a + b  # sum\n", "x = [i**2 for i in range(10)]; print(f'{x!r}')",
    "ünïcödé ÅÄÖ ñ ß ﬁ", "12345 1,000,000 3.14159", "", " ", "\n", "    ", "I'm sure they'll say we've done it",
    "<|im_start|>user\nhi<|im_end|>", "<think>plan</think>", "<|endoftext|>", "Mixed\r\nline\rendings",
    *CORPUS,
]


def write_tiny_gguf(path: Path, *, tied: bool, pre: str, add_bos: bool, endoftext: bool, arch: str = "llama",
                    layer_type=None) -> Path:
    """A 2-layer Llama (or Qwen2: with q/k/v biases) GGUF with random weights in F32, F16, BF16, Q8_0,
    Q4_0, Q4_1 and Q5_0 (or every layer matrix in `layer_type`, as llama.cpp's pure quantisations), and a
    real BPE vocabulary."""
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFWriter
    from gguf.quants import quantize

    bpe = path.parent / "bpe"  # not next to the GGUF: transformers would read a tokenizer.json there
    bpe.mkdir(parents=True)
    spec = json.loads(build_tokenizer(bpe).read_text())
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab] + ["<|im_start|>", "<|im_end|>", "<think>"]
    types = [3 if t == "<|endoftext|>" else 1 for t, _ in vocab] + [3, 3, 4]  # 3 control, 4 user-defined
    if not endoftext:  # as in Llama 3, whose vocabulary has no <|endoftext|>
        tokens[0] = "<s>"
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    vocab_size, hidden, ffn, layers, heads, kv_heads = len(tokens), 64, 128, 2, 4, 2
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny test")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab_size - 3)
    w.add_eos_token_id(vocab_size - 2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(vocab_size - 2)
    w.add_add_bos_token(add_bos)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    rng = np.random.default_rng(0)

    def add(name, rows, cols=None, qtype=None, scale=0.2):
        if layer_type is not None and name.startswith("blk.") and cols is not None:
            qtype = layer_type
        value = (1 + 0.1 * rng.standard_normal(rows) if cols is None else rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        if qtype == T.F16:
            w.add_tensor(name, value.astype(np.float16))
        elif qtype is not None:
            w.add_tensor(name, quantize(value, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, value)

    add("token_embd.weight", vocab_size, hidden, T.Q8_0, scale=1.0)
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", hidden)
        add(f"blk.{i}.ffn_norm.weight", hidden)
        add(f"blk.{i}.attn_q.weight", hidden, hidden, T.Q4_1)
        add(f"blk.{i}.attn_k.weight", kv_heads * hidden // heads, hidden, T.Q8_0)
        add(f"blk.{i}.attn_v.weight", kv_heads * hidden // heads, hidden, T.Q4_0)
        if arch == "qwen2":
            for part, rows in (("q", hidden), ("k", kv_heads * hidden // heads), ("v", kv_heads * hidden // heads)):
                add(f"blk.{i}.attn_{part}.bias", rows)
        add(f"blk.{i}.attn_output.weight", hidden, hidden, T.F16)
        add(f"blk.{i}.ffn_gate.weight", ffn, hidden, T.Q4_1)
        add(f"blk.{i}.ffn_up.weight", ffn, hidden, [T.Q5_0, T.BF16][i])  # Q5_0: dequantised by gguf.quants
        add(f"blk.{i}.ffn_down.weight", hidden, ffn, T.Q4_1)
    add("output_norm.weight", hidden)
    if not tied:
        add("output.weight", vocab_size, hidden, T.Q8_0, scale=1.0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# like SmolLM2 (tied, no BOS, GPT-2 split), like Llama 3 (untied, BOS added, llama-bpe split), like Qwen2.5
VARIANTS = {
    "smollm-like": dict(tied=True, pre="smollm", add_bos=False, endoftext=True),
    "llama3-like": dict(tied=False, pre="llama-bpe", add_bos=True, endoftext=False),
    "qwen2-like": dict(tied=True, pre="qwen2", add_bos=False, endoftext=True, arch="qwen2"),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{variant: (gguf path, basecli's directory, transformers model, transformers tokenizer)}."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = {}
    for name, kw in VARIANTS.items():
        root = tmp_path_factory.mktemp(name)
        gguf = write_tiny_gguf(root / "gguf" / "tiny.gguf", **kw)
        ours = root / "basecli"
        ours.mkdir()
        gguf_convert.convert(gguf, ours, progress=gguf_convert.Progress(io.StringIO()))
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        out[name] = (gguf, ours, model, tok)
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_weights_equal_transformers(converted, variant):
    from safetensors.numpy import load_file

    _, ours, model, _ = converted[variant]
    got = load_file(str(ours / "model.safetensors"))
    want = {k: v.numpy() for k, v in model.state_dict().items()}
    tied = VARIANTS[variant]["tied"]
    # tied: lm_head is the embedding, stored once (transformers re-ties it on load)
    assert set(got) == set(want) - ({"lm_head.weight"} if tied else set())
    for name, value in got.items():
        assert value.dtype == np.float32 and value.shape == want[name].shape, name
        np.testing.assert_allclose(value, want[name], rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_from_our_files_computes_what_transformers_computes(converted, variant):
    import torch
    from transformers import AutoModelForCausalLM

    _, ours, reference, _ = converted[variant]
    model = AutoModelForCausalLM.from_pretrained(str(ours), dtype=torch.float32)
    # the keys models.py's transformers path sets or drops too
    settled = {"_name_or_path": "", "architectures": [type(reference).__name__], "quantization_config": None}
    assert model.config.to_dict() | settled == reference.config.to_dict() | settled
    ids = torch.tensor([[5, 17, 99, 230, 3, 64, 301, 12]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_json_says_what_transformers_conversion_says(converted, variant):
    gguf, ours, model, _ = converted[variant]
    cfg = json.loads((ours / "config.json").read_text())
    want = json.loads(json.dumps(model.config.to_dict(), default=str))  # as a JSON file holds it
    want.pop("transformers_version", None)
    want.pop("quantization_config")
    # what models.py's transformers path writes on top of to_dict()
    want.update(architectures=[type(model).__name__], dtype="float32", torch_dtype="float32", _name_or_path=str(gguf.parent))
    assert cfg == want


@pytest.mark.parametrize("variant", VARIANTS)
def test_token_ids_equal_transformers(converted, variant):
    _, ours, _, reference = converted[variant]
    tok = HFTokenizer.from_file(ours / "tokenizer.json", "tiny")
    for text in TEXTS:
        # basecli encodes without the model's BOS and with special tokens as plain text...
        want = reference(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert tok.encode(text) == want, text
        if "<|endoftext|>" in text and not VARIANTS[variant]["endoftext"]:
            continue  # transformers' extra token: test_no_token_beyond_the_embedding
        # ...or matched whole; and its prefix is what transformers puts first
        assert tok.encode(text, allow_special=True) == reference(text, add_special_tokens=False)["input_ids"], text
        assert tok.prefix_ids + tok.encode(text, allow_special=True) == reference(text)["input_ids"], text
        assert tok.decode(tok.encode(text)) == text
    assert tok.prefix_ids == ([reference.bos_token_id] if VARIANTS[variant]["add_bos"] else [])


def test_no_token_beyond_the_embedding(converted):
    """transformers appends <|endoftext|> (GPT2Tokenizer's default) to a vocabulary without it,
    at an id the model has no embedding for; basecli's tokenizer stays within the model."""
    _, ours, model, reference = converted["llama3-like"]
    tok = HFTokenizer.from_file(ours / "tokenizer.json", "tiny")
    assert tok.vocab_size == model.config.vocab_size
    assert len(reference) == model.config.vocab_size + 1 and reference.convert_tokens_to_ids("<|endoftext|>") == model.config.vocab_size


def test_pre_tokenizer_regexes_are_transformers(converted):
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    assert gguf_convert.PRE_TOKENIZER_SPLITS == GGUF_PRE_TOKENIZER_SPLITS


def test_first_use_converts_with_basecli_into_the_cache_with_progress(tmp_path, capsys):
    gguf = write_tiny_gguf(tmp_path / "g" / "tiny.gguf", **VARIANTS["smollm-like"])
    folder = models.model_dir(models.resolve(str(gguf)))
    assert models.is_complete(folder) and folder.name.endswith(f"-v{models.CACHE_FORMAT}")
    manifest = models.manifest(folder)
    assert manifest["converter"] == "basecli" and manifest["tensors_s"] >= 0
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(manifest["files"])
    assert not list(folder.parent.glob("*.tmp-*"))  # written aside and renamed into place
    err = capsys.readouterr().err
    # stderr is not a terminal here: a few plain lines, the tensor count once
    assert "tensors 20/20" in err and "\r" not in err and len(err.splitlines()) <= 6, err
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert models.model_dir(models.resolve(str(gguf))) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime and capsys.readouterr().err == ""


def test_progress_rewrites_one_line_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    progress = gguf_convert.Progress(out)
    for done in range(1, 4):
        progress.count("tensors", done, 3)
    assert out.getvalue() == "\rbasecli: tensors 1/3\rbasecli: tensors 2/3\rbasecli: tensors 3/3\n"


def test_other_architectures_fall_back_to_transformers_with_a_note(tmp_path, capsys, monkeypatch):
    gguf = write_tiny_gguf(tmp_path / "g" / "tiny.gguf", **VARIANTS["smollm-like"])
    real = gguf_convert.GGUFFile

    def as_phi3(path):  # the same file, claiming another architecture
        f = real(path)
        f.metadata["general.architecture"] = "phi3"
        return f

    monkeypatch.setattr(gguf_convert, "GGUFFile", as_phi3)
    calls = []
    monkeypatch.setattr(models, "_convert_with_transformers", lambda g, tmp: (calls.append(g), (tmp / "tokenizer.json").write_text("{}")))
    folder = models.model_dir(models.resolve(str(gguf)))
    err = capsys.readouterr().err
    assert calls == [gguf] and models.manifest(folder)["converter"] == "transformers"
    assert err.count("note:") == 1 and "architecture 'phi3'" in err and "transformers" in err


@pytest.mark.parametrize("name, why", [("blk.0.attn_q_norm.weight", "no llama counterpart"), ("rope_freqs.weight", None)])
def test_tensor_names(name, why):
    if why is None:
        assert gguf_convert.hf_name(name) is None  # dropped, as transformers drops it
    else:
        with pytest.raises(gguf_convert.Unsupported, match=why):
            gguf_convert.hf_name(name)


def transformers_conversion(real_model, tmp_path) -> Path:
    """transformers' own conversion of the embedded GGUF: the cache real_model loaded when transformers
    made it (machines converted before basecli had its converter), else made here (~20-40 s)."""
    manifest = json.loads((real_model.folder / "basecli.json").read_text())
    if manifest.get("converter", "transformers") == "transformers":
        return real_model.folder
    reference = tmp_path / "transformers"
    reference.mkdir()
    models._convert_with_transformers(models.embedded_gguf(), reference)
    return reference


@pytest.mark.slow
def test_embedded_model_converts_to_the_transformers_converted_cache(real_model, tmp_path):
    """The real SmolLM2 GGUF: weights equal to transformers' conversion, and token ids equal on many strings."""
    from safetensors import safe_open

    want_dir = transformers_conversion(real_model, tmp_path)
    gguf_convert.convert(models.embedded_gguf(), tmp_path, progress=gguf_convert.Progress(io.StringIO()))
    with safe_open(tmp_path / "model.safetensors", "np") as got, safe_open(want_dir / "model.safetensors", "np") as want:
        assert set(got.keys()) == set(want.keys())
        for name in got.keys():
            np.testing.assert_allclose(got.get_tensor(name), want.get_tensor(name), rtol=0, atol=1e-6, err_msg=name)
    assert json.loads((tmp_path / "config.json").read_text()).items() <= (
        json.loads((want_dir / "config.json").read_text()) | {"transformers_version": None}).items()
    assert (tmp_path / "chat_template.jinja").read_text() == (want_dir / "chat_template.jinja").read_text()
    loaded_as = {"is_local": True, "local_files_only": False}  # how transformers had loaded it, not what it is
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) | loaded_as == json.loads(
        (want_dir / "tokenizer_config.json").read_text()) | loaded_as
    ours, theirs = models.tokenizer_for(tmp_path, "ours"), models.tokenizer_for(want_dir, "theirs")
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    texts = TEXTS + readme.splitlines() + [readme[i : i + 300] for i in range(0, len(readme), 300)]
    for text in texts:
        assert ours.encode(text) == theirs.encode(text), text
        assert ours.encode(text, allow_special=True) == theirs.encode(text, allow_special=True), text
    assert ours.eos_ids == theirs.eos_ids and ours.prefix_ids == theirs.prefix_ids


def test_tokenizer_alone_comes_out_of_the_gguf_without_transformers(converted, tmp_path):
    """`basecli tokenize -m x.gguf` before any conversion: tokenizer.json from the metadata, no torch or transformers."""
    import subprocess
    import sys

    gguf, _, _, reference = converted["llama3-like"]
    probe = ("import sys; from basecli.weights.model_tokenizer import model_tokenizer; tok = model_tokenizer(sys.argv[1]); "
             "print(tok.encode(sys.argv[2]), tok.prefix_ids, sorted(tok.eos_ids)); "
             "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    text = "Hello 세계 😀, a GGUF tokenizer\n\n  x"
    r = subprocess.run([sys.executable, "-c", probe, str(gguf), text], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ids, heavy = r.stdout.splitlines()
    want = reference(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert ids == f"{want} {[reference.bos_token_id]} {[reference.eos_token_id]}" and heavy == "[]"
    assert "reading the tokenizer" in r.stderr
