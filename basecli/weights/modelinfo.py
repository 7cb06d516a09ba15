"""What a released model is: code plus parameters. Counts, shapes, provenance and the code that runs it."""

from __future__ import annotations

import inspect
from pathlib import Path

from basecli.weights import models
COMPONENTS = ("embeddings", "attention", "MLP", "norms", "output head", "other")


def component(name: str) -> str:
    """Which part of the network a parameter belongs to, by its name in transformers' model code."""
    n = name.lower()
    if "lm_head" in n or n.startswith("output."):
        return "output head"
    if any(k in n for k in ("embed", "wte", "wpe")):
        return "embeddings"
    if "norm" in n or ".ln_" in n or n.startswith("ln_") or "layer_norm" in n:  # before attention: post_attention_layernorm
        return "norms"
    if any(k in n for k in ("attn", "attention")):
        return "attention"
    if any(k in n for k in ("mlp", "feed_forward", "ffn")):
        return "MLP"
    return "other"


def parameter_counts(model) -> dict[str, int]:
    """Parameters per component and in total. A tied tensor is one tensor: named_parameters yields it once."""
    counts = {c: 0 for c in COMPONENTS}
    for name, p in model.named_parameters():  # remove_duplicate=True: the tied head is the embedding, seen once
        counts[component(name)] += p.numel()
    counts["total"] = sum(counts.values())
    return counts


def memory_bytes(model) -> int:
    """Bytes the weights and buffers occupy, each distinct tensor once; a quantised matrix counts its blocks."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()) + _tied_head(model):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += round(t.numel() * t.element_size())  # a fraction of a byte per weight for Q4_1 and Q8_0
    return total


def _tied_head(model) -> list:
    """A tied head that quantising made a matrix of its own (the embedding stays for lookups): held in memory,
    though its parameters are the embedding's, counted once."""
    return [model.head] if getattr(model, "head_tied", False) else []


def weight_formats(model) -> dict[str, str]:
    """How each component's weights are held: their dtype, or a quantised format (engine/quant.py, engine/native.py)."""
    found: dict[str, list[str]] = {}
    for name, w in list(model.named_parameters()) + [("lm_head.weight", h) for h in _tied_head(model)]:
        fmt = getattr(w, "format", None) or str(w.dtype).removeprefix("torch.")
        formats = found.setdefault(component(name), [])
        for part in fmt.split("+"):  # matrices stacked from parts in different formats (engine/native.py's Stacked)
            if part not in formats:
                formats.append(part)
    return {c: ", ".join(found[c]) for c in COMPONENTS if c in found}


def weights_summary(formats: dict[str, str]) -> str:
    """{"embeddings": "float32", "attention": "Q4_1", ...} as "float32 embeddings and norms, Q4_1 attention and MLP, ..."."""
    by_format: dict[str, list[str]] = {}
    for part, fmt in formats.items():
        by_format.setdefault(fmt, []).append(part)
    said = lambda parts: ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]  # noqa: E731
    return ", ".join(f"{fmt} {said(parts)}" for fmt, parts in by_format.items())


def architecture(model) -> dict:
    cfg = model.config
    get = lambda *names, default=None: next((getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None), default)  # noqa: E731
    heads = get("num_attention_heads")
    hidden = get("hidden_size")
    return {
        "family": cfg.model_type,
        "architecture": (getattr(cfg, "architectures", None) or [type(model).__name__])[0],
        "layers": get("num_hidden_layers"),
        "hidden_size": hidden,
        "intermediate_size": get("intermediate_size", "n_inner", default=4 * hidden if hidden else None),
        "attention_heads": heads,
        "key_value_heads": get("num_key_value_heads", default=heads),
        "head_dim": get("head_dim", default=hidden // heads if hidden and heads else None),
        "context_length": get("max_position_embeddings", "n_positions"),
        "vocab_size": get("vocab_size"),
        "tied_embeddings": bool(get("tie_word_embeddings", default=False)),
        "position_encoding": "rotary" if get("rope_theta") or getattr(cfg, "rope_parameters", None) else "learned" if get("n_positions") else None,
        "activation": get("hidden_act", "activation_function"),
    }


def provenance(source: models.ModelSource, folder: Path) -> dict:
    """Where the parameters came from, with sha256 of what was loaded or converted."""
    out: dict = {"kind": source.kind, "name": source.name, "location": source.location, "loaded_from": str(folder),
                 "licence": source.licence or models.LICENCES.get(source.location)}
    if source.kind in ("embedded", "gguf"):
        man = models.manifest(folder)
        how = "its own blocks, used in place" if man.get("format") == "gguf-noweights" else "dequantised to float32 safetensors once"
        out.update(file=man.get("source"), sha256=man.get("sha256"), format=f"GGUF, {how}")
        if source.kind == "embedded":
            out["package"] = models.EMBEDDED_WHEEL
    else:
        out["files"] = {p.name: _sha256(p) for p in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))}
        if source.kind == "hub":
            out["revision"] = folder.name  # a hub snapshot folder is named by its commit
    return out


def _sha256(path: Path) -> str:
    """The hub cache names each large file's blob by its sha256; elsewhere compute it."""
    target = path.resolve()
    name = target.name
    if path.is_symlink() and len(name) == 64 and all(c in "0123456789abcdef" for c in name):
        return name
    return models.sha256_file(target)


def tokenizer_info(tok) -> dict:
    text = lambda i: tok.token_bytes(i).decode("utf-8", errors="replace")  # noqa: E731
    special = getattr(tok, "special_tokens", None)
    return {
        "kind": type(tok).__name__,
        "vocab_size": tok.vocab_size,
        "start_token": {"id": tok.bos_id, "text": text(tok.bos_id)} if tok.bos_id is not None else None,
        "end_tokens": [{"id": i, "text": text(i)} for i in sorted(tok.eos_ids)],
        "prefix_ids": list(tok.prefix_ids),
        "special_tokens": special if special is not None else {},
    }


def code_info(model) -> dict:
    """The class that runs the model (transformers' or basecli's lean engine) and its source file."""
    from importlib.metadata import version

    import torch

    cls = type(model)
    path = inspect.getsourcefile(cls)
    src = Path(path) if path else None
    return {
        "class": f"{cls.__module__}.{cls.__name__}",
        "source_file": str(src) if src else None,
        "source_bytes": src.stat().st_size if src else None,
        "source_lines": len(src.read_text(encoding="utf-8").splitlines()) if src else None,
        "transformers": version("transformers"),  # read, not imported: the lean engine never imports it
        "torch": torch.__version__,
    }


def describe(backend) -> dict:
    """Everything `basecli info` shows, as one JSON-ready dict."""
    model = backend.model
    counts = parameter_counts(model)
    dtype = next(model.parameters()).dtype
    return {
        "model": backend.name,
        "architecture": architecture(model),
        "parameters": counts,
        "runtime": {"dtype": str(dtype).removeprefix("torch."), "device": str(model.device), "memory_bytes": memory_bytes(model),
                    "load_s": round(backend.load_seconds, 3),
                    # dtype is the activations' and the plain tensors'; quantised matrices have their own formats
                    "quantize": getattr(model, "quantized", None), "weights": weight_formats(model),
                    "weight_path": getattr(getattr(backend, "weight_path", None), "why", None)},  # which weights run, and why
        "source": provenance(backend.source, backend.folder),
        "tokenizer": tokenizer_info(backend.tokenizer),
        "code": code_info(model),
    }
