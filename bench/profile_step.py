"""Where one decode step of the lean engine spends its time: matmuls, attention, other torch calls.

    python bench/profile_step.py                       # fp32, 1 thread, batch 1 and 16
    python bench/profile_step.py --quantize int8 --threads 2
    python bench/profile_step.py --quantize q4 --threads 2      # basecli's C step: its own timers

For q4/q8 the step is one call into C (engine/native.c), so torch's profiler sees nothing inside
it; the kernels are built with -DBASECLI_PROFILE instead (BASECLI_NATIVE_PROFILE=1), which times
matmuls, attention and the rest inside the step (the timers cost about 1%).

Batch 16 is resample's shape: a prompt shared by every row (kept once in the cache) plus each
row's own tokens. The step time is the median of 15 steps without the profiler; the split comes
from torch.profiler over 5 more, counting top-level calls only (each one call from Python).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's basecli, not an installed one

MATMULS = ("aten::linear", "quantized::linear_dynamic", "quantized::linear_dynamic_fp16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--quantize", default=None, choices=["fp16", "int8", "q4", "q8"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--own-tokens", type=int, default=32, help="tokens each row has generated (at batch > 1)")
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from basecli.backends.local import LocalBackend

    os.environ["BASECLI_THREADS"] = str(args.threads)  # else LocalBackend picks threads from the load average
    native = args.quantize in ("q4", "q8")
    if native:
        os.environ["BASECLI_NATIVE_PROFILE"] = "1"
    backend = LocalBackend(args.model, device="cpu", dtype="float32", engine="lean", quantize=args.quantize)
    assert torch.get_num_threads() == args.threads
    model = backend.model
    for batch in [int(b) for b in args.batch.split(",")]:
        cache = model.new_cache()
        length = args.prompt_tokens + (args.own_tokens if batch > 1 else 0)
        token = torch.zeros(batch, 1, dtype=torch.long)
        mask = torch.ones(batch, length + 1, dtype=torch.long)
        position = torch.full((batch, 1), length)
        with torch.inference_mode():
            model(torch.zeros(1, args.prompt_tokens, dtype=torch.long), past_key_values=cache, logits_to_keep=1)
            if batch > 1:
                cache.batch_repeat_interleave(batch)
                cache.reserve(batch, args.own_tokens + 1)

            def step():
                cache.length = length  # the same position every time: keys written and overwritten in place
                model(token, attention_mask=mask, position_ids=position, past_key_values=cache)

            for _ in range(3):
                step()
            times = []
            for _ in range(15):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            if native:
                from basecli.engine import native as kernels

                kernels.profile()
                for _ in range(15):
                    step()
                parts = {k: v / 15 * 1e3 for k, v in kernels.profile().items()}
                print(f"{args.quantize}, batch {batch}, {args.threads} thread(s): step {statistics.median(times) * 1e3:.2f} ms; "
                      f"inside the C step: matmuls {parts['matmul']:.2f} ms, attention {parts['attention']:.2f} ms, "
                      f"the rest {parts['other']:.2f} ms; Python and torch around it "
                      f"{statistics.median(times) * 1e3 - sum(parts.values()):.2f} ms")
                continue
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    step()
        top = [e for e in prof.events() if e.cpu_parent is None]
        ms = lambda events: sum(e.cpu_time_total for e in events) / 5 / 1e3  # noqa: E731
        matmul = ms(e for e in top if e.name in MATMULS)
        attention = ms(e for e in top if "attention" in e.name)
        other = ms(top) - matmul - attention
        print(f"{args.quantize or 'fp32'}, batch {batch}, {args.threads} thread(s): step {statistics.median(times) * 1e3:.1f} ms; "
              f"under the profiler: matmuls {matmul:.1f} ms, attention {attention:.1f} ms, other torch calls {other:.1f} ms; "
              f"{len(top) / 5:.0f} calls into torch per step")


if __name__ == "__main__":
    main()
