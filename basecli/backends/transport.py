"""HTTP for the remote backend: timeouts, retries with backoff, one-line errors, server-sent events.

Retried: connection failures, 429 and 5xx (honouring Retry-After). Not retried: other 4xx, whose
message from the server is shown as is; and a stream that breaks after it started (its text is
already on the screen; the caller keeps it and says so).
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import sys
import time
from typing import Iterable, Iterator

from basecli.errors import BasecliError, redact, secret

RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_BODY = 256 << 20  # a JSON answer larger than this is not one basecli asked for


class RemoteError(BasecliError):
    """The server refused or could not be reached. 4xx (the request itself) exits 2, the rest 1.
    `status` is the HTTP status the server answered, None when it did not answer."""

    status: int | None = None


class StreamBroken(Exception):
    """A stream that started and then broke: the caller keeps what arrived."""

    def __init__(self, message: str):
        super().__init__(redact(message))


def note(line: str) -> None:
    print(f"basecli: {redact(line)}", file=sys.stderr, flush=True)


class Transport:
    def __init__(self, base_url: str, api_key: str | None = None, *, connect_timeout: float | None = None,
                 read_timeout: float | None = None, retries: int | None = None, backoff: float = 1.0,
                 max_wait: float = 60.0):
        import httpx

        from basecli.config import env_number

        self.base_url = base_url.rstrip("/")
        # vLLM and llama.cpp serve /tokenize beside /v1, not under it
        self.root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        secret(api_key)  # a server that echoes the Authorization header must not get it shown
        self.connect_timeout = connect_timeout if connect_timeout is not None else env_number("BASECLI_CONNECT_TIMEOUT")
        self.read_timeout = read_timeout if read_timeout is not None else env_number("BASECLI_TIMEOUT")
        self.retries = retries if retries is not None else env_number("BASECLI_RETRIES")
        self.backoff = backoff
        self.max_wait = max_wait
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(self.read_timeout, connect=self.connect_timeout)
        self.client = httpx.Client(timeout=timeout, headers=headers, limits=httpx.Limits(max_connections=16))

    def get_json(self, path: str, *, root: bool = False, retry_on=RETRY_STATUSES) -> dict:
        resp = self.send("GET", self._url(path, root), retry_on=retry_on)
        return self.json(resp)

    def post_json(self, path: str, body: dict, *, root: bool = False, retry_on=RETRY_STATUSES) -> dict:
        resp = self.send("POST", self._url(path, root), body=body, retry_on=retry_on)
        return self.json(resp)

    def _url(self, path: str, root: bool) -> str:
        return (self.root if root else self.base_url) + path

    def json(self, resp) -> dict:
        """The answer's JSON object (read at most MAX_BODY bytes of it); a RemoteError for anything else."""
        import httpx

        body = b""
        try:
            for part in resp.iter_bytes():
                body += part
                if len(body) > MAX_BODY:
                    resp.close()
                    raise RemoteError(f"{resp.url} answered with more than {MAX_BODY >> 20} MiB; that is not a completion")
        except httpx.TimeoutException:
            raise RemoteError(f"{resp.url} stopped sending its answer for {self.read_timeout:g} s "
                              f"(BASECLI_TIMEOUT sets how long to wait)") from None
        except httpx.HTTPError as e:
            raise RemoteError(f"{resp.url}: the answer broke off ({_reason(e)})") from None
        try:
            data = json.loads(body)
        except ValueError:
            raise RemoteError(f"{resp.url} answered with something that is not JSON: {body[:120]!r}") from None
        if not isinstance(data, dict):
            raise RemoteError(f"{resp.url} answered with a JSON {type(data).__name__} where an object was expected: "
                              f"{body[:120]!r}")
        return data

    def send(self, method: str, url: str, *, body: dict | None = None, stream: bool = False, retry_on=RETRY_STATUSES):
        """The response to a request, after retries; a RemoteError with the server's own words otherwise."""
        import httpx

        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                request = self.client.build_request(method, url, json=body)
                resp = self.client.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                if attempt >= min(self.retries, 2):  # a refused connection is rarely fixed by waiting long
                    raise RemoteError(f"cannot reach {url} ({_reason(e)}); is the server running, and is --base-url right?") from None
                self._wait(self._backoff(attempt), f"cannot reach {url} ({_reason(e)})", attempt)
                continue
            except httpx.TimeoutException:
                raise RemoteError(f"{url} sent nothing for {self.read_timeout:g} s; the server may be busy or stuck "
                                  f"(BASECLI_TIMEOUT sets how long to wait)") from None
            except httpx.HTTPError as e:
                raise RemoteError(f"request to {url} failed: {_reason(e)}") from None
            if resp.status_code < 400:
                return resp
            if stream:
                resp.read()
            message = redact(server_message(resp))
            status = f"{resp.status_code} {resp.reason_phrase}".strip()
            resp.close()
            if resp.status_code in retry_on and not last:
                wait = retry_after(resp)
                if wait is not None and wait > self.max_wait:
                    raise RemoteError(f"{url} answered {status} and asks to wait {wait:.0f} s before retrying: {message}")
                self._wait(wait if wait is not None else self._backoff(attempt), f"{url} answered {status}: {message}", attempt)
                continue
            hint = ""
            if resp.status_code in (401, 403):
                hint = " (check the API key: a profile reads it from the variable named by --api-key-env)"
            elif resp.status_code == 404:
                hint = " (check --base-url, which usually ends in /v1, and --model)"
            code = 2 if 400 <= resp.status_code < 500 and resp.status_code != 429 else 1
            error = RemoteError(f"{url} answered {status}: {message}{hint}", exit_code=code)
            error.status = resp.status_code
            raise error
        raise RemoteError(f"{url}: no answer after {self.retries} retries")

    def _backoff(self, attempt: int) -> float:
        return self.backoff * (2**attempt) * (0.8 + 0.4 * random.random())

    def _wait(self, seconds: float, why: str, attempt: int) -> None:
        note(f"{why}; retrying in {seconds:.1f} s (retry {attempt + 1})")
        time.sleep(seconds)

    def close(self) -> None:
        self.client.close()


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def retry_after(resp) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def server_message(resp) -> str:
    """The server's own explanation, from the error shapes of OpenAI, vLLM, FastAPI and llama.cpp."""
    try:
        data = resp.json()
    except ValueError:
        text = " ".join(resp.text.split())
        return text[:300] or "(no message)"
    msg = None
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            msg = err.get("message") or err.get("msg")
        elif isinstance(err, list) and err and isinstance(err[0], dict):  # FastAPI validation errors
            msg = "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in err[:3])
        elif err is not None:
            msg = str(err)
    return " ".join(str(msg if msg is not None else data).split())[:300]


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The data of each server-sent event (WHATWG rules: comments skipped, data lines joined)."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):  # keep-alive comments (llama-cpp-python pings)
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:  # no blank line after it: the stream may have been cut; the parser judges the payload
        yield "\n".join(data)


def json_events(resp) -> Iterator[dict]:
    """Chunks of a streamed completion until [DONE]; StreamBroken if it breaks, errors or ends early."""
    import httpx

    done = False
    try:
        for payload in sse_data(resp.iter_lines()):
            if payload.strip() == "[DONE]":
                done = True
                break
            try:
                chunk = json.loads(payload)
            except ValueError:
                raise StreamBroken(f"the server sent a malformed event: {payload[:80]!r}") from None
            if not isinstance(chunk, dict):
                raise StreamBroken(f"the server sent an unexpected event: {payload[:80]!r}")
            if "error" in chunk and "choices" not in chunk:
                err = chunk["error"]
                raise StreamBroken(f"the server reported an error mid-stream: {err.get('message', err) if isinstance(err, dict) else err}")
            yield chunk
    except httpx.TimeoutException:
        raise StreamBroken("the server sent nothing for a while (BASECLI_TIMEOUT)") from None
    except httpx.HTTPError as e:
        raise StreamBroken(f"the connection broke ({_reason(e)})") from None
    if not done:
        raise StreamBroken("the stream ended without its closing [DONE]")
