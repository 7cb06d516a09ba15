"""Many rows through `backend.stream`: seeds per row, automatic chunks, samples collected.

Row i of a set seeded S uses seed S + i, so a row's tokens depend only on its own prompt,
parameters and seed, never on which other rows share its batch. That is what lets a large
set run in chunks (as many rows as fit in memory at a time) with the same results as one
batch, and what makes row i equal `complete --seed S+i`.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from basecli.config import SamplingParams

MAX_ROWS = 256  # rows per batch at most: past this a CPU or a small GPU gains nothing, and memory estimates get rough
MEMORY_SHARE_CPU = 0.5  # of MemAvailable: the model and the OS keep the rest
MEMORY_SHARE_GPU = 0.8  # of the free accelerator memory


@dataclass
class Sample:
    """One row's events as they arrive, with the figures every view needs."""

    index: int
    params: SamplingParams  # params.seed is the seed this row used
    events: list = field(default_factory=list)

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1].finish_reason is not None

    @property
    def finish_reason(self) -> str | None:
        return self.events[-1].finish_reason if self.events else None

    @property
    def text(self) -> str:
        return "".join(ev.text for ev in self.events)

    @property
    def token_ids(self) -> list[int]:
        """Every sampled token, the end-of-text token included: the tree shows where samples end."""
        return [ev.token_id for ev in self.events]

    @property
    def logprobs(self) -> list[float]:
        return [ev.logprob for ev in self.events]

    @property
    def text_events(self) -> list:
        """The events that carry a token of the text (the end-of-text token is not part of it)."""
        return [ev for ev in self.events if ev.finish_reason != "eos"]

    @property
    def mean_logprob(self) -> float | None:
        lps = [ev.logprob for ev in self.text_events]
        return sum(lps) / len(lps) if lps else None

    @property
    def entropies(self) -> list[float]:
        return [ev.entropy for ev in self.events if ev.entropy is not None]


def seeded(params: Sequence[SamplingParams], seed: int, *, repeat: int | None = None) -> list[SamplingParams]:
    """Row i gets seed + i; with `repeat`, the seed cycles so sample j of every cell uses seed + j."""
    # past the largest seed (2**63 - 1) the row seeds wrap around to 0, so every --seed is usable with any -N
    return [p.with_(seed=(seed + (i % repeat if repeat else i)) % 2**63) for i, p in enumerate(params)]


def bytes_per_row(model, prompt_tokens: int, max_tokens: int) -> int:
    """A rough upper bound on the memory one row needs: its KV cache at full length, the
    prefill's activations and attention scores, and a few vocabulary-sized float rows per step."""
    cfg = model.config
    layers = _first(cfg, "num_hidden_layers", "n_layer", default=12)
    heads = _first(cfg, "num_attention_heads", "n_head", default=12)
    kv_heads = _first(cfg, "num_key_value_heads", default=heads) or heads
    hidden = _first(cfg, "hidden_size", "n_embd", default=768)
    head_dim = _first(cfg, "head_dim", default=hidden // heads) or hidden // heads
    inner = _first(cfg, "intermediate_size", "n_inner", default=4 * hidden) or 4 * hidden
    vocab = _first(cfg, "vocab_size", default=50_000)
    elem = next(model.parameters()).element_size()
    length = prompt_tokens + max_tokens
    kv = 2 * layers * kv_heads * head_dim * elem * length
    prefill = prompt_tokens * (3 * hidden + inner) * elem + heads * prompt_tokens * prompt_tokens * 4
    per_step = 8 * vocab * 4  # logits, log-softmax, processed, probs, noise, sort buffers (fp32)
    return int(1.2 * kv + prefill + per_step)


def _first(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def free_memory(device) -> int:
    """Bytes this process can still use for activations on `device` (a share of what is free)."""
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free * MEMORY_SHARE_GPU)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * MEMORY_SHARE_CPU)
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * MEMORY_SHARE_CPU)
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def rows_per_batch(backend, prompt: str, max_tokens: int, *, truncate: bool = False) -> int:
    """How many rows of this prompt fit in one batch (at least 1, at most MAX_ROWS)."""
    if not backend.local:  # the server batches on its own side
        return MAX_ROWS
    model = backend.model
    need = bytes_per_row(model, len(backend.encode(prompt, truncate=truncate)), max_tokens)
    return max(1, min(MAX_ROWS, free_memory(model.device) // max(need, 1)))


def chunks(n: int, size: int) -> list[range]:
    """Split rows 0..n-1 into consecutive ranges of nearly equal length, none longer than size."""
    if n <= 0:
        return []
    count = math.ceil(n / max(size, 1))
    base, extra = divmod(n, count)
    out, start = [], 0
    for c in range(count):
        end = start + base + (1 if c < extra else 0)
        out.append(range(start, end))
        start = end
    return out


def stream_rows(backend, prompts: Sequence[str], params: Sequence[SamplingParams], *, batch_size: int | None = None,
                alternatives: int = 0, entropy: bool = False, truncate: bool = False,
                on_chunks: Callable[[list[range]], None] | None = None) -> Iterator:
    """Like `backend.stream`, but in chunks of rows that fit in memory; `ev.row` is the global row.

    Every row must carry its seed in params (see `seeded`): that is what makes chunks
    give the same samples as one batch.
    """
    assert len(prompts) == len(params) and all(p.seed is not None for p in params)
    if batch_size is None:
        longest = max(prompts, key=len) if prompts else ""
        batch_size = rows_per_batch(backend, longest, max(p.max_tokens for p in params), truncate=truncate) if prompts else 1
    parts = chunks(len(prompts), batch_size)
    if on_chunks is not None:
        on_chunks(parts)
    for part in parts:
        rows = list(part)
        events = backend.stream([prompts[i] for i in rows], [params[i] for i in rows], alternatives=alternatives,
                                entropy=entropy, seeds=[params[i].seed for i in rows], truncate=truncate)
        for ev in events:
            ev.row = rows[ev.row]
            yield ev


def note_chunks(parts: list[range]) -> None:
    """Say on stderr when a set runs in more than one batch: it takes longer, and the user may want to choose."""
    if len(parts) > 1:
        print(f"basecli: {sum(len(p) for p in parts)} rows run in {len(parts)} batches of at most {max(len(p) for p in parts)} "
              "(what fits in memory; --batch-size to choose)", file=sys.stderr)


def collect(samples: Sequence[Sample], events, on_event: Callable | None = None) -> list[Sample]:
    """Append each event to its row's Sample, calling on_event(sample, event) as they come.

    Ctrl-C ends the collection, not the command: the rows keep what arrived (see errors.interrupted)."""
    from basecli.errors import interrupted

    try:
        for ev in events:
            s = samples[ev.row]
            s.events.append(ev)
            if on_event is not None:
                on_event(s, ev)
    except KeyboardInterrupt:
        interrupted()
        for s in samples:
            if s.events and s.events[-1].finish_reason is None:
                s.events[-1].finish_reason = "interrupted"
    return list(samples)
