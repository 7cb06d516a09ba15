"""The decode loop: prefill the prompts, then one token per step for every live row.

Batched with left padding, a KV cache, and sampling settings per row. It yields one
Event per row per step; rows that finish leave the batch so they stop costing compute.
"""

from __future__ import annotations

import codecs
from typing import Iterator, Sequence

import torch

from basecli.config import SamplingParams
from basecli.engine.processors import RowParams, process, sample
from basecli.events import Event
from basecli.config import fresh_seed


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
    batch = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding: every row's next token is at the same column
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    rows_cfg = RowParams(params, device)
    seeds = list(seeds) if seeds is not None else [p.seed if p.seed is not None else fresh_seed() for p in params]
    generators = [make_generator(s, device) for s in seeds]
    seen = None
    if rows_cfg.use_penalty:
        seen = torch.zeros(batch, _vocab(model), dtype=torch.bool, device=device)
        seen.scatter_(1, ids, mask.bool())

    streams = [TextStream(p.stop) for p in params]
    live = list(range(batch))  # batch position -> original row
    cache = new_cache(model)
    with_cache = {cache_keyword(model): cache, "use_cache": True}  # looked up once per call, not per step
    shared = batch > 1 and all(list(p) == list(prompts[0]) for p in prompts[1:])
    if prefix_cache is not None and (shared or batch == 1):
        cache, logits = prefix_cache.prefill(model, prompts[0], batch)
        with_cache[cache_keyword(model)] = cache
    elif shared:  # resample: one prefill, its cache copied to every row
        out = model(input_ids=ids[:1], attention_mask=mask[:1], position_ids=positions[:1], logits_to_keep=1, **with_cache)
        cache.batch_repeat_interleave(batch)
        logits = out.logits[:, -1, :].float().expand(batch, -1).contiguous()
    else:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, **with_cache)
        logits = out.logits[:, -1, :].float()
    next_pos = positions[:, -1:] + 1
    for step in range(max(p.max_tokens for p in params)):
        norm = logits.logsumexp(-1, keepdim=True)  # log-probabilities are logits - norm; only the few read are formed
        processed = process(logits, rows_cfg, seen)
        tokens = sample(processed, rows_cfg.greedy, generators)
        chosen_lp = (logits.gather(1, tokens[:, None]) - norm)[:, 0]
        top = torch.topk(logits, alternatives, dim=-1) if alternatives else None
        ent = _entropy(processed, rows_cfg.greedy) if entropy else None

        tokens_l, chosen_l = tokens.tolist(), chosen_lp.tolist()
        top_ids = top.indices.tolist() if top is not None else None
        top_lps = (top.values - norm).tolist() if top is not None else None
        ent_l = ent.tolist() if ent is not None else None
        keep = []
        for b, row in enumerate(live):
            tok_id = tokens_l[b]
            p = params[row]
            stream = streams[row]
            alts = list(zip(top_ids[b], top_lps[b])) if top_ids is not None else []
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
            yield Event(row, step, tok_id, piece, text, chosen_l[b], alts, finish, ent_l[b] if ent_l else None)
            if finish is None:
                keep.append(b)
        if not keep:
            return
        if len(keep) < len(live):
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
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos, **with_cache)
        logits = out.logits[:, -1, :].float()
        next_pos = next_pos + 1


def _entropy(logits: torch.Tensor, greedy: torch.Tensor) -> torch.Tensor:
    logp = logits.log_softmax(-1)
    h = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)
    return torch.where(greedy, torch.zeros_like(h), h)


def _vocab(model) -> int:
    return model.get_output_embeddings().weight.shape[0]
