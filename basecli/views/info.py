"""Terminal view of `basecli info`."""

from __future__ import annotations

from basecli.views.facts import print_facts


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def show(d: dict) -> None:
    a, p, r, s, t, c = (d[k] for k in ("architecture", "parameters", "runtime", "source", "tokenizer", "code"))
    print_facts(f"{d['model']}: {a['family']} ({a['architecture']})", [
        ("layers", str(a["layers"])),
        ("hidden size", f"{a['hidden_size']} (MLP {a['intermediate_size']}, {a['activation']})"),
        ("attention heads", f"{a['attention_heads']} query, {a['key_value_heads']} key/value, {a['head_dim']} dims each"),
        ("context length", f"{a['context_length']:,} tokens ({a['position_encoding']} positions)"),
        ("vocabulary", f"{a['vocab_size']:,}"),
    ])
    total = p["total"]
    rows = [(name, f"{n:,}  ({n / total:.1%})") for name, n in p.items() if name != "total" and n]
    if a["tied_embeddings"]:
        rows.append(("output head", "tied to the embeddings, counted once there"))
    rows.append(("total", f"{total:,}"))
    print_facts("parameters", rows)
    runtime = [("dtype", r["dtype"])]
    if r.get("quantize"):  # the matrices are not in dtype: say what they are
        from basecli.weights.modelinfo import weights_summary

        runtime = [("dtype", f"{r['dtype']} (activations)"), ("weights", f"{r['quantize']}: {weights_summary(r['weights'])}")]
    if r.get("weight_path"):
        runtime.append(("weights from", r["weight_path"]))
    print_facts("runtime", runtime + [("device", r["device"]), ("memory", _mb(r["memory_bytes"]) + " (weights and buffers)"),
                                      ("load time", f"{r['load_s']:.2f} s")])
    src = [("from", s["location"] if s["kind"] == "hub" else s.get("file") or s["location"]), ("kind", s["kind"])]
    if s.get("package"):
        src.append(("package", s["package"]))
    if s.get("sha256"):
        src.append(("sha256", s["sha256"]))
    src += [(f"sha256 {name}", digest) for name, digest in (s.get("files") or {}).items()]
    if s.get("revision"):
        src.append(("revision", s["revision"]))
    if s.get("format"):
        src.append(("format", s["format"]))
    src += [("loaded from", s["loaded_from"]), ("licence", s["licence"] or "unknown: check the model card")]
    print_facts("parameters came from", src)
    start = t["start_token"]
    specials = ", ".join(f"{k}={v}" for k, v in list(t["special_tokens"].items())[:24])
    more = len(t["special_tokens"]) - 24
    print_facts("tokenizer", [
        ("kind", f"{t['kind']}, {t['vocab_size']:,} tokens"),
        ("start token", f"{start['text']} ({start['id']})" if start else "none"),
        ("end tokens", ", ".join(f"{e['text']} ({e['id']})" for e in t["end_tokens"]) or "none"),
        ("put before every prompt", str(t["prefix_ids"]) if t["prefix_ids"] else "nothing"),
        ("special tokens", (specials + (f" and {more} more" if more > 0 else "")) or "none"),
    ])
    print_facts("code that runs it", [
        ("class", c["class"]),
        ("source", f"{c['source_file']} ({c['source_bytes']:,} bytes, {c['source_lines']:,} lines)"),
        ("versions", f"transformers {c['transformers']}, torch {c['torch']}"),
    ])
