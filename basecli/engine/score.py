"""Teacher-forced scoring: how likely the model finds each token of a text it is given.

One full forward pass per window, no KV cache: every position's next-token distribution
comes out of the same pass. A text longer than the window is scored with overlapping
windows: the first scores its tokens with all the context they have; each later window
ends `stride` tokens further on and scores only those new tokens, which therefore see
between `window - stride` and `window - 1` tokens of context instead of everything before.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from basecli.errors import UsageError
from basecli.events import ScoredToken

ROWS_PER_CHUNK = 256  # log_softmax over (rows, vocab) in float32, a chunk at a time, to bound memory


def start_ids(tokenizer, context: str | None) -> list[int]:
    """What the first token of the text is conditioned on: --context, else the model's start token."""
    if context is not None:
        if not context:
            raise UsageError("--context is empty; leave it out to condition on the model's start token")
        return list(tokenizer.prefix_ids) + tokenizer.encode(context)
    if tokenizer.prefix_ids:
        return list(tokenizer.prefix_ids)
    # A document begins after the separator the model was pretrained with. An instruct model's bos_id can be a chat
    # token (SmolLM2-Instruct's is <|im_start|>): after it "The capital of France..." costs 58 bits, after <|endoftext|> 37.
    separator = getattr(tokenizer, "special_tokens", {}).get("<|endoftext|>")
    if separator is not None:
        return [separator]
    return [tokenizer.bos_id] if tokenizer.bos_id is not None else []


def plan_windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, first_target, end) per forward pass over positions [begin, end); it scores targets [first_target, end)."""
    end = min(n, window)
    plan = [(0, 1, end)]
    while end < n:
        new_end = min(end + stride, n)
        plan.append((new_end - window, end, new_end))
        end = new_end
    return plan


def check_window(window: int, stride: int, context_length: int) -> None:
    if window < 2:
        raise UsageError(f"--window must be at least 2 tokens, got {window}")
    if window > context_length:
        raise UsageError(f"--window {window} is larger than the model's context window ({context_length} tokens); use at most {context_length}")
    if not 1 <= stride < window:
        raise UsageError(
            f"--stride {stride} must be between 1 and {window - 1}: each window moves on by the stride and must overlap "
            f"the last one (window {window} tokens); try --stride {window // 2}"
        )


@torch.inference_mode()
def score_ids(model, ids: Sequence[int], *, first: int, alternatives: int = 0, window: int, stride: int,
              progress: Callable[[int, int], None] | None = None) -> list[tuple[float | None, int | None, list, int]]:
    """(logprob, rank, alternatives, context) for every position from `first` on.

    Position 0 has nothing before it: it gets (None, None, [], 0) when `first` is 0.
    """
    n = len(ids)
    device = model.device
    out: list[tuple[float | None, int | None, list, int]] = []
    if first == 0:
        out.append((None, None, [], 0))
    plan = plan_windows(n, window, stride)
    total = n - max(first, 1)
    done = 0
    for begin, target0, end in plan:
        x = torch.tensor([list(ids[begin:end])], device=device)
        logits = model(input_ids=x, use_cache=False).logits[0]  # (end - begin, vocab)
        target0 = max(target0, first, 1)
        for lo in range(target0, end, ROWS_PER_CHUNK):
            hi = min(lo + ROWS_PER_CHUNK, end)
            logp = logits[lo - 1 - begin : hi - 1 - begin].float().log_softmax(-1)  # row t-1 predicts token t
            actual = torch.tensor(list(ids[lo:hi]), device=device)
            lp = logp.gather(1, actual[:, None])  # (rows, 1)
            rank = (logp > lp).sum(-1) + 1  # 1 + how many tokens the model preferred
            top = torch.topk(logp, alternatives, dim=-1) if alternatives else None
            lp_l, rank_l = lp[:, 0].tolist(), rank.tolist()
            top_i = top.indices.tolist() if top is not None else None
            top_v = top.values.tolist() if top is not None else None
            for j, t in enumerate(range(lo, hi)):
                alts = list(zip(top_i[j], top_v[j])) if top_i is not None else []
                out.append((lp_l[j], rank_l[j], alts, t - begin))
        done += max(0, end - target0)
        if progress is not None:
            progress(done, total)
    return out


def score_text(model, tokenizer, context_length: int, text: str, *, context: str | None = None, alternatives: int = 0,
               stride: int | None = None, window: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> list[ScoredToken]:
    """Every token of `text` with its teacher-forced log-probability, rank and top alternatives."""
    if not text:
        raise UsageError("the text to score is empty; give some text, '-' for stdin or @FILE")
    # None means the default; 0 is a value, refused by check_window (it used to mean the default silently)
    window = context_length if window is None else window
    stride = max(1, window // 2) if stride is None else stride
    check_window(window, stride, context_length)
    start = start_ids(tokenizer, context)
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise UsageError(f"the text is {len(ids)} token ({text!r}); scoring needs at least 2 tokens to say anything")
    rows = score_ids(model, start + ids, first=len(start), alternatives=alternatives, window=window, stride=stride, progress=progress)
    return [
        ScoredToken(tid, tokenizer.token_bytes(tid).decode("utf-8", errors="replace"), lp, rank, alts, ctx)
        for tid, (lp, rank, alts, ctx) in zip(ids, rows)
    ]
