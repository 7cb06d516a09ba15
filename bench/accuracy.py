"""How far the default weights (the GGUF's own Q4_1/Q8_0 blocks) move the embedded model, against llama.cpp.

    python bench/accuracy.py                 # the embedded SmolLM2-135M, three texts, a markdown table
    python bench/accuracy.py --json

For three fixed texts (English prose, Python code, Korean), every engine is teacher-forced on the
same token ids (basecli's tokenizer), and each position's next-token distribution is compared
with the reference, the fp32 dequantised model (basecli's lean engine, `--quantize none`):

- mean KL(reference || engine) over all positions, in nats per token;
- bits per byte of the text after its first token (how well each engine predicts it);
- how often its top token is the reference's.

Engines: basecli q4 as `score` runs it (one forward pass over the text; the kernels' matmuls),
basecli q4 as generation runs it (one native decode step per token), and llama.cpp
(llama-cpp-python, logits_all) on the same GGUF file. Skips llama.cpp, saying so, when it is not
installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's basecli, not an installed one

TEXTS = {
    "English prose": (
        "The lighthouse keeper had not spoken to another person in eleven days. Each morning he climbed the "
        "spiral stairs, wiped the salt from the great lens, and wrote the weather into a ledger that nobody "
        "would read. On the twelfth day a small boat appeared on the horizon, rowing slowly against the tide, "
        "and he found that he had forgotten how to begin a conversation. He rehearsed a greeting while the boat "
        "drew nearer, changing a word here and there, until the sentence no longer sounded like anything a "
        "person would say."
    ),
    "Python code": (
        "def merge_intervals(intervals):\n"
        "    \"\"\"Merge overlapping [start, end] intervals and return them sorted.\"\"\"\n"
        "    if not intervals:\n"
        "        return []\n"
        "    intervals = sorted(intervals, key=lambda pair: pair[0])\n"
        "    merged = [list(intervals[0])]\n"
        "    for start, end in intervals[1:]:\n"
        "        last = merged[-1]\n"
        "        if start <= last[1]:\n"
        "            last[1] = max(last[1], end)\n"
        "        else:\n"
        "            merged.append([start, end])\n"
        "    return merged\n\n\n"
        "if __name__ == \"__main__\":\n"
        "    print(merge_intervals([[1, 3], [2, 6], [8, 10], [15, 18]]))\n"
    ),
    "Korean": (
        "서울은 대한민국의 수도이자 가장 큰 도시이다. 한강이 도시를 가로질러 흐르며, 북쪽에는 경복궁과 같은 "
        "오래된 궁궐이 있고 남쪽에는 높은 빌딩이 늘어서 있다. 봄이 되면 사람들은 벚꽃을 보러 공원에 모이고, "
        "여름 밤에는 강가에서 산책을 즐긴다. 서울의 지하철은 깨끗하고 편리하여 많은 시민들이 매일 이용한다."
    ),
}


def log_softmax(logits):
    import torch

    return torch.as_tensor(logits).double().log_softmax(-1)


def basecli_logits(quantize: str, ids: list[int], *, stepwise: bool):
    """(len(ids), vocab) logits of basecli on the embedded model: one pass, or one decode step per token."""
    import torch

    from basecli.backends.local import LocalBackend

    backend = basecli_logits.cache.get(quantize)
    if backend is None:
        backend = basecli_logits.cache[quantize] = LocalBackend(None, device="cpu", dtype="float32" if quantize == "none" else "auto",
                                                                quantize=quantize)
    model = backend.model
    with torch.inference_mode():
        if not stepwise:
            return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
        cache, out = model.new_cache(), []
        mask = torch.ones(1, 1, dtype=torch.long)
        out.append(model(torch.tensor([ids[:1]]), mask, torch.tensor([[0]]), cache).logits[0, -1])
        for i, t in enumerate(ids[1:], start=1):
            mask = torch.ones(1, i + 1, dtype=torch.long)
            out.append(model(torch.tensor([[t]]), mask, torch.tensor([[i]]), cache).logits[0, -1])
        return torch.stack(out).float()


basecli_logits.cache = {}


def llama_cpp_logits(gguf: Path, ids: list[int], threads: int):
    """(len(ids), vocab) logits of llama.cpp on the same GGUF, or None when llama-cpp-python is not installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    import numpy as np

    llm = llama_cpp_logits.cache.get(str(gguf))
    if llm is None:
        llm = llama_cpp_logits.cache[str(gguf)] = Llama(model_path=str(gguf), n_ctx=1024, logits_all=True, n_threads=threads,
                                                        n_batch=512, verbose=False)
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


llama_cpp_logits.cache = {}


def compare(ref, got, ids: list[int], tokenizer) -> dict:
    """KL(ref || got) per position, bits per byte of tokens 1.. and top-1 agreement."""
    import torch

    p, q = log_softmax(ref[:-1]), log_softmax(got[:-1])  # row t predicts token t + 1
    kl = (p.exp() * (p - q)).sum(-1)
    targets = torch.tensor(ids[1:])
    nats = -q.gather(1, targets[:, None]).sum()
    text_bytes = len(tokenizer.decode(ids[1:]).encode("utf-8"))
    return {"kl": float(kl.mean()), "kl_max": float(kl.max()), "bpb": float(nats) / math.log(2) / text_bytes,
            "top1": float((p.argmax(-1) == q.argmax(-1)).double().mean()), "tokens": len(ids) - 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of a markdown table")
    args = ap.parse_args()
    os.environ.setdefault("BASECLI_THREADS", str(args.threads or ""))
    import torch

    from basecli.weights import models

    gguf = models.embedded_gguf()
    threads = args.threads or torch.get_num_threads()
    tokenizer = None
    rows = {}
    for name, text in TEXTS.items():
        if tokenizer is None:
            basecli_logits("none", [0], stepwise=False)
            tokenizer = basecli_logits.cache["none"].tokenizer
        ids = basecli_logits.cache["none"].encode(text)
        ref = basecli_logits("none", ids, stepwise=False)
        engines = {"fp32 (reference)": ref,
                   "basecli q4, score (one pass)": basecli_logits("q4", ids, stepwise=False),
                   "basecli q4, decode steps": basecli_logits("q4", ids, stepwise=True)}
        cpp = llama_cpp_logits(gguf, ids, threads)
        if cpp is not None:
            engines["llama.cpp"] = cpp
        rows[name] = {engine: compare(ref, logits, ids, tokenizer) for engine, logits in engines.items()}
    if args.json:
        print(json.dumps({"threads": threads, "llama_cpp": "llama.cpp" in next(iter(rows.values())), "texts": rows}, indent=2))
        return
    if "llama.cpp" not in next(iter(rows.values())):
        print("llama.cpp: skipped (pip install llama-cpp-python to compare)\n")
    print("| text | tokens | engine | mean KL from fp32 (nats/token) | max KL | bits per byte | top-1 = fp32's |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name, engines in rows.items():
        for engine, r in engines.items():
            kl = "-" if engine.startswith("fp32") else f"{r['kl']:.4f}"
            kl_max = "-" if engine.startswith("fp32") else f"{r['kl_max']:.3f}"
            print(f"| {name} | {r['tokens']} | {engine} | {kl} | {kl_max} | {r['bpb']:.3f} | {r['top1']:.1%} |")


if __name__ == "__main__":
    main()
