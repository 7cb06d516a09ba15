"""Stages of basecli's GGUF conversion, timed in one process: python bench/convert.py [GGUF] [--runs N]

Without a GGUF argument it times the embedded model. Each run converts into a temporary
directory (removed afterwards) and prints seconds per stage; the last line gives the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", nargs="?", help="a .gguf file (default: the embedded model)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    t = time.perf_counter()
    from basecli.weights import gguf_convert
    from basecli.weights import models
    from basecli.weights.gguf_reader import GGUFFile, dequantize

    imported = time.perf_counter() - t
    gguf = Path(args.gguf) if args.gguf else models.embedded_gguf()
    rows = []
    for _ in range(args.runs):
        out = Path(tempfile.mkdtemp(prefix="basecli-convert-"))
        try:
            row = {}
            t = time.perf_counter()
            f = GGUFFile(gguf)
            gguf_convert.check_supported(f)
            cfg = gguf_convert.model_config(f)
            row["read"] = time.perf_counter() - t
            t = time.perf_counter()
            tok, _ = gguf_convert.build_tokenizer(f.metadata)
            tok.save(str(out / "tokenizer.json"))
            row["tokenizer"] = time.perf_counter() - t
            t = time.perf_counter()
            for info in f.tensors:
                dequantize(f.raw(info), info.ggml_type, info.shape)
            row["dequantise (1 thread, no write)"] = time.perf_counter() - t
            for threads in (1, 2):
                t = time.perf_counter()
                gguf_convert.write_safetensors(f, out / "model.safetensors", cfg, threads=threads, on_tensor=lambda *_: None)
                row[f"tensors written, {threads} thread(s)"] = time.perf_counter() - t
        finally:
            shutil.rmtree(out, ignore_errors=True)
        rows.append(row)
        print(", ".join(f"{k} {v:.2f} s" for k, v in row.items()), f"| load {os.getloadavg()[0]:.2f}", flush=True)
    medians = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"medians of {args.runs}: import {imported:.2f} s, " + ", ".join(f"{k} {v:.2f} s" for k, v in medians.items()))


if __name__ == "__main__":
    main()
