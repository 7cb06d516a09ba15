"""Bad input as a hostile user gives it, and servers that misbehave, for every command (issue 15).

Each case is a row of a table: the command line (run in this process), what it sends on stdin,
its environment, how the fake server misbehaves. Every case must end with the documented exit
code (docs/errors.md), exactly one `basecli: error:` line (or, where documented, a warning),
no traceback, no API key anywhere, and BASECLI_HOME unchanged but for what the command
documents writing (chat: its transcript).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import invoke  # noqa: E402
from fake_openai import ECHO_KEY, FakeServer, choice, raw, reply, sse  # noqa: E402

KEY = "sk-test-5e3f9a1c7b2d4e6f"
TINY = ("-m", "{tiny}", "--dtype", "float32")  # the tiny Llama, in fp32 (bf16 is this CPU's auto)


@dataclass
class Case:
    args: tuple
    code: int = 2
    says: str = ""  # in the error line (or the warning, for warning cases)
    stdin: str | bytes | None = None
    env: dict = field(default_factory=dict)
    server: Callable | None = None  # sets the fake server's routes; '{url}' in args is its URL
    writes: tuple = ()  # what the command may create under BASECLI_HOME (path prefixes)
    warning: bool = False  # no error line: a 'basecli: warning:' line says it (exit 0 or 3)


def C(*args, **kw) -> Case:
    return Case(args, **kw)


# --- servers -----------------------------------------------------------------------------------

def route(*replies, path="/v1/completions", models=None):
    """A server whose `path` answers `replies` in turn (and /v1/models `models`, when given)."""
    def setup(fake: FakeServer):
        fake.on("POST" if path != "/v1/models" else "GET", path, *replies)
        if models is not None:
            fake.on("GET", "/v1/models", models)
    return setup


def streamed(*chunks, **kw):
    return route(sse(*chunks, **kw))


GOOD = [choice("Hello"), choice(" world", finish="length")]
ECHO = {"error": {"message": f"bad key: {ECHO_KEY}"}}


def remote(*args, **kw) -> Case:
    """A case against the fake server (a vLLM with tokenize endpoints), with an API key it may echo."""
    env = {"BASECLI_API_KEY": KEY, "BASECLI_RETRIES": "0", "BASECLI_TIMEOUT": "1", **kw.pop("env", {})}
    misbehave = kw.pop("server", None)

    def setup(fake: FakeServer):
        fake.on("POST", "/tokenize", reply(body={"tokens": [1, 2]}))
        fake.on("POST", "/detokenize", reply(body={"prompt": "x"}))
        if misbehave:
            misbehave(fake)
    return Case(args, env=env, server=setup, **kw)


# --- the table ---------------------------------------------------------------------------------

TEXT = [
    C("complete", "@/dev/zero", "-n", "2", says="NUL"),
    C("complete", "@{missing}", says="file not found"),
    C("complete", "@{dir}", says="is a directory"),
    C("complete", "@{nul}", says="NUL"),
    C("complete", "@{latin1}", says="not valid UTF-8"),
    C("complete", "@{cut_utf8}", says="ends inside a character"),
    C("complete", "@{big}", says="larger than", env={"BASECLI_MAX_INPUT_MB": "0.01"}),
    C("complete", "-", stdin=b"ab\x00cd", says="NUL"),
    C("complete", stdin=b"caf\xe9", says="not valid UTF-8"),
    C("complete", "-", stdin=b"x" * 20000, says="larger than", env={"BASECLI_MAX_INPUT_MB": "0.01"}),
    C("complete", "caf\udce9", *TINY, says="not valid UTF-8"),
    C("complete", "a\x00b", *TINY, says="NUL"),
    C("resample", "caf\udce9", *TINY, says="not valid UTF-8"),
    C("resample", "@/dev/zero", says="NUL"),
    C("resample", "@{latin1}", says="not valid UTF-8"),
    C("sweep", "caf\udce9", *TINY, says="not valid UTF-8"),
    C("sweep", "@/dev/zero", says="NUL"),
    C("score", "caf\udce9", *TINY, says="not valid UTF-8"),
    C("score", "@/dev/zero", says="NUL"),
    C("score", "@{empty}", *TINY, says="empty"),
    C("score", "", *TINY, says="empty"),
    C("score", "hello", "--context", "@{latin1}", *TINY, says="not valid UTF-8"),
    C("score", "hello", "--context", "caf\udce9", *TINY, says="not valid UTF-8"),
    C("tokenize", "caf\udce9", says="not valid UTF-8"),
    C("tokenize", "@/dev/zero", says="NUL"),
    C("tokenize", "@/dev/urandom", says="binary"),
    C("tokenize", "@{missing}", says="file not found"),
    C("tokenize", "-e", "cl100k_base", "-", stdin=b"\xff\xfe", says="not valid UTF-8"),
    C("tokenize", "-e", "cl100k_base", "--decode", "12 abc", says="", writes=("tiktoken",)),
    C("tokenize", "-e", "cl100k_base", "--decode", "99999999", says="", writes=("tiktoken",)),
    C("fewshot", "{tpl}", "caf\udce9", *TINY, says="not valid UTF-8"),
    C("fewshot", "{tpl}", "-", *TINY, stdin=b"caf\xe9\n", says="not valid UTF-8"),
    C("fewshot", "{tpl}", "-", *TINY, stdin=b"a\x00\n", says="NUL"),
    C("fewshot", "{tpl}", "x", "--var", "extra=@/dev/zero", *TINY, says="NUL"),
    C("chat", "--message", "caf\udce9", *TINY, says="not valid UTF-8", writes=("transcripts",)),
    C("chat", "--message", "", *TINY, says="empty"),
    C("chat", "--message", "   ", *TINY, says="empty"),
    C("recite", "@/dev/zero", says="NUL"),
    C("recite", "{missing}", says="file not found"),
    C("recite", "{dir}", says="directory"),
    C("recite", "@{latin1}", says="not valid UTF-8"),
]

NUMBERS = [
    C("complete", "hi", "-n", "0", says="--max-tokens"),
    C("complete", "hi", "-n", "-5", says="--max-tokens"),
    C("complete", "hi", "-n", "2000000", says="--max-tokens"),
    C("complete", "hi", "-n", "1e3", says="--max-tokens"),
    C("complete", "hi", "-t", "-1", says="--temperature"),
    C("complete", "hi", "-t", "nan", says="--temperature"),
    C("complete", "hi", "-t", "inf", "--json", says="--temperature"),
    C("complete", "hi", "-t", "1e309", says="--temperature"),
    C("complete", "hi", "-t", "abc", says="--temperature"),
    C("complete", "hi", "--top-k", "-1", says="--top-k"),
    C("complete", "hi", "--top-k", "99999999999999999999999", says="--top-k"),
    C("complete", "hi", "--top-p", "0", says="--top-p"),
    C("complete", "hi", "--top-p", "1.5", says="--top-p"),
    C("complete", "hi", "--top-p", "nan", says="--top-p"),
    C("complete", "hi", "--min-p", "1", says="--min-p"),
    C("complete", "hi", "--min-p", "-0.1", says="--min-p"),
    C("complete", "hi", "--repetition-penalty", "0", says="--repetition-penalty"),
    C("complete", "hi", "--repetition-penalty", "inf", says="--repetition-penalty"),
    C("complete", "hi", "-s", "-1", says="--seed"),
    C("complete", "hi", "-s", "18446744073709551616", says="--seed"),
    C("complete", "hi", "-s", "x", says="--seed"),
    C("complete", "hi", "--alternatives", "21", says="--alternatives"),
    C("complete", "hi", "--alternatives", "-1", says="--alternatives"),
    C("complete", "hi", "--stop", "", says="--stop"),
    C("resample", "hi", "-N", "0", says="--samples"),
    C("resample", "hi", "-N", "-3", says="--samples"),
    C("resample", "hi", "--best", "0", says="--best"),
    C("resample", "hi", "-N", "4", "--best", "9", says="--best"),
    C("resample", "hi", "--batch-size", "0", says="--batch-size"),
    C("resample", "hi", "-t", "-2", says="--temperature"),
    C("resample", "hi", "-s", "18446744073709551616", says="--seed"),
    C("sweep", "hi", "-t", "a,b", says="--temperature"),
    C("sweep", "hi", "-t", "", says="--temperature"),
    C("sweep", "hi", "-t", "-1,0", says="--temperature"),
    C("sweep", "hi", "-t", "nan", says="--temperature"),
    C("sweep", "hi", "--top-k", "99999999", says="--top-k"),
    C("sweep", "hi", "--top-p", "0,2", says="--top-p"),
    C("sweep", "hi", "--min-p", "1", says="--min-p"),
    C("sweep", "hi", "-N", "0", says="--samples"),
    C("sweep", "hi", "-t", "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8", "--top-k", "1,2,3,4,5,6,7,8", says="--yes"),
    C("fewshot", "{tpl}", "x", "-n", "0", *TINY, says="--max-tokens"),
    C("fewshot", "{tpl}", "x", "-t", "inf", *TINY, says="--temperature"),
    C("fewshot", "{tpl}", "x", "--top-p", "7", *TINY, says="--top-p"),
    C("fewshot", "--examples", "{tsv}", "-i", "x", "--k", "-1", *TINY, says="--k"),
    C("fewshot", "{tpl_seed}", "x", *TINY, says="--seed"),
    C("fewshot", "{tpl_temp}", "x", *TINY, says="--temperature"),
    C("chat", "--message", "hi", "-n", "0", *TINY, says="--max-tokens"),
    C("chat", "--message", "hi", "-t", "-1", *TINY, says="--temperature"),
    C("chat", "--message", "hi", "-s", "1180591620717411303424", *TINY, says="--seed"),
    C("score", "hi there", "--alternatives", "99", *TINY, says="--alternatives"),
    C("score", "hi there", "--stride", "10", "--window", "5", *TINY, says="--stride"),
    C("score", "hi there", "--at", "9999", *TINY, says="--at"),
    C("recite", "{ref}", "--samples", "0", *TINY, says="--samples"),
    C("recite", "{ref}", "--samples", "999", *TINY, says="--samples"),
    C("tokenize", "hi", "--limit", "-1", says="--limit"),
    C("bench", "--prompt-tokens", "0", says="--prompt-tokens"),
    C("bench", "--new-tokens", "1", says="--new-tokens"),
    C("bench", "--threads", "0", says="--threads"),
    C("models", "add", "x", "--base-url", "http://127.0.0.1:9/v1", "--context-length", "0", says="--context-length"),
]

FILES = [
    C("complete", "hi", "-m", "{missing}", says="not found"),
    C("complete", "hi", "-m", "{dir}", says="no config.json"),
    C("complete", "hi", "-m", "{gguf20}", says="too short"),
    C("complete", "hi", "-m", "{gguf_trunc}", says="truncated"),
    C("complete", "hi", "-m", "{gguf_text}", says="not a GGUF"),
    C("complete", "hi", "-m", "{gguf_garbage}", says="GGUF"),
    C("complete", "hi", "-m", "{gguf_missing}", says="not found"),
    C("tokenize", "hi", "-m", "{gguf20}", says="too short"),
    C("tokenize", "hi", "-m", "{gguf_trunc}", says="truncated"),
    C("tokenize", "hi", "-m", "{gguf_text}", says="not a GGUF"),
    C("info", "-m", "{gguf20}", says="too short"),
    C("info", "-m", "{gguf_trunc}", says="truncated"),
    C("info", "-m", "{gguf_text}", says="not a GGUF"),
    C("score", "hi there", "-m", "{gguf_garbage}", says="GGUF"),
    C("complete", "hi", "-m", "{cfg_garbage}", "--dtype", "float32", says="config.json"),
    C("complete", "hi", "-m", "{cfg_list}", "--dtype", "float32", says="config.json"),
    C("complete", "hi", "-m", "{st_length}", "--dtype", "float32", says="safetensors"),
    C("complete", "hi", "-m", "{st_header}", "--dtype", "float32", says="safetensors"),
    C("complete", "hi", "-m", "{tok_garbage}", "--dtype", "float32", says="tokenizer"),
    C("tokenize", "hi", "-m", "{tok_garbage}", says="tokenizer"),
    C("complete", "hi", "-m", "{nan}", "--dtype", "float32", says="NaN"),
    C("complete", "hi", "-m", "{pickle}", "--allow-pickle", "--dtype", "float32", says="pickle"),
    C("complete", "hi", "-m", "{pickle}", "--dtype", "float32", says="safetensors"),
    C("fewshot", "{missing}", "x", says="file not found"),
    C("fewshot", "{dir}", "x", says="directory"),
    C("fewshot", "/dev/zero", "x", says="NUL"),
    C("fewshot", "{tpl_unclosed}", "x", says="never closed"),
    C("fewshot", "{tpl_badint}", "x", says="max_tokens"),
    C("fewshot", "{tpl_badkey}", "x", says="front matter"),
    C("fewshot", "{tpl_novar}", "x", *TINY, says="no {{input}}"),
    C("fewshot", "{tpl_needs}", "x", *TINY, says="needs a value"),
    C("fewshot", "{tpl_broken_slot}", "x", *TINY, says="not a {{variable}}", code=0, warning=True),
    C("fewshot", "--examples", "{missing}", "-i", "x", says="file not found"),
    C("fewshot", "--examples", "{tsv_cells}", "-i", "x", says="tab-separated"),
    C("fewshot", "--examples", "{tsv_empty}", "-i", "x", says="no input"),
    C("fewshot", "--examples", "{nul}", "-i", "x", says="NUL"),
    C("fewshot", "--examples", "{tsv}", *TINY, says="needs an input"),
    C("fewshot", says="TEMPLATE"),
    C("template", "check", "{tpl_broken_slot}", code=1, says="not a {{variable}}", warning=True),
    C("template", "check", "{tpl_emptybody}", code=1, says="empty", warning=True),
    C("template", "check", "{missing}", says="file not found"),
    C("template", "check", "/dev/zero", says="NUL"),
    C("chat", "{missing}", "--message", "hi", says="file not found"),
    C("chat", "--resume", says="no transcripts"),
    C("chat", "--resume", "--transcript", "nope", says="no transcript"),
    C("chat", "--resume", "--transcript", "{transcript_text}", *TINY, says="not JSON"),
    C("chat", "--resume", "--transcript", "{transcript_shapes}", *TINY, says="transcript"),
    C("chat", "--resume", "--transcript", "{transcript_binary}", *TINY, says="NUL"),
]

ENV = [
    C("complete", "hi", *TINY, env={"BASECLI_THREADS": "0"}, says="BASECLI_THREADS"),
    C("complete", "hi", *TINY, env={"BASECLI_THREADS": "many"}, says="BASECLI_THREADS"),
    C("complete", "hi", *TINY, env={"BASECLI_QUANTIZE": "q3"}, says="BASECLI_QUANTIZE"),
    C("complete", "hi", *TINY, env={"BASECLI_ENGINE": "warp"}, says="BASECLI_ENGINE"),
    C("complete", "hi", env={"BASECLI_MODEL": "/nonexistent/model"}, says="not found"),
    C("complete", "hi", env={"BASECLI_MODEL": "no-such-alias"}, says="unknown model"),
    C("complete", "@{ref}", *TINY, env={"BASECLI_MAX_INPUT_MB": "0"}, says="BASECLI_MAX_INPUT_MB"),
    C("complete", "@{ref}", *TINY, env={"BASECLI_MAX_INPUT_MB": "-1"}, says="BASECLI_MAX_INPUT_MB"),
    C("complete", "@{ref}", *TINY, env={"BASECLI_MAX_INPUT_MB": "lots"}, says="BASECLI_MAX_INPUT_MB"),
    C("complete", "hi", env={"BASECLI_HOME": "{homefile}"}, says="BASECLI_HOME"),
    C("tokenize", "hi", env={"BASECLI_HOME": "{homefile}"}, says="BASECLI_HOME"),
    C("complete", "hi", env={"BASECLI_HOME": "/proc/basecli-home"}, says="BASECLI_HOME"),
    C("chat", "--message", "hi", *TINY, env={"BASECLI_HOME": "{homefile}"}, says="BASECLI_HOME"),
    C("models", "add", "x", "--base-url", "http://127.0.0.1:9/v1", env={"BASECLI_HOME": "{homefile}"}, says="BASECLI_HOME"),
    C("tokenize", "hi", "-e", "gpt2", env={"BASECLI_DOWNLOAD_TIMEOUT": "soon", "BASECLI_HOME": "{emptyhome}"}, says="BASECLI_DOWNLOAD_TIMEOUT"),
    remote("complete", "hi", "--base-url", "{url}", env={"BASECLI_RETRIES": "-1"}, says="BASECLI_RETRIES"),
    remote("complete", "hi", "--base-url", "{url}", env={"BASECLI_RETRIES": "1e9"}, says="BASECLI_RETRIES"),
    remote("complete", "hi", "--base-url", "{url}", env={"BASECLI_TIMEOUT": "0"}, says="BASECLI_TIMEOUT"),
    remote("complete", "hi", "--base-url", "{url}", env={"BASECLI_TIMEOUT": "nan"}, says="BASECLI_TIMEOUT"),
    remote("complete", "hi", "--base-url", "{url}", env={"BASECLI_CONNECT_TIMEOUT": "-1"}, says="BASECLI_CONNECT_TIMEOUT"),
    remote("complete", "hi", "--base-url", "{url}", env={"BASECLI_CONNECT_TIMEOUT": "x"}, says="BASECLI_CONNECT_TIMEOUT"),
    remote("tokenize", "hi", "--base-url", "{url}", env={"BASECLI_TOKENIZER": "no-such-encoding-or-model"}, says="unknown model"),
    C("complete", "hi", "--base-url", "{url}", "--quantize", "q4", says="--quantize"),
]

MODELS_LIST = [{"object": "list", "data": [{"id": "fake-model", "owned_by": "vllm"}]}]

SERVERS = [
    # the model list
    remote("complete", "hi", "--base-url", "{url}", server=route(reply(body=[1, 2]), path="/v1/models"), says="object", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=route(reply(body={"data": "x"}), path="/v1/models"), says="'data'", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=route(reply(body={"data": [{"id": "m", "max_model_len": "big"}]}),
                                                              path="/v1/models"), says="max_model_len", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=route(raw("<html>busy</html>"), path="/v1/models"), says="not JSON", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=route(reply(500, ECHO), path="/v1/models"), says="500", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=route(reply(401, ECHO), path="/v1/models"), says="401", code=2),
    remote("complete", "hi", "--base-url", "{url}", server=route(reply(body={"data": []}), path="/v1/models"), says="lists no models"),
    remote("complete", "hi", "--base-url", "http://127.0.0.1:9/v1", says="cannot reach", code=1),
    remote("complete", "hi", "--base-url", "not a url", says="", code=2),
    # whole answers of the wrong shape
    remote("complete", "hi", "--base-url", "{url}", server=route(reply(500, ECHO)), says="500", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=route(reply(503, {"error": "busy"}, headers={"Retry-After": "9999"})),
           env={"BASECLI_RETRIES": "2"}, says="asks to wait", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=route(reply(400, ECHO)), says="400", code=2),
    remote("complete", "hi", "--base-url", "{url}", server=route(reply(404, {"detail": "Not Found"})), says="404", code=2),
    remote("complete", "hi", "--base-url", "{url}", server=route(reply(body={"choices": "Hello"})), says="'choices'", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=route(reply(body={"choices": [1, 2]})), says="'choices'", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=route(reply(body=["a"])), says="object", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=route(raw(f"oops {ECHO_KEY}")), says="not JSON", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=streamed({"choices": "x"}), says="'choices'", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=streamed({"choices": [{"text": 5}]}), says="'text'", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=streamed({"choices": [{"text": "a", "index": "0"}]}), says="'index'", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=streamed({"choices": [{"text": "a", "logprobs": [1]}]}), says="logprobs", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=streamed({"choices": [{"text": "a", "logprobs": {"tokens": [1]}}]}),
           says="tokens", code=1),
    remote("complete", "hi", "--base-url", "{url}",
           server=streamed({"choices": [{"text": "a", "logprobs": {"tokens": ["a"], "top_logprobs": [{"a": "high"}]}}]}),
           says="top_logprobs", code=1),
    remote("complete", "hi", "--base-url", "{url}", server=streamed({"choices": [{"text": "a", "finish_reason": 3}]}),
           says="finish_reason", code=1),
    # streams that stop early: the text that arrived is kept, exit 3
    remote("complete", "hi", "--base-url", "{url}", server=streamed(choice("Hello"), "data: {not json " + ECHO_KEY + "\n\n"),
           says="malformed", code=3, warning=True),
    remote("complete", "hi", "--base-url", "{url}", server=streamed(choice("Hello"), {"error": {"message": "died " + ECHO_KEY}}),
           says="mid-stream", code=3, warning=True),
    remote("complete", "hi", "--base-url", "{url}", server=streamed(choice("Hello"), done=False), says="[DONE]", code=3, warning=True),
    remote("complete", "hi", "--base-url", "{url}", server=streamed(choice("Hello"), cut='data: {"choices": [{"te'),
           says="stopped early", code=3, warning=True),
    remote("complete", "hi", "--base-url", "{url}", server=streamed({"choices": []}), says="stopped early", code=3, warning=True),
    remote("complete", "hi", "--base-url", "{url}", server=streamed(choice("Hello"), {"choices": "x"}), says="'choices'",
           code=3, warning=True),
    remote("complete", "hi", "--base-url", "{url}", server=streamed(choice("Hello"), hang=3, done=False), says="stopped early",
           code=3, warning=True),
    remote("complete", "hi", "--json", "--base-url", "{url}", server=streamed(choice("Hello"), done=False), says="[DONE]",
           code=3, warning=True),
    remote("resample", "hi", "-N", "2", "--jsonl", "--base-url", "{url}", server=streamed(choice("Hello"), done=False),
           says="stopped early", code=3, warning=True),
    remote("fewshot", "{tpl}", "x", "--base-url", "{url}", server=streamed(choice("Hello"), done=False), says="stopped early",
           code=3, warning=True),
    remote("sweep", "hi", "-t", "0,1", "-N", "1", "--base-url", "{url}", server=streamed(choice("Hello"), done=False),
           says="stopped early", code=3, warning=True),
    remote("chat", "--message", "hi", "--base-url", "{url}", server=streamed(choice("Hello"), done=False), says="stopped early",
           code=3, warning=True, writes=("transcripts",)),
    # a server that hangs before answering
    remote("complete", "hi", "--base-url", "{url}", server=route(reply(body={}, delay=3)), says="sent nothing", code=1),
    # the key echoed in every place a server can put text
    remote("complete", "hi", "--base-url", "{url}", server=streamed(choice("key: " + ECHO_KEY, finish="length")), code=0,
           warning=True, says=""),
    remote("complete", "hi", "--json", "--base-url", "{url}", server=streamed(choice(ECHO_KEY, finish="length")), code=0,
           warning=True, says=""),
    remote("resample", "hi", "-N", "2", "--base-url", "{url}", server=route(reply(502, ECHO)), says="502", code=1),
    remote("sweep", "hi", "-t", "0,1", "-N", "1", "--base-url", "{url}", server=route(reply(500, ECHO)), says="500", code=1),
    remote("fewshot", "{tpl}", "x", "--base-url", "{url}", server=route(reply(body={"choices": {"a": 1}})), says="'choices'", code=1),
    remote("chat", "--message", "hi", "--base-url", "{url}", server=route(reply(401, ECHO)), says="401", code=2,
           writes=("transcripts",)),
    remote("chat", "--message", "hi", "--base-url", "{url}", server=streamed({"choices": [{"text": ["a"]}]}), says="'text'",
           code=1, writes=("transcripts",)),
    # scoring: the echoed prompt
    remote("score", "hi there", "--base-url", "{url}", server=route(reply(body={"choices": [{"text": "x", "logprobs": "no"}]})),
           says="logprobs", code=1),
    remote("score", "hi there", "--base-url", "{url}", server=route(reply(body={"choices": [], "usage": "x"})), says="usage", code=1),
    remote("score", "hi there", "--base-url", "{url}", server=route(reply(500, ECHO)), says="500", code=1),
    remote("score", "hi there", "--base-url", "{url}", "--window", "8", server=route(reply(body={})), says="--window"),
    # tokenize endpoints
    remote("tokenize", "hi", "--base-url", "{url}", server=route(reply(body={"tokens": "abc"}), path="/tokenize"),
           says="tokens", code=1),
    remote("tokenize", "hi", "--base-url", "{url}", server=route(reply(body={"tokens": [1, "2"]}), path="/tokenize"),
           says="tokens", code=1),
    remote("tokenize", "hi", "--base-url", "{url}", server=route(reply(body=[1]), path="/tokenize"), says="object", code=1),
    remote("tokenize", "hi", "--base-url", "{url}", server=route(reply(500, ECHO), path="/tokenize"), says="500", code=1),
    remote("tokenize", "--decode", "1 2", "--base-url", "{url}", server=route(reply(body={"prompt": 7}), path="/detokenize"),
           says="prompt", code=1),
]

SILENTLY_WRONG = [  # things that used to be accepted and do something else than asked
    C("score", "hi there", "--window", "0", *TINY, says="--window"),
    C("score", "hi there", "--stride", "0", *TINY, says="--stride"),
    C("score", "hi there", "--window", "-4", *TINY, says="--window"),
    C("fewshot", "{tpl}", "x", "--var", "bogus=1", *TINY, says="bogus"),
    C("fewshot", "{tpl}", "x", "--var", "=1", *TINY, says="--var"),
    C("fewshot", "{tpl}", "x", "--var", "novalue", *TINY, says="--var"),
    C("fewshot", "{tpl}", "x", "--json", "--jsonl", *TINY, says="--jsonl"),
    C("complete", "hi", "--json", "--show-probs", *TINY, says="--show-probs"),
    C("resample", "hi", "--tree", "--jsonl", *TINY, says="--tree"),
    C("sweep", "hi", "--jsonl", "-y", "--batch-size", "0", *TINY, says="--batch-size"),
    C("tokenize", "hi", "-e", "", says="encoding"),
    C("tokenize", "hi", "--compare", "", says="--compare"),
    C("chat", "--message", "@{missing}", *TINY, says="file not found"),
    C("chat", "--message", "@/dev/zero", *TINY, says="NUL"),
    C("chat", *TINY, stdin=b"caf\xe9\n", says="not valid UTF-8", writes=("transcripts",)),
    C("chat", *TINY, stdin=b"a\x00b\n", says="NUL", writes=("transcripts",)),
    C("fewshot", "{tpl}", *TINY, stdin=b"caf\xe9\n", says="not valid UTF-8"),
]

LOOM = [
    C("loom", "{tree_list}", "--print", says="not a loom tree"),
    C("loom", "{tree_broken}", "--print", says="not valid JSON"),
    C("loom", "{missing}", "--print", says="TREE.json"),
    C("loom", "{nul}", "--print", says=""),
    C("loom", "caf\udce9", "--expand", "1", "--jsonl", *TINY, says="not valid UTF-8"),
    C("loom", "@/dev/zero", "--expand", "1", "--jsonl", *TINY, says="NUL"),
    C("loom", "x", "--expand", "-1", "--jsonl", *TINY, says="--expand"),
    C("loom", "x", "--expand", "2", "--depth", "0", "--jsonl", *TINY, says="--depth"),
    C("loom", "x", "--expand", "1", "--jsonl", "-t", "-1", *TINY, says="--temperature"),
    C("loom", "x", "--expand", "1", "--jsonl", "-s", "18446744073709551616", *TINY, says="--seed"),
    C("loom", "x", "--expand", "1", "--jsonl", "-m", "{gguf_trunc}", says="truncated"),
]

CASES = TEXT + NUMBERS + FILES + ENV + SERVERS + SILENTLY_WRONG + LOOM


def _case_id(c: Case) -> str:
    return " ".join(a.replace("{", "").replace("}", "") for a in c.args)[:60] + (f" {sorted(c.env)}" if c.env else "")


# --- the fixtures: bad files, built once -------------------------------------------------------

@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_dirs) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad")
    f: dict[str, Path] = {"tiny": tiny_dirs["llama"], "missing": root / "missing.txt", "dir": root / "a-dir",
                          "gguf_missing": root / "missing.gguf", "emptyhome": root / "empty-home"}
    f["dir"].mkdir()

    def write(name: str, data: bytes | str, suffix: str = ".txt") -> None:
        p = root / f"{name}{suffix}"
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        f[name] = p

    write("latin1", b"caf\xe9 au lait")
    write("cut_utf8", "caf".encode() + "é".encode()[:1])
    write("nul", b"ab\x00cd")
    write("empty", b"")
    write("big", "a" * 20000)
    write("ref", "The quick brown fox jumps over the lazy dog. It was not amused.")
    write("homefile", "a file, not a directory")
    write("gguf20", b"GGUF\x03\x00\x00\x00" + b"\x00" * 12, ".gguf")
    # one F32 tensor of 1024 values announced, no data after the header: a download cut short
    name = b"w"
    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", len(name)) + name + struct.pack("<IQIQ", 1, 1024, 0, 0)
    write("gguf_trunc", header, ".gguf")
    write("gguf_text", "hello world\n" * 10, ".gguf")
    write("gguf_garbage", b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 8, ".gguf")
    write("tpl", "---\nmax_tokens: 2\n---\nQ: {{input}}\nA:")
    write("tpl_seed", "---\nseed: 99999999999999999999999\n---\nQ: {{input}}\nA:")
    write("tpl_temp", "---\ntemperature: -3\n---\nQ: {{input}}\nA:")
    write("tpl_unclosed", "---\nmax_tokens: 2\nQ: {{input}}\nA:")
    write("tpl_badint", "---\nmax_tokens: lots\n---\nQ: {{input}}\nA:")
    write("tpl_badkey", "---\nthis is not a key value line\n---\nQ: {{input}}\nA:")
    write("tpl_novar", "Q: what?\nA:")
    write("tpl_needs", "{{topic}} Q: {{input}}\nA:")
    write("tpl_broken_slot", "---\nmax_tokens: 2\n---\nQ: {{input}} {{input\nA:")
    write("tpl_emptybody", "---\nmax_tokens: 2\n---\n")
    write("tsv", "cat\t고양이\ndog\t개\n", ".tsv")
    write("tsv_cells", "cat\t고양이\textra\n", ".tsv")
    write("tsv_empty", "# nothing here\n\n", ".tsv")
    write("tree_list", "[1, 2]", ".json")
    write("tree_broken", "{bad", ".json")
    write("transcript_text", "this is not json\nnor this\n", ".jsonl")
    write("transcript_shapes", '{"type": "start"}\n{"type": "user", "text": 5}\n[1, 2]\n', ".jsonl")
    write("transcript_binary", b'{"type": "start"}\n\x00\x00\n', ".jsonl")

    def model_copy(name: str) -> Path:
        d = root / name
        shutil.copytree(tiny_dirs["llama"], d)
        f[name] = d
        return d

    def same_size_garbage(p: Path, fill: bytes = b"#") -> None:
        p.write_bytes((fill * p.stat().st_size)[: p.stat().st_size])

    same_size_garbage(model_copy("cfg_garbage") / "config.json")
    (model_copy("cfg_list") / "config.json").write_text("[1, 2, 3]")
    st = model_copy("st_length") / "model.safetensors"
    data = bytearray(st.read_bytes())
    data[:8] = struct.pack("<Q", 1 << 40)
    st.write_bytes(bytes(data))
    st = model_copy("st_header") / "model.safetensors"
    data = bytearray(st.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 : 8 + n] = b"!" * n
    st.write_bytes(bytes(data))
    same_size_garbage(model_copy("tok_garbage") / "tokenizer.json", b"{")
    from safetensors.torch import load_file, save_file

    nan_dir = model_copy("nan")
    tensors = load_file(str(nan_dir / "model.safetensors"))
    save_file({k: v.clone().fill_(float("nan")) for k, v in tensors.items()}, str(nan_dir / "model.safetensors"),
              metadata={"format": "pt"})
    pickle_dir = model_copy("pickle")
    (pickle_dir / "model.safetensors").unlink()
    # a pickle whose loading would run os.system: torch's weights_only loader must refuse it
    (pickle_dir / "pytorch_model.bin").write_bytes(b"cos\nsystem\n(S'echo pwned > /tmp/basecli-pwned'\ntR.")
    return {k: str(v) for k, v in f.items()}


def _files(home: Path) -> set[str]:
    return {str(p.relative_to(home)) for p in home.rglob("*")} if home.exists() else set()


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input(case: Case, bad, monkeypatch):
    home = Path(os.environ["BASECLI_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "keep.txt").write_text("the user's own file")  # must survive every case
    before = _files(home)
    fake = FakeServer()
    if case.server:
        case.server(fake)
    values = {**bad, "url": fake.url}
    for k, v in case.env.items():
        monkeypatch.setenv(k, v.format(**values))
    args = [a.format(**values) if "{" in a and "{{" not in a else a for a in case.args]
    with fake:
        r = invoke(*args, input=case.stdin)
    out = r.stdout + r.stderr
    assert r.returncode == case.code, out
    assert "Traceback" not in out and "internal error" not in out, out
    errors = [line for line in r.stderr.splitlines() if line.startswith("basecli: error:")]
    if case.warning:  # a warning on stderr, or a finding of `template check` on stdout
        assert not errors, out
        warned = [line for line in r.stderr.splitlines() if line.startswith("basecli: warning:")]
        if case.args[0] == "template":
            warned = r.stdout.splitlines()
        assert any(case.says in w for w in warned) if case.says else (case.code == 0 or warned), out
    else:
        assert len(errors) == 1, out
        assert case.says in errors[0], out
    assert KEY not in out
    after = _files(home)
    assert before <= after, "a file under BASECLI_HOME disappeared"
    new = after - before
    assert all(any(n.startswith(w) for w in case.writes) for n in new), new
    for p in home.rglob("*"):
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), p
    assert not Path("/tmp/basecli-pwned").exists()


def test_the_corpus_is_large_and_covers_every_command():
    assert len(CASES) >= 150
    from basecli.cli import COMMANDS

    assert {c.args[0] for c in CASES} == set(COMMANDS)


@pytest.mark.parametrize("args", [("models", "list"), ("models", "list", "--json"), ("template", "check", "prompts/en_ko.txt"),
                                  ("tokenize", "-e", "cl100k_base", "--ids", "hello world")])
def test_a_reader_that_went_away_ends_the_command_quietly(args):
    """`basecli models list | head -c 5`: the pipe is closed before anything is written; exit 0, nothing on stderr."""
    import subprocess

    root = Path(__file__).parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen([sys.executable, "-m", "basecli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=root)
    proc.stdout.close()  # the reader is gone before the first byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert err.strip() == "" or "ok" in err, err


def test_a_full_disk_behind_stdout_is_one_line(tmp_path):
    import subprocess

    root = Path(__file__).parents[1]
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "basecli", "models", "list"], stdout=full, stderr=subprocess.PIPE,
                           text=True, env=dict(os.environ, PYTHONPATH=str(root)), timeout=60)
    assert r.returncode == 1 and r.stderr.strip() == "basecli: error: cannot write the output: No space left on device"
