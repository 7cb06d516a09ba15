"""A scripted OpenAI-compatible server on 127.0.0.1 for protocol tests.

Each route answers from a queue of scripted replies (the last one repeats). It stops by itself
after `lifetime` seconds so a failing test can never leave it running.

It can misbehave in every way a real server has: any status with any headers (500, 429 with
Retry-After), bodies of the wrong shape or not JSON at all (`raw`), a reply that hangs before or
in the middle of a stream (`delay`, `hang`), a stream cut mid-event (`cut`), and, with the text
ECHO_KEY anywhere in a body or event, the request's own Authorization header written back.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


ECHO_KEY = "<<ECHO-AUTHORIZATION>>"  # replaced by the request's Authorization header, as a leaky server would


def sse(*chunks, done: bool = True, hang: float = 0.0, cut: str | None = None) -> dict:
    """A streamed reply: each chunk a dict (sent as JSON) or a raw string (sent as is); then, with
    `hang`, that many seconds of silence; with `cut`, these raw bytes and the connection closed."""
    return {"sse": list(chunks), "done": done, "hang": hang, "cut": cut}


def reply(status: int = 200, body=None, headers: dict | None = None, delay: float = 0.0) -> dict:
    """A whole answer: `body` as JSON (any shape), or bytes sent as they are."""
    return {"status": status, "body": body if body is not None else {}, "headers": headers or {}, "delay": delay}


def raw(text: str | bytes, status: int = 200) -> dict:
    """A body that is not JSON (an HTML error page, a proxy's text)."""
    return reply(status, text.encode() if isinstance(text, str) else text)


def choice(text: str, *, index: int = 0, logprob: float | None = -0.5, top: dict | None = None, finish=None, tokens=None, **extra) -> dict:
    """One streamed choice in the OpenAI completions shape, with logprobs for one token."""
    c = {"index": index, "text": text, "finish_reason": finish, **extra}
    toks = [text] if tokens is None else tokens
    if toks:
        c["logprobs"] = {"tokens": toks, "token_logprobs": [logprob] * len(toks),
                         "top_logprobs": [top if top is not None else {t: logprob} for t in toks],
                         "text_offset": list(range(len(toks)))}
    return {"choices": [c]}


class FakeServer:
    def __init__(self, owned_by: str = "vllm", lifetime: float = 60.0):
        self.routes: dict[tuple[str, str], list[dict]] = {
            ("GET", "/v1/models"): [reply(body={"object": "list", "data": [{"id": "fake-model", "owned_by": owned_by}]})],
        }
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                fake._answer(self, "GET")

            def do_POST(self):
                fake._answer(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.005}, daemon=True)
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True

    def __enter__(self):
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    def on(self, method: str, path: str, *replies: dict) -> "FakeServer":
        self.routes[(method, path)] = list(replies)
        return self

    def bodies(self, path: str = "/v1/completions") -> list[dict]:
        return [r["body"] for r in self.requests if r["path"] == path]

    def _answer(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        self.requests.append({"method": method, "path": h.path, "headers": dict(h.headers),
                              "body": json.loads(raw) if raw else None, "t": time.monotonic()})
        queue = self.routes.get((method, h.path))
        if not queue:
            return self._send(h, reply(404, {"error": {"message": f"no route {h.path}"}}))
        r = queue.pop(0) if len(queue) > 1 else queue[0]
        auth = (h.headers.get("authorization") or "").encode()
        try:
            if "sse" in r:
                return self._stream(h, r, auth)
            self._send(h, r, auth)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a hanging reply
            pass

    def _send(self, h, r: dict, auth: bytes = b"") -> None:
        if r.get("delay"):
            time.sleep(r["delay"])
        data = r["body"] if isinstance(r["body"], bytes) else json.dumps(r["body"]).encode()
        data = data.replace(ECHO_KEY.encode(), auth)
        h.send_response(r["status"])
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in r["headers"].items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _stream(self, h, r: dict, auth: bytes = b"") -> None:
        # no Content-Length: the body ends when the connection closes, as a dropped stream does
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Connection", "close")
        h.end_headers()
        for c in r["sse"]:
            line = c if isinstance(c, str) else f"data: {json.dumps(c)}\n\n"
            h.wfile.write(line.encode().replace(ECHO_KEY.encode(), auth))
            h.wfile.flush()
        if r.get("hang"):
            time.sleep(r["hang"])
        if r.get("cut") is not None:
            h.wfile.write(r["cut"].encode())
            h.wfile.flush()
            h.close_connection = True
            return
        if r["done"]:
            h.wfile.write(b"data: [DONE]\n\n")
        h.wfile.flush()
        h.close_connection = True
