"""What a server's JSON must look like, checked at one place before anything reads it.

A server may answer valid JSON of any shape (a list where an object belongs, numbers where text
belongs). Each function here returns the part of the answer the backend reads, in the shape it
reads it, or raises a Surprise naming the server and the field: one line for the user, never an
AttributeError deep inside the backend.
"""

from __future__ import annotations

import math

from basecli.backends.transport import RemoteError


class Surprise(RemoteError):
    """A server answered JSON of a shape the OpenAI API does not have."""


def _fail(where: str, field: str, expected: str, got) -> Surprise:
    shown = repr(got)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return Surprise(f"{where} sent an unexpected answer: {field} should be {expected}, got {type(got).__name__} {shown}")


def obj(data, where: str, field: str) -> dict:
    if not isinstance(data, dict):
        raise _fail(where, field, "an object", data)
    return data


def listed_models(data, where: str) -> list[dict]:
    """/v1/models: {data: [{id, ...}]}; entries without an id are skipped."""
    items = obj(data, where, "the model list").get("data", [])
    if not isinstance(items, list):
        raise _fail(where, "'data' of /models", "a list", items)
    out = []
    for m in items:
        if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]:
            n = m.get("max_model_len")
            if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
                raise _fail(where, f"'max_model_len' of {m['id']}", "a positive whole number", n)
            out.append(m)
    return out


def choices(chunk, where: str) -> list[dict]:
    """The choices of a completion (a streamed chunk or a whole answer), each checked by choice()."""
    items = obj(chunk, where, "a completion").get("choices")
    if items is None:
        return []
    if not isinstance(items, list):
        raise _fail(where, "'choices'", "a list", items)
    return [choice(c, where) for c in items]


def choice(c, where: str) -> dict:
    """One choice as {index, text, finish_reason, logprobs: {tokens, token_logprobs, top_logprobs}, ...}."""
    c = obj(c, where, "each of 'choices'")
    index = c.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool):
        raise _fail(where, "a choice's 'index'", "a whole number", index)
    text = c.get("text") or ""
    if not isinstance(text, str):
        raise _fail(where, "a choice's 'text'", "a string", text)
    reason = c.get("finish_reason")
    if reason is not None and not isinstance(reason, str):
        raise _fail(where, "a choice's 'finish_reason'", "a string or null", reason)
    out = {**c, "index": index, "text": text, "finish_reason": reason}
    lp = c.get("logprobs")
    if lp is not None:
        out["logprobs"] = logprobs(lp, where)
    return out


def logprobs(lp, where: str) -> dict:
    lp = obj(lp, where, "a choice's 'logprobs'")
    tokens = _list(lp.get("tokens"), where, "'logprobs.tokens'")
    if not all(isinstance(t, str) for t in tokens):
        raise _fail(where, "'logprobs.tokens'", "a list of strings", tokens)
    values = _list(lp.get("token_logprobs"), where, "'logprobs.token_logprobs'")
    if not all(v is None or _number(v) for v in values):
        raise _fail(where, "'logprobs.token_logprobs'", "a list of numbers", values)
    tops = _list(lp.get("top_logprobs"), where, "'logprobs.top_logprobs'")
    for top in tops:
        if top is None:
            continue
        if not isinstance(top, dict) or not all(isinstance(k, str) and _number(v) for k, v in top.items()):
            raise _fail(where, "each of 'logprobs.top_logprobs'", "an object of token: number", top)
    offsets = lp.get("text_offset")
    return {**lp, "tokens": tokens, "token_logprobs": [None if v is None or math.isnan(v) else float(v) for v in values],
            "top_logprobs": [{k: float(v) for k, v in top.items() if not math.isnan(v)} if top else None for top in tops],
            **({"text_offset": offsets} if offsets is not None else {})}


def token_ids(data, where: str, key: str = "tokens") -> list[int]:
    """A tokenize endpoint's answer: {key: [int, ...]}."""
    ids = obj(data, where, "a tokenize answer").get(key)
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise _fail(where, f"'{key}' of a tokenize answer", "a list of whole numbers", ids)
    return ids


def text_field(data, where: str, key: str) -> str:
    """A detokenize endpoint's answer: {key: str}."""
    value = obj(data, where, "a detokenize answer").get(key)
    if not isinstance(value, str):
        raise _fail(where, f"'{key}' of a detokenize answer", "a string", value)
    return value


def whole_number(value, where: str, field: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(where, field, "a whole number", value)
    return value


def _list(value, where: str, field: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(where, field, "a list", value)
    return value


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
