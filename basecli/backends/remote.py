"""A model behind an OpenAI-compatible /v1/completions server: vLLM, llama.cpp, a hosted provider.

Same interface as LocalBackend. Requests are planned to fit what the server accepts: several
samples of one prompt go as one request with `n`, several prompts with one setting as one
request with a list of prompts, and anything else as one request per row, sent concurrently
up to a bound. Every request streams server-sent events, so text appears as it is generated.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from basecli.backends import Backend, shapes
from basecli.backends.remote_tokenizer import RemoteTokenizer, local_tokenizer, token_bytes
from basecli.backends.transport import RemoteError, StreamBroken, Transport, json_events, note
from basecli.config import SamplingParams, fresh_seed
from basecli.errors import UsageError, redact, stream_dropped
from basecli.events import Event, ScoredToken

DEFAULT_CONTEXT = 4096  # when the server does not say and the profile does not either
LLAMA_CPP_PYTHON_CONTEXT = 2048  # llama-cpp-python's own default n_ctx, which it never reports


@dataclass(frozen=True)
class Flavour:
    n: bool  # honours n (several samples per request)
    lists: bool  # takes a list of prompts in one request
    max_logprobs: int  # most alternatives per token it returns
    concurrency: int  # requests in flight at once
    names: dict  # our non-OpenAI parameters -> its names; missing = it has none
    neutral: dict = field(default_factory=dict)  # values it needs to switch a control off (its defaults are not neutral)
    stream: bool = True  # its event stream is trustworthy


FLAVOURS = {
    "vllm": Flavour(True, True, 20, 8, {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repetition_penalty", "ignore_eos": "ignore_eos"},
                    {"top_k": -1}),
    # llama.cpp's C++ server: defaults are top_k 40, min_p 0.05, so neutral values are always sent
    "llamacpp": Flavour(False, False, 20, 4, {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repeat_penalty", "ignore_eos": "ignore_eos"}),
    # llama-cpp-python: one prompt, one sample per request, and a new request interrupts a running
    # stream, so requests go one at a time; defaults are top_k 40, min_p 0.05, repeat_penalty 1.1; it can
    # stream, but drops the bytes of characters split across tokens (Korean, emoji) when it streams
    # log-probabilities, so it is asked for whole completions, whose text is intact
    "llama-cpp-python": Flavour(False, False, 20, 1, {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repeat_penalty"},
                                stream=False),
    # the OpenAI API itself: other parameters are sent under their common names, with a note
    "openai": Flavour(True, True, 5, 4, {}),
}
NEUTRAL = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "ignore_eos": False}
OWNED_BY = {"vllm": "vllm", "llamacpp": "llamacpp", "me": "llama-cpp-python"}


@dataclass
class _Job:
    rows: list[int]  # choice index -> row
    body: dict
    params: SamplingParams


class _Row:
    """One row's events, held back by one so the server's closing chunk can mark the last token."""

    def __init__(self, row: int, eos_id: int):
        self.row, self.eos_id = row, eos_id
        self.step = 0
        self.held: Event | None = None
        self.finished = False

    def push(self, ev: Event) -> list[Event]:
        out = [self.held] if self.held else []
        self.held = ev
        self.step += 1
        return out

    def finish(self, reason: str, text: str = "") -> list[Event]:
        out = [self.held] if self.held else []
        if reason == "eos" or self.held is None:
            # the end of a document has no token text; logprob 0.0 because servers do not report it
            out.append(Event(self.row, self.step, self.eos_id if reason == "eos" else -1, "", text, 0.0, [], reason))
        else:
            self.held.text += text
            self.held.finish_reason = reason
        self.held, self.finished = None, True
        return out


class RemoteBackend(Backend):
    local = False
    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None, kind: str = "auto",
                 tokenizer: str | None = None, context_length: int | None = None, name: str | None = None,
                 transport: Transport | None = None):
        from basecli.backends.profiles import normalise_url

        t0 = time.perf_counter()
        self.base_url = normalise_url(base_url)
        self.transport = transport or Transport(self.base_url, api_key)
        listed = self._list_models()
        self.kind = kind if kind != "auto" else _detect(listed)
        self.flavour = FLAVOURS[self.kind]
        if model is None:
            if not listed:
                raise UsageError(f"{self.base_url} lists no models; name one with --model")
            model = listed[0]["id"]
        self.model = model
        self.name = name or model
        info = next((m for m in listed if m.get("id") == model), {})
        served = info.get("max_model_len") or self._llamacpp_context()
        if context_length is not None and not (isinstance(context_length, int) and context_length > 1):
            raise UsageError(f"the context length of {self.name} must be a whole number above 1, got {context_length!r}")
        # "assumed" where neither the profile nor the server says (llama-cpp-python does not): info reports it
        self.context_source = "profile" if context_length else "server" if served else "assumed"
        assumed = LLAMA_CPP_PYTHON_CONTEXT if self.kind == "llama-cpp-python" else DEFAULT_CONTEXT
        self.context_length = int(context_length or served or assumed)
        local = local_tokenizer(tokenizer) if tokenizer else None
        self.tokenizer = RemoteTokenizer(self.name, self.transport, self.kind, model, local)
        self.load_seconds = time.perf_counter() - t0
        self._noted: set[str] = set()

    # --- discovery ----------------------------------------------------------------------------

    def _list_models(self) -> list[dict]:
        try:
            data = self.transport.get_json("/models")
        except RemoteError as e:
            if e.status == 404:  # some providers have no model list; --model then names it (not "404" in a port number)
                return []
            raise
        return shapes.listed_models(data, f"{self.base_url}/models")

    def _llamacpp_context(self) -> int | None:
        if self.kind != "llamacpp":
            return None
        try:
            props = self.transport.get_json("/props", root=True, retry_on=())
        except RemoteError:
            return None
        where = f"{self.transport.root}/props"
        settings = props.get("default_generation_settings")
        n = props.get("n_ctx") or (settings.get("n_ctx") if isinstance(settings, dict) else None)
        n = shapes.whole_number(n, where, "'n_ctx'")
        return n if n and n > 1 else None

    def _note_once(self, key: str, line: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            note(line)

    # --- requests -----------------------------------------------------------------------------

    def encode(self, text: str, *, truncate: bool = False, reserve: int = 1) -> list[int]:
        ids = self.tokenizer.encode(text)
        room = self.context_length - reserve
        if len(ids) > room:
            if not truncate:
                raise UsageError(f"the prompt is {len(ids)} tokens but {self.name}'s context window is {self.context_length} "
                                 f"(with {reserve} kept for the answer); shorten it or pass --truncate to cut it from the left")
            note(f"warning: prompt cut from {len(ids)} to its last {room} tokens to fit the context window")
            ids = ids[len(ids) - room :]
        return ids

    def _fit(self, prompt: str, truncate: bool, reserve: int) -> str:
        if not truncate:
            return prompt  # too long: the server says so in its own words
        if not self.tokenizer.available:
            self._note_once("truncate", "warning: --truncate needs a tokenizer and this server has none; prompts are sent whole")
            return prompt
        ids = self.tokenizer.encode(prompt)
        fitted = self.encode(prompt, truncate=True, reserve=reserve)
        return prompt if len(fitted) == len(ids) else self.tokenizer.decode(fitted)

    def _body(self, prompt, p: SamplingParams, *, n: int, seed: int | None, logprobs: int) -> dict:
        body = {"model": self.model, "prompt": prompt, "max_tokens": p.max_tokens, "temperature": p.temperature,
                "top_p": p.top_p, "stream": True, "logprobs": logprobs}
        if p.stop:
            body["stop"] = list(p.stop)
        if seed is not None:
            body["seed"] = seed
        if n > 1:
            body["n"] = n
        for ours, value in (("top_k", p.top_k), ("min_p", p.min_p), ("repetition_penalty", p.repetition_penalty),
                            ("ignore_eos", p.ignore_eos)):
            theirs = self.flavour.names.get(ours)
            if theirs:  # always sent: these servers' own defaults are not neutral
                body[theirs] = self.flavour.neutral.get(ours, value) if value == NEUTRAL[ours] else value
            elif value != NEUTRAL[ours]:
                if self.kind == "openai":
                    body[ours] = value
                    self._note_once(ours, f"note: {ours}={value} is not part of the OpenAI completions API; "
                                          f"sent as '{ours}', which this server may ignore")
                else:
                    self._note_once(ours, f"note: this server ({self.kind}) has no {ours}; {ours}={value} is not applied")
        if self.kind == "openai" and len(p.stop) > 4:
            self._note_once("stop", "note: the OpenAI API takes at most 4 stop strings; the server may refuse more")
        return body

    def _plan(self, prompts: Sequence[str], params: Sequence[SamplingParams], seeds: Sequence[int | None],
              logprobs: int) -> list[_Job]:
        fl = self.flavour
        units: dict = {}  # (prompt, setting) -> rows; samples of one prompt share a request where n works
        for row, (prompt, p) in enumerate(zip(prompts, params)):
            key = (prompt, p.with_(seed=None), row if not fl.n else None)
            units.setdefault(key, []).append(row)
        merged: dict = {}  # prompts with one setting, n and seed share a request where lists work
        for (prompt, setting, _), rows in units.items():
            seed = seeds[rows[0]]
            key = (setting, len(rows), None if setting.greedy else seed, None if fl.lists else rows[0])
            merged.setdefault(key, []).append((prompt, rows, seed))
        jobs = []
        for (setting, n, _, _), group in merged.items():
            prompt = group[0][0] if len(group) == 1 else [g[0] for g in group]
            rows = [r for g in group for r in g[1]]  # OpenAI numbers choices prompt-major: prompt i, sample j -> i*n + j
            # no seed asked for: a fresh one, as the local engine does (llama.cpp would reuse its own fixed seed)
            seed = group[0][2] if group[0][2] is not None else fresh_seed()
            jobs.append(_Job(rows, self._body(prompt, setting, n=n, seed=seed, logprobs=logprobs), setting))
        return jobs

    def stream(self, prompts: Sequence[str], params: Sequence[SamplingParams], *, alternatives: int = 0,
               entropy: bool = False, seeds: Sequence[int] | None = None, truncate: bool = False) -> Iterator[Event]:
        # servers refuse prompt + max_tokens over the window, so room for the answer is kept
        prompts = [self._fit(pr, truncate, min(p.max_tokens, self.context_length // 2)) for pr, p in zip(prompts, params)]
        seeds = list(seeds) if seeds is not None else [p.seed for p in params]
        want = max(alternatives, 20 if entropy else 1)
        k = min(want, self.flavour.max_logprobs)
        if alternatives > k:
            self._note_once("alternatives", f"note: this server returns at most {k} alternatives per token; showing {k}")
        if entropy:
            self._note_once("entropy", f"note: entropy is estimated from the top {k} tokens the server returns")
        jobs = self._plan(prompts, params, seeds, k)
        if len(jobs) == 1:
            return self._run(jobs[0], min(alternatives, k), entropy)
        return self._concurrent(jobs, min(alternatives, k), entropy)

    def _concurrent(self, jobs: list[_Job], alternatives: int, entropy: bool) -> Iterator[Event]:
        """Run jobs on a few threads, merging their events as they arrive."""
        out: queue.Queue = queue.Queue()
        todo = iter(jobs)
        lock = threading.Lock()
        stop = threading.Event()
        done = object()

        def worker():
            while not stop.is_set():
                with lock:
                    job = next(todo, None)
                if job is None:
                    break
                try:
                    for ev in self._run(job, alternatives, entropy):
                        if stop.is_set():
                            break
                        out.put(ev)
                except BaseException as e:  # handed to the consumer, which raises it
                    out.put(e)
                    break
            out.put(done)

        workers = [threading.Thread(target=worker, daemon=True) for _ in range(min(self.flavour.concurrency, len(jobs)))]
        for w in workers:
            w.start()
        running = len(workers)
        try:
            while running:
                item = out.get()
                if item is done:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            stop.set()

    def _run(self, job: _Job, alternatives: int, entropy: bool) -> Iterator[Event]:
        eos_id = min(self.tokenizer.eos_ids) if self.tokenizer.eos_ids else -1
        rows = {r: _Row(r, eos_id) for r in job.rows}
        url = self.transport.base_url + "/completions"
        body = job.body if self.flavour.stream else {**job.body, "stream": False}
        resp = self.transport.send("POST", url, body=body, stream=True)
        broken = None
        try:
            if "text/event-stream" in resp.headers.get("content-type", "text/event-stream"):
                chunks = json_events(resp)
            else:  # a whole completion at once: asked for (llama-cpp-python), or a server that does not stream
                chunks = iter([{"choices": [c for whole in shapes.choices(self.transport.json(resp), url)
                                            for c in split_whole(whole)]}])
            for chunk in chunks:
                for choice in shapes.choices(chunk, url):
                    index = choice["index"]
                    if not 0 <= index < len(job.rows):
                        continue
                    yield from self._choice(rows[job.rows[index]], choice, job, alternatives, entropy)
        except shapes.Surprise as e:
            if not any(r.step or r.finished for r in rows.values()):
                raise  # nothing arrived to keep: an error, not a partial answer
            broken = str(e)
        except StreamBroken as e:
            broken = str(e)
        except KeyboardInterrupt:  # the tokens held back for the closing chunk are the user's too
            for r in rows.values():
                if r.held is not None:
                    held, r.held = r.held, None
                    yield held
            raise
        finally:
            resp.close()
        left = [r for r in rows.values() if not r.finished]
        if left:
            got = sum(r.step for r in left)
            why = broken or f"it gave {len(job.rows) - len(left)} of {len(job.rows)} completions"
            note(f"warning: the stream from {url} stopped early: {why}; keeping the {got} tokens that arrived "
                 f"(finish_reason 'dropped', exit status 3)")
            stream_dropped(why)
            for r in left:
                yield from r.finish("dropped")

    def _choice(self, row: _Row, choice: dict, job: _Job, alternatives: int, entropy: bool) -> list[Event]:
        p, asked = job.params, job.body.get("logprobs") or 0
        if row.finished:
            return []
        out: list[Event] = []
        text = redact(choice["text"])
        lp = choice.get("logprobs") or {}
        tokens = lp.get("tokens") or []
        if not tokens and text and not choice.get("finish_reason"):
            self._note_once("nologprobs", "warning: this server returned no log-probabilities; probabilities are unknown (NaN)")
            tokens, lp = [text], {}
        token_lps = lp.get("token_logprobs") or []
        tops = lp.get("top_logprobs") or []
        for i, tok in enumerate(tokens):
            piece = token_bytes(tok)
            logprob = token_lps[i] if i < len(token_lps) and token_lps[i] is not None else math.nan
            top = tops[i] if i < len(tops) and tops[i] else {}
            alts = self._alternatives(top, tok, alternatives, asked)
            ent = _entropy(top, p) if entropy else None
            ev = Event(row.row, row.step, self.tokenizer.id_for_text(piece), redact(piece.decode("utf-8", errors="replace")),
                       text if i == len(tokens) - 1 else "", logprob, alts, None, ent)
            out += row.push(ev)
        reason = choice.get("finish_reason")
        if reason:
            out += row.finish(self._finish_reason(reason, choice, p), "" if tokens else text)
        return out

    def _alternatives(self, top: dict, chosen: str, k: int, asked: int) -> list[tuple[int, float]]:
        items = list(top.items())
        if len(items) > asked:
            # llama-cpp-python adds the chosen token to the top `asked`; it is not an alternative of itself
            items = [it for it in items if it[0] != chosen]
        items.sort(key=lambda it: -it[1])
        return [(self.tokenizer.id_for_text(token_bytes(t)), v) for t, v in items[:k]]

    def _finish_reason(self, reason: str, choice: dict, p: SamplingParams) -> str:
        if reason == "length":
            return "length"
        stop_reason = choice.get("stop_reason")  # vLLM: the stop string that matched, None at end of text
        if isinstance(stop_reason, str):
            return "stop"
        if self.kind == "vllm" or not p.stop:
            return "eos"
        return "stop"  # other servers say "stop" for both; a stop string is the likelier with --stop given

    def score(self, text: str, *, context: str | None = None, alternatives: int = 0, stride: int | None = None,
              window: int | None = None, progress=None) -> list[ScoredToken]:
        from basecli.backends.remote_score import score

        if stride is not None or window is not None:
            raise UsageError("--window/--stride need the local engine: a server scores the whole text in one request "
                             "(with --base-url leave them out)")

        return score(self, text, context=context, alternatives=alternatives, progress=progress)


def split_whole(choice: dict) -> list[dict]:
    """A whole completion as the chunks a stream would have sent: one per token, then the finish.

    The text is the completion's own, laid over the tokens in order: text a token's own string
    lost (part of a character) comes out with the next token that has any.
    """
    full = choice.get("text") or ""
    lp = choice.get("logprobs") or {}
    tokens = lp.get("tokens") or []
    index = choice.get("index", 0)
    if not tokens:
        return [{"index": index, "text": full, "finish_reason": choice.get("finish_reason")}]
    pos, out = 0, []
    for i, tok in enumerate(tokens):
        found = full.find(tok, pos, pos + len(tok) + 8) if tok else -1
        piece = ""
        if found >= 0:
            piece, pos = full[pos : found + len(tok)], found + len(tok)
        if i == len(tokens) - 1:
            piece += full[pos:]
        one = {k: [v[i]] for k, v in lp.items() if isinstance(v, list) and i < len(v)}
        out.append({"index": index, "text": piece, "logprobs": one, "finish_reason": None})
    out.append({**{k: v for k, v in choice.items() if k not in ("text", "logprobs")}, "text": "", "index": index})
    return out


def _entropy(top: dict, p: SamplingParams) -> float | None:
    """Entropy (nats) of the sampling distribution, from the top tokens only: a lower bound."""
    if p.greedy:
        return 0.0
    if not top:
        return None
    lps = sorted(top.values(), reverse=True)
    if p.top_k:
        lps = lps[: p.top_k]
    scaled = [v / p.temperature for v in lps]
    m = max(scaled)
    z = sum(math.exp(v - m) for v in scaled)
    return -sum(math.exp(v - m) / z * (v - m - math.log(z)) for v in scaled)


def _detect(listed: list[dict]) -> str:
    for m in listed:
        kind = OWNED_BY.get(str(m.get("owned_by", "")).lower())
        if kind:
            return kind
    return "openai"


def from_profile(profile) -> RemoteBackend:
    return RemoteBackend(profile.base_url, profile.model, api_key=profile.api_key(), kind=profile.kind,
                         tokenizer=profile.tokenizer, context_length=profile.context_length, name=profile.name)
