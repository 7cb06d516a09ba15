"""The tokenizer of any model basecli can load, without its weights: from a model directory, the hub's
tokenizer files alone, or a GGUF file's metadata (cached once converted)."""

from __future__ import annotations

import json
from pathlib import Path

from basecli import config
from basecli.errors import UsageError
from basecli.text.tokenizers import HFTokenizer
from basecli.weights import models


def model_tokenizer(name: str | None) -> HFTokenizer:
    """The tokenizer of any model basecli can load, without its weights (and, once cached, without torch)."""
    source = models.resolve(name)
    label = source.name
    if source.kind == "dir":
        return models.tokenizer_for(Path(source.location), label)
    if source.kind == "hub":
        return models.tokenizer_for(_hub_tokenizer_files(source.location), label)
    gguf = models.embedded_gguf() if source.kind == "embedded" else Path(source.location)
    converted = models.converted_dir(models.cached_sha256(gguf))
    if models.is_complete(converted):
        return models.tokenizer_for(converted, label)
    cached = config.home() / "tokenizers" / converted.name
    if not (cached / "tokenizer.json").is_file():
        _extract_gguf_tokenizer(gguf, cached)
    return models.tokenizer_for(cached, label)


def _extract_gguf_tokenizer(gguf: Path, dest: Path) -> None:
    """Build tokenizer.json from a GGUF's metadata (no weights are read), once: with basecli's
    converter for byte-level BPE vocabularies (under a second), else with transformers."""
    import os
    import shutil
    import sys
    import tempfile

    from basecli.weights import gguf_convert  # numpy: only when a GGUF's tokenizer is read for the first time

    print(f"basecli: reading the tokenizer of {gguf.name} once (later runs use the cache)...", file=sys.stderr, flush=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=dest.name + ".tmp-"))
    try:
        try:
            gguf_convert.write_tokenizer(gguf, tmp)
        except gguf_convert.Unsupported:
            _tokenizer_with_transformers(gguf, tmp)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished first
            if not (dest / "tokenizer.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tokenizer_with_transformers(gguf: Path, tmp: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(str(tmp))
    if not (tmp / "tokenizer.json").is_file():
        raise UsageError(f"{gguf.name}: transformers produced no tokenizer.json; basecli cannot tokenize for this GGUF")
    # models.tokenizer_for reads the end and start tokens from config.json
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    (tmp / "config.json").write_text(json.dumps(ids))


def _hub_tokenizer_files(repo_id: str) -> Path:
    """Download tokenizer.json (and the small configs naming end/start tokens) of a hub model, nothing else."""
    from huggingface_hub import hf_hub_download

    from basecli.text.encodings import Unavailable

    path, why = models.from_hub(lambda **kw: hf_hub_download(repo_id, "tokenizer.json", **kw))
    if why is not None:
        raise Unavailable(f"could not get the tokenizer of {repo_id} from the Hugging Face hub ({why}); "
                          f"use an encoding (-e cl100k_base) or a local model directory") from None
    for extra in ("config.json", "generation_config.json"):
        try:
            hf_hub_download(repo_id, extra)
        except Exception:  # optional: without them only the end-of-text token is guessed
            pass
    return path.parent
