"""Scoring a given text on a remote server: the prompt echoed back with its log-probabilities."""

from __future__ import annotations

from basecli.backends import shapes
from basecli.backends.remote_tokenizer import token_bytes
from basecli.backends.transport import RemoteError
from basecli.events import ScoredToken

UNSHIFT_TOP = 100  # how many top tokens llama-cpp-python is asked for, to read log-probs from (see _unshift)


def score(backend, text: str, *, context: str | None = None, alternatives: int = 0, progress=None) -> list[ScoredToken]:
    """Log-probabilities of TEXT's tokens after CONTEXT, from the server's echo of the prompt.

    `progress(done, total)` is called once, when the answer is in.
    """
    prefix = context or ""
    prompt = prefix + text
    k = min(max(alternatives, 1), backend.flavour.max_logprobs)
    if backend.kind == "llama-cpp-python":
        k = max(k, UNSHIFT_TOP)
    # one generated token: some servers take max_tokens 0 as "no limit"
    body = {"model": backend.model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": k}
    cannot = f"this server ({backend.name} at {backend.base_url}) cannot score prompts"
    try:
        data = backend.transport.post_json("/completions", body)
    except RemoteError as e:
        said = str(e).lower()
        if e.exit_code == 2 and ("echo" in said or "logprob" in said):
            raise RemoteError(f"{cannot}: it refused echo with logprobs ({e})", exit_code=2) from None
        raise
    where = f"{backend.base_url}/completions"
    choice = (shapes.choices(data, where) or [{}])[0]
    lp = choice.get("logprobs") or {}
    tokens = lp.get("tokens") or []
    usage = shapes.obj(data.get("usage") or {}, where, "'usage'")
    prompt_tokens = shapes.whole_number(usage.get("prompt_tokens"), where, "'usage.prompt_tokens'")
    # llama-cpp-python echoes no generated token, vLLM one; a token past the prompt's text is dropped below
    n_prompt = max(0, min(len(tokens) - 1 if prompt_tokens is None else prompt_tokens, len(tokens)))
    token_lps = list(lp.get("token_logprobs") or [])[:n_prompt]
    if not tokens or (n_prompt > 1 and all(v is None for v in token_lps)):
        raise RemoteError(f"{cannot}: it returns no log-probabilities for the prompt with echo")
    tops = list(lp.get("top_logprobs") or [])
    if backend.kind == "llama-cpp-python" and not backend.tokenizer.server_adds_bos():
        token_lps, tops = _unshift(backend, tokens, tops, n_prompt)
    out = []
    for i, (start, end, special) in enumerate(_positions(tokens[:n_prompt], prompt)):
        if special or (start < len(prefix) and end <= len(prefix)):
            continue  # the server's BOS, or a token of the context
        tok = tokens[i]
        logprob = token_lps[i] if i < len(token_lps) else None
        top = tops[i] if i < len(tops) and tops[i] else {}
        rank = None
        if logprob is not None and top:
            higher = sum(1 for t, v in top.items() if v > logprob and t != tok)
            rank = higher + 1 if (tok in top or higher < len(top)) else None
        piece = token_bytes(tok)
        out.append(ScoredToken(backend.tokenizer.id_for_text(piece), piece.decode("utf-8", errors="replace"), logprob, rank,
                               backend._alternatives(top, tok, alternatives, len(top)) if alternatives else [], i))
    if progress is not None:
        progress(len(out), len(out))
    return out


def _positions(tokens: list[str], prompt: str) -> list[tuple[int, int, bool]]:
    """(start, end, special) character span of each echoed token in the prompt.

    A leading token that is not in the prompt's text is the server's BOS, and one after its end a
    generated token (llama-cpp-python counts its BOS in prompt_tokens). A token whose text the
    server lost (part of a UTF-8 character) gets an empty span where it stands.
    """
    pos, spans = 0, []
    for tok in tokens:
        if pos >= len(prompt):  # past the prompt: a generated token the server counted in
            spans.append((pos, pos, True))
            continue
        if prompt.startswith(tok, pos):
            spans.append((pos, pos + len(tok), False))
            pos += len(tok)
            continue
        found = prompt.find(tok, pos, pos + len(tok) + 4) if tok else -1
        if found >= 0:
            spans.append((found, found + len(tok), False))
            pos = found + len(tok)
        else:
            spans.append((pos, pos, pos == 0))
    return spans


def _unshift(backend, tokens: list[str], tops: list, n: int):
    """llama-cpp-python 0.3 echoes prompt log-probs one position late for models without a BOS token.

    Its entry i holds the distribution over token i+1 (top_logprobs[i] is right for position i+1;
    token_logprobs[i] is that distribution's value for token i, which means nothing; entry 0 is blanked,
    so token 1's distribution is asked for separately). So token i's log-prob is read from
    top_logprobs[i-1], and is unknown (None) outside the top UNSHIFT_TOP.
    """
    lps: list = [None]
    fixed: list = [None]
    missing = 0
    if n > 1 and not tops[0]:  # it blanks entry 0, which holds token 1's distribution: ask for that one
        body = {"model": backend.model, "prompt": tokens[0], "max_tokens": 1, "temperature": 0, "logprobs": UNSHIFT_TOP,
                "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "stream": False}
        where = f"{backend.base_url}/completions"
        first = (shapes.choices(backend.transport.post_json("/completions", body), where) or [{}])[0]
        given = (first.get("logprobs") or {}).get("top_logprobs") or [None]
        tops = [given[0]] + tops[1:]
    for i in range(1, n):
        top = tops[i - 1] or {}
        lps.append(top.get(tokens[i]))
        fixed.append(top)
        missing += top.get(tokens[i]) is None
    if missing:
        backend._note_once("unshift", f"note: llama-cpp-python reports prompt log-probs one token late for this model; "
                                      f"read from its top {UNSHIFT_TOP}, {missing} token(s) outside them have none")
    return lps, fixed
