"""The decode loop over a preallocated cache, its step replayed as a CUDA graph on a GPU.

gpt-fast's shape: `prefill` once (eager, the prompt's width), then `decode_one_token` is a
fixed-shape function of static buffers (engine/static.py's cache, the last logits, positions,
the step counter) that samples on the device (engine/device_sampling.py), writes the token
into the cache and computes the next logits. On CUDA it is captured once per batch size and
replayed; the host reads the drawn tokens back every `sync_every` steps, turns them into text
and checks stop strings, EOS and max tokens there (engine/loop.py's row_event). Rows that
finish keep computing, masked out, until at most half the batch is left; then the batch is
cut to the live rows (a new shape, a new capture). The buffers and the captured step of the
last run are kept on the model and reused, written in place, by the next run of the same
shapes (a benchmark's repeats, samples of one prompt again). The same code runs eagerly on the CPU.

BASECLI_DECODE=static|plain forces a path (auto: static on CUDA, plain elsewhere; the
native q4/q8 step and transformers' models always run plain). BASECLI_GRAPH=cudagraph|compile|off
chooses how the step runs: captured as it is (the CUDA default), compiled by torch.compile first
(fused kernels, a long first call; on the CPU compiled without a capture), or as it is.
"""

from __future__ import annotations

import copy
import os
import sys
from typing import Callable, Iterator, Sequence

import torch

from basecli.config import SamplingParams
from basecli.engine.device_sampling import DeviceDraw, seed_tensor
from basecli.engine.loop import TextStream, generate, is_shared, left_pad, row_event, row_seeds, vocab_size
from basecli.engine.processors import RowParams
from basecli.engine.static import StaticCache, capacity_for
from basecli.errors import UsageError
from basecli.events import Event

DECODE_MODES = ("auto", "static", "plain")
GRAPH_MODES = ("auto", "cudagraph", "compile", "off")
WARMUP_STEPS = 2  # eager steps before a capture: lazy initialisation (cuBLAS handles, workspaces) must not be captured


def supports_static(model) -> bool:
    """A lean forward (Llama, Qwen2, GPT-2: engine/lean.py's LeanModel and `attend` hand over to the static cache)
    without engine/native.py's one-call step. transformers' models have no `layers` of their own."""
    return all(hasattr(model, a) for a in ("layers", "n_kv", "head_dim", "embed")) and getattr(model, "native", None) is None


def use_static(model, mode: str | None = None) -> bool:
    """Whether `generate_static` runs this model: BASECLI_DECODE, else static on CUDA and plain elsewhere."""
    mode = mode or os.environ.get("BASECLI_DECODE") or "auto"
    if mode not in DECODE_MODES:
        raise UsageError(f"unknown decode path {mode!r} (BASECLI_DECODE); choose one of: {', '.join(DECODE_MODES)}")
    if mode == "plain" or not supports_static(model):
        return False
    return mode == "static" or torch.device(model.device).type == "cuda"


def pick_generate(model) -> Callable[..., Iterator[Event]]:
    """The decode loop for this model: `generate_static` where `use_static` says so, else engine/loop.py's `generate`."""
    return generate_static if use_static(model) else generate


def graph_mode(device, mode: str | None = None) -> str:
    """How the decode step runs: "cudagraph" (captured), "compile" (torch.compile, then captured on CUDA) or "off"."""
    mode = mode or os.environ.get("BASECLI_GRAPH") or "auto"
    if mode not in GRAPH_MODES:
        raise UsageError(f"unknown graph mode {mode!r} (BASECLI_GRAPH); choose one of: {', '.join(GRAPH_MODES)}")
    cuda = torch.device(device).type == "cuda"
    if mode == "auto":
        return "cudagraph" if cuda else "off"
    return "off" if mode == "cudagraph" and not cuda else mode


COMPILE_OPTIONS = {"dynamic": False}  # our own capture replays it, so not mode="reduce-overhead" (a graph inside a graph)


class Replay:
    """Calls `fn` (no arguments, results left in static buffers), compiled first in mode "compile"; on CUDA
    eagerly for the warm-up steps, then as a CUDA graph captured on the next call. A capture or compile
    that fails says so on stderr once and the run goes on without it: slower, never wrong."""

    def __init__(self, fn: Callable[[], None], mode: str, device):
        self.eager, self.fn, self.calls, self.graph = fn, fn, 0, None
        self.capture = mode != "off" and torch.device(device).type == "cuda"
        if mode == "compile":
            self.fn = torch.compile(fn, **COMPILE_OPTIONS)

    def __call__(self) -> None:
        self.calls += 1
        if not self.capture:
            return self._run()
        if self.calls <= WARMUP_STEPS:  # on a side stream, as torch.cuda.graphs asks of warm-up
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._run()
            torch.cuda.current_stream().wait_stream(side)
            return
        if self.graph is None:
            self._capture()
        if self.graph is None:
            return self._run()
        self.graph.replay()

    def _run(self) -> None:
        if self.calls > 1 or self.fn is self.eager:
            return self.fn()
        try:  # the first call of a compiled step compiles it
            self.fn()
        except Exception as e:  # noqa: BLE001 - a compiler failure of any kind leaves the eager step
            note(f"torch.compile of the decode step failed ({type(e).__name__}: {str(e)[:200]}); running it uncompiled")
            self.fn = self.eager
            self.fn()

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.fn()
        except Exception as e:  # noqa: BLE001 - capture is an optimisation: any failure leaves the uncaptured step
            note(f"CUDA graph capture of the decode step failed ({type(e).__name__}: {str(e)[:200]}); decoding without it")
            torch.cuda.synchronize()
            self.capture = False
            return
        self.graph = graph


def note(message: str) -> None:
    print(f"basecli: note: {message}", file=sys.stderr)


class Decoder:
    """The static state of one fixed-shape batch and its one-token step."""

    def __init__(self, model, cache: StaticCache, draw: DeviceDraw, seen):
        self.model, self.cache, self.draw, self.seen = model, cache, draw, seen
        self.logits = None  # (B, vocab) fp32, the first from the prefill
        self.positions = torch.zeros(cache.batch, dtype=torch.long, device=model.device)  # of each row's next token
        self.step = torch.zeros(1, dtype=torch.long, device=model.device)  # the step counter, on the device
        self.busy = False  # a run is using these buffers (another one at the same time gets its own)

    def load(self, ids, mask, positions, cfg: RowParams, seeds: torch.Tensor, shared: bool) -> None:
        """Prefill a run's prompts into the buffers, in place: a step captured over them replays as it is."""
        self.cache.reset()
        logits = prefill(self.model, self.cache, ids, mask, positions, shared)
        self.logits = logits.contiguous() if self.logits is None else self.logits.copy_(logits)
        self.positions.copy_(positions[:, -1] + 1)
        self.step.zero_()
        self.draw.load(cfg, seeds)
        if self.seen is not None:
            self.seen.zero_()
            self.seen.scatter_(1, ids, mask.bool())

    def decode_one_token(self) -> None:
        """Draw this step's tokens from the last logits, write them into the cache, compute the next logits."""
        tokens = self.draw(self.logits, self.seen, self.step)
        if self.seen is not None:
            self.seen.scatter_(1, tokens[:, None], True)
        self.cache.mark_next()
        out = self.model(input_ids=tokens[:, None], attention_mask=self.cache.keys, position_ids=self.positions[:, None],
                         past_key_values=self.cache)
        self.logits.copy_(out.logits[:, -1, :])
        self.cache.advance(1)
        self.positions += 1
        self.step += 1

    def select(self, rows: torch.Tensor) -> "Decoder":
        """A decoder of only `rows`, in new buffers (a new shape: a new capture); this one is left as it was."""
        out = copy.copy(self)
        out.cache, out.draw = self.cache.select(rows), self.draw.select(rows)
        out.logits, out.positions = self.logits.index_select(0, rows), self.positions.index_select(0, rows)
        out.seen = self.seen.index_select(0, rows) if self.seen is not None else None
        out.step = self.step.clone()
        return out


def prefill(model, cache: StaticCache, ids, mask, positions, shared: bool) -> torch.Tensor:
    """Run the prompts into `cache` (emptied); the (B, vocab) fp32 logits of each row's next token.

    shared (resample): the first row's prompt is run once, in a cache of its own, and its keys copied to every row."""
    batch, width = ids.shape
    rows = slice(0, 1) if shared else slice(None)
    into = StaticCache.for_model(model, 1, cache.capacity) if shared else cache
    into.fill_prompt(mask[rows])
    logits = model(input_ids=ids[rows], attention_mask=into.keys, position_ids=positions[rows], past_key_values=into,
                   logits_to_keep=1).logits[:, -1, :].float()
    into.advance(width)
    if shared:
        cache.share(into)
    return logits.expand(batch, -1)


def decoder_for(model, ids, mask, positions, params, seeds: torch.Tensor, *, shared: bool, alternatives: int, entropy: bool,
                mode: str) -> tuple[Decoder, "Replay"]:
    """A decoder loaded with this run, and its step: the last run's buffers and captured graph when the run has
    the same shapes and the same host-side choices (a benchmark's repeats), else new ones."""
    device, batch = model.device, len(params)
    steps = max(p.max_tokens for p in params)
    cfg = RowParams(params, device)
    key = (batch, capacity_for(ids.shape[1], steps), steps, alternatives, entropy, mode, cfg.kmax, bool(cfg.greedy.all()),
           cfg.use_penalty, cfg.use_temperature, cfg.use_top_k, cfg.use_top_p, cfg.use_min_p)
    # kept on the model (a cycle the collector frees with it), not in a table that would keep the model alive
    held = getattr(model, "static_held", None)
    if held is not None and held[0] == key and not held[1].busy:
        decoder, replay = held[1], held[2]
    else:
        if held is not None and not held[1].busy:
            model.static_held = held = None  # its buffers go before new ones are made
        seen = torch.zeros(batch, vocab_size(model), dtype=torch.bool, device=device) if cfg.use_penalty else None
        draw = DeviceDraw(cfg, seeds.clone(), steps, alternatives=alternatives, entropy=entropy)
        decoder = Decoder(model, StaticCache.for_model(model, batch, key[1]), draw, seen)
        replay = Replay(decoder.decode_one_token, mode, device)
        if held is None:
            model.static_held = (key, decoder, replay)
    decoder.load(ids, mask, positions, cfg, seeds, shared)
    return decoder, replay


@torch.inference_mode()
def generate_static(model, tokenizer, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams], *, alternatives: int = 0,
                    entropy: bool = False, seeds: Sequence[int] | None = None, prefix_cache=None, sync_every: int | None = None,
                    graph: str | None = None) -> Iterator[Event]:
    """engine/loop.py's `generate` (same arguments, same Events) over a preallocated cache and a fixed-shape step.

    sync_every: decode steps between two reads of the drawn tokens (default 8 on CUDA, 1 elsewhere).
    A `prefix_cache` (engine/prefix_cache.py: loom) keeps growing caches, so such a run is the plain loop's."""
    if prefix_cache is not None:
        yield from generate(model, tokenizer, prompts, params, alternatives=alternatives, entropy=entropy, seeds=seeds,
                            prefix_cache=prefix_cache)
        return
    assert len(prompts) == len(params) and all(len(p) > 0 for p in prompts)
    device = model.device
    mode = graph_mode(device, graph)
    sync_every = sync_every or (8 if torch.device(device).type == "cuda" else 1)
    ids, mask, positions = left_pad(prompts, device)
    decoder, replay = decoder_for(model, ids, mask, positions, params, seed_tensor(row_seeds(params, seeds), device),
                                  shared=is_shared(prompts), alternatives=alternatives, entropy=entropy, mode=mode)
    decoder.busy = True
    try:
        yield from decode_rows(decoder, replay, tokenizer, params, sync_every, mode)
    finally:
        decoder.busy = False


def decode_rows(decoder: Decoder, replay: "Replay", tokenizer, params: Sequence[SamplingParams], sync_every: int,
                mode: str) -> Iterator[Event]:
    """Run the decode steps, `sync_every` at a time, and turn what they drew into each row's Events."""
    device = decoder.model.device
    streams = [TextStream(p.stop) for p in params]
    live = list(range(len(params)))  # batch position -> original row, for the rows in the decoder's batch
    going = set(live)  # rows not finished yet
    left = lambda queued: max(params[r].max_tokens for r in going) - queued  # noqa: E731 - steps still to queue
    done = queued = 0  # steps read back, steps queued
    queued += launch(replay, min(sync_every, left(queued)))
    while going:
        upto = queued
        tokens, logprobs, alts, ents = decoder.draw.read(done, upto)  # waits for the queued steps
        # queue the next steps before turning these into text, so the device works while the host does
        queued += launch(replay, min(sync_every, left(queued)))
        for s in range(upto - done):  # every row at a step before the next step, as engine/loop.py yields them
            for b, row in enumerate(live):
                if row not in going:
                    continue
                ev = row_event(tokenizer, row, done + s, params[row], streams[row], tokens[b][s], logprobs[b][s],
                               alts[b][s] if alts else [], ents[b][s] if ents else None)
                yield ev
                if ev.finish_reason is not None:
                    going.discard(row)
        done = upto
        if going and len(going) * 2 <= len(live):  # half the batch or less is live: cut it to the live rows
            # steps queued meanwhile ran on the whole batch; the cut copies their outputs after them (stream order)
            keep = [b for b, row in enumerate(live) if row in going]
            decoder = decoder.select(torch.tensor(keep, device=device))
            live = [live[b] for b in keep]
            replay = Replay(decoder.decode_one_token, mode, device)


def launch(replay: "Replay", steps: int) -> int:
    """Queue `steps` decode steps (none if steps <= 0); how many were queued."""
    for _ in range(max(steps, 0)):
        replay()
    return max(steps, 0)
