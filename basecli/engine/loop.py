"""The decode loop: prefill the prompts, then one token per step for every live row.

In gpt-fast's shape: `prefill`, `decode_one_token`, `draw` (process and sample) and `row_event`
(host-side text and finish), driven by `generate`.

Batched with left padding, a KV cache, and sampling settings per row. It yields one
Event per row per step; rows that finish leave the batch so they stop costing compute.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from basecli.config import SamplingParams, fresh_seed
from basecli.errors import BasecliError
from basecli.engine.processors import RowParams, process, sample
from basecli.events import Event


class NonFinite(BasecliError):
    """Logits no sampler can use: the weights are damaged (a cache the caller names)."""


class TextStream:
    """Turns token bytes into printable text: never a split character, never (part of) a stop string."""

    def __init__(self, stops: Sequence[str] = ()):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = tuple(stops)
        self.text = ""  # everything decoded so far, cut at a stop string once one is found
        self.emitted = 0

    def push(self, data: bytes) -> tuple[str, bool]:
        """Add a token's bytes; return (text to print now, whether a stop string was hit)."""
        self.text += self._decoder.decode(data)
        cut = min((i for s in self.stops if (i := self.text.find(s, self.emitted)) >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            return self._take(cut), True
        return self._take(len(self.text) - self._held()), False

    def flush(self) -> str:
        self.text += self._decoder.decode(b"", final=True)
        return self._take(len(self.text))

    def _held(self) -> int:
        """Length of the longest tail that could still grow into a stop string."""
        held = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), held, -1):
                if self.text.endswith(s[:k]):
                    held = k
                    break
        return held

    def _take(self, upto: int) -> str:
        out = self.text[self.emitted : upto]
        self.emitted = max(self.emitted, upto)
        return out


def make_generator(seed: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def new_cache(model):
    """The model's own cache if it has one (engine/lean.py), else transformers' DynamicCache."""
    if hasattr(model, "new_cache"):
        return model.new_cache()
    from transformers import DynamicCache

    return DynamicCache()


def cache_keyword(model) -> str:
    """The name the model's forward takes its KV cache by: `cache` in transformers from 5.x (which warns
    that `past_key_values` goes away in 5.40), `past_key_values` before that and in engine/lean.py."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def select_cache(cache, rows: torch.Tensor) -> None:
    """Drop finished rows from a transformers KV cache in place."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(rows)
    else:  # older Cache classes
        cache.reorder_cache(rows)


def left_pad(prompts: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, positions), each (B, width): left padding puts every row's next token in the same column."""
    batch, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def row_seeds(params: Sequence[SamplingParams], seeds: Sequence[int] | None) -> list[int]:
    """`seeds[i]`, else params[i].seed, else fresh randomness (recorded, so a run can be repeated)."""
    return list(seeds) if seeds is not None else [p.seed if p.seed is not None else fresh_seed() for p in params]


def is_shared(prompts: Sequence[Sequence[int]]) -> bool:
    """Every row has the same prompt (resample): one prefill serves them all."""
    return len(prompts) > 1 and all(list(p) == list(prompts[0]) for p in prompts[1:])


def prefill(model, cache, kw: str, ids, mask, positions, shared: bool) -> torch.Tensor:
    """Run the prompts through the model into `cache` (passed by the keyword `kw`, cache_keyword's answer);
    the (B, vocab) fp32 logits of each row's next token.

    shared (resample): the first row's prompt is run once and its cache copied to every row."""
    batch = ids.shape[0]
    rows = slice(0, 1) if shared else slice(None)
    out = model(input_ids=ids[rows], attention_mask=mask[rows], position_ids=positions[rows], use_cache=True, logits_to_keep=1,
                **{kw: cache})
    logits = out.logits[:, -1, :].float()
    if shared:
        cache.batch_repeat_interleave(batch)
        logits = logits.expand(batch, -1).contiguous()
    return logits


def decode_one_token(model, cache, kw: str, tokens, mask, positions) -> torch.Tensor:
    """Feed one token per row (B,) at `positions` (B, 1); the (B, vocab) fp32 logits of the next one."""
    out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions, use_cache=True, **{kw: cache})
    return out.logits[:, -1, :].float()


@dataclass
class Draw:
    """One step's choice for every live row, on the host: what the Events are made of."""

    tokens: list[int]
    logprobs: list[float]  # of each chosen token, before any processor
    alternatives: list[list[tuple[int, float]]]  # top (id, logprob) per row, [] when not asked
    entropy: list[float] | None


def draw(logits, rows_cfg: RowParams, seen, generators, *, alternatives: int, entropy: bool) -> tuple[torch.Tensor, Draw]:
    """Process and sample one token per row; the tokens (on the device) and what the Events report (on the host)."""
    # log_softmax works a row at a time, so a row's log-probs are the same bits in any batch; logsumexp's
    # reduction splits a lone row across threads (and on the CPU it takes twice as long)
    logp = logits.log_softmax(-1)
    processed = process(logits, rows_cfg, seen)
    tokens = sample(processed, rows_cfg.greedy, generators)
    chosen = logp.gather(1, tokens[:, None])[:, 0]
    alts = [[] for _ in range(len(tokens))]
    if alternatives:
        top = torch.topk(logits, alternatives, dim=-1).indices
        alts = [list(zip(i, lp)) for i, lp in zip(top.tolist(), logp.gather(1, top).tolist())]
    ent = sampled_entropy(processed, rows_cfg.greedy).tolist() if entropy else None
    return tokens, Draw(tokens.tolist(), chosen.tolist(), alts, ent)


def row_event(tokenizer, row: int, step: int, p: SamplingParams, stream: TextStream, tok_id: int, logprob: float,
              alternatives: list, entropy: float | None) -> Event:
    """Row `row`'s Event for a token it drew: its text (held back at a possible stop string) and whether it ends the row."""
    finish = None
    if tok_id in tokenizer.eos_ids and not p.ignore_eos:
        text, finish, piece = stream.flush(), "eos", ""
    else:
        piece = tokenizer.token_bytes(tok_id)
        text, stopped = stream.push(piece)
        piece = piece.decode("utf-8", errors="replace")
        if stopped:
            finish = "stop"
        elif step + 1 >= p.max_tokens:
            text += stream.flush()
            finish = "length"
    return Event(row, step, tok_id, piece, text, logprob, alternatives, finish, entropy)


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    params: Sequence[SamplingParams],
    *,
    alternatives: int = 0,
    entropy: bool = False,
    seeds: Sequence[int] | None = None,
    prefix_cache=None,
) -> Iterator[Event]:
    """Sample continuations of every prompt (token ids) with its own settings, one Event at a time.

    `seeds[i]` (else params[i].seed, else fresh randomness) seeds row i's own generator,
    so a row's sample does not depend on the other rows in the batch. With a `prefix_cache`
    (engine/prefix_cache.py), rows of one prompt start from what it kept of an earlier prompt.
    """
    assert len(prompts) == len(params) and all(len(p) > 0 for p in prompts)
    device = model.device
    ids, mask, positions = left_pad(prompts, device)
    rows_cfg = RowParams(params, device)
    generators = [make_generator(s, device) for s in row_seeds(params, seeds)]
    seen = None
    if rows_cfg.use_penalty:
        seen = torch.zeros(len(prompts), vocab_size(model), dtype=torch.bool, device=device)
        seen.scatter_(1, ids, mask.bool())
    streams = [TextStream(p.stop) for p in params]
    live = list(range(len(prompts)))  # batch position -> original row
    cache = new_cache(model)
    kw = cache_keyword(model)  # looked up once per call, not per step
    shared = is_shared(prompts)
    if prefix_cache is not None and (shared or len(prompts) == 1):
        cache, logits = prefix_cache.prefill(model, prompts[0], len(prompts))
    else:
        logits = prefill(model, cache, kw, ids, mask, positions, shared)
    if bool((logits.isnan() | logits.isposinf()).any()):
        raise NonFinite("the model's first step gave NaN or infinite logits: its weights are damaged")
    next_pos = positions[:, -1:] + 1
    for step in range(max(p.max_tokens for p in params)):
        tokens, d = draw(logits, rows_cfg, seen, generators, alternatives=alternatives, entropy=entropy)
        keep = []
        for b, row in enumerate(live):
            ev = row_event(tokenizer, row, step, params[row], streams[row], d.tokens[b], d.logprobs[b], d.alternatives[b],
                           d.entropy[b] if d.entropy else None)
            yield ev
            if ev.finish_reason is None:
                keep.append(b)
        if not keep:
            return
        if len(keep) < len(live):  # finished rows leave the batch
            sel = torch.tensor(keep, device=device)
            select_cache(cache, sel)
            mask, next_pos, tokens = mask[sel], next_pos[sel], tokens[sel]
            rows_cfg = rows_cfg.select(sel)
            seen = seen[sel] if seen is not None else None
            generators = [generators[b] for b in keep]
            live = [live[b] for b in keep]
        if seen is not None:
            seen.scatter_(1, tokens[:, None], True)
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        logits = decode_one_token(model, cache, kw, tokens, mask, next_pos)
        next_pos = next_pos + 1


def sampled_entropy(logits: torch.Tensor, greedy: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) per row; 0 for greedy rows, which draw nothing."""
    logp = logits.log_softmax(-1)
    terms = logp.exp() * logp.nan_to_num(neginf=0.0)
    h = -torch.stack([row.sum() for row in terms])  # a sum per row: one over (B, V) splits rows by the batch's threads
    return torch.where(greedy, torch.zeros_like(h), h)


def vocab_size(model) -> int:
    """Rows of the output head: the size of the logits."""
    return model.get_output_embeddings().weight.shape[0]
