"""A remote model's tokenizer: the server's own tokenize endpoints, or a local one the user names.

Servers disagree on the endpoint shapes:
  vLLM              POST /tokenize {model, prompt, add_special_tokens}     -> {tokens}
                    POST /detokenize {model, tokens}                       -> {prompt}
  llama.cpp server  POST /tokenize {content, add_special, parse_special}   -> {tokens}
                    POST /detokenize {tokens}                              -> {content}
  llama-cpp-python  POST /extras/tokenize {model, input}                   -> {tokens}  (BOS added, specials parsed)
                    POST /extras/detokenize {model, tokens}                -> {text}
Completions often give generated tokens as text only. Such a token gets a negative id of its
own (the same text, the same id), so views that key on ids and `token_bytes` keep working.
"""

from __future__ import annotations

from typing import Sequence

from basecli.errors import UsageError

UNKNOWN_VOCAB = 1 << 31  # the server does not say; ids are checked by the server itself


class RemoteTokenizer:
    def __init__(self, name: str, transport=None, kind: str = "openai", model: str | None = None, local=None):
        self.name = name
        self._t = transport
        self._kind = kind
        self._model = model
        self._local = local  # a Tokenizer from tokenizers.py, when the user named one
        self.vocab_size = local.vocab_size if local is not None else UNKNOWN_VOCAB
        self.eos_ids = local.eos_ids if local is not None else frozenset()
        self.bos_id = local.bos_id if local is not None else None
        self.prefix_ids: list[int] = []  # the server adds its own BOS to text prompts
        self._text_ids: dict[bytes, int] = {}
        self._text_of: dict[int, bytes] = {}
        self._bytes_cache: dict[int, bytes] = {}
        self._bos_prefix: list[int] | None = None

    @property
    def available(self) -> bool:
        return self._local is not None or self._kind in ("vllm", "llamacpp", "llama-cpp-python")

    # --- ids for text-only tokens ------------------------------------------------------------

    def id_for_text(self, piece: bytes) -> int:
        """A stable negative id for a token the server named only by its text."""
        tid = self._text_ids.get(piece)
        if tid is None:
            tid = self._text_ids[piece] = -2 - len(self._text_ids)
            self._text_of[tid] = piece
        return tid

    # --- the Tokenizer protocol --------------------------------------------------------------

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        if self._local is not None:
            return self._local.encode(text, allow_special=allow_special)
        if self._kind == "vllm":
            return self._ids("/tokenize", {"model": self._model, "prompt": text, "add_special_tokens": False})
        if self._kind == "llamacpp":
            body = {"content": text, "add_special": False, "parse_special": allow_special}
            return self._ids("/tokenize", body)
        if self._kind == "llama-cpp-python":
            # it always adds the model's BOS (if it has one) and parses special tokens; take the BOS off
            self.server_adds_bos()
            ids = self._ids("/extras/tokenize", {"model": self._model, "input": text})
            n = len(self._bos_prefix)
            return ids[n:] if n and ids[:n] == self._bos_prefix else ids
        raise self._no_tokenizer()

    def server_adds_bos(self) -> bool:
        """Whether llama-cpp-python puts a BOS token before every prompt (tokenizing "" says)."""
        if self._bos_prefix is None:
            self._bos_prefix = self._ids("/extras/tokenize", {"model": self._model, "input": ""})
        return bool(self._bos_prefix)

    def decode(self, ids: Sequence[int]) -> str:
        if any(i < 0 for i in ids):
            return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")
        if self._local is not None:
            return self._local.decode(ids)
        return self._detokenize(list(ids)) if ids else ""

    def token_bytes(self, token_id: int) -> bytes:
        if token_id < 0:
            if token_id in self._text_of:
                return self._text_of[token_id]
            return b""  # -1: a token the server did not name at all (the end of a document)
        if self._local is not None:
            return self._local.token_bytes(token_id)
        b = self._bytes_cache.get(token_id)
        if b is None:
            b = self._bytes_cache[token_id] = self._detokenize([token_id]).encode("utf-8")
        return b

    def _detokenize(self, ids: list[int]) -> str:
        if self._kind == "vllm":
            return self._text("/detokenize", {"model": self._model, "tokens": ids}, "prompt")
        if self._kind == "llamacpp":
            return self._text("/detokenize", {"tokens": ids}, "content")
        if self._kind == "llama-cpp-python":
            try:
                return self._text("/extras/detokenize", {"model": self._model, "tokens": ids}, "text")
            except UsageError:
                raise
            except Exception:  # it fails with 500 on part of a UTF-8 character
                return "\ufffd"
        raise self._no_tokenizer()

    def _ids(self, path: str, body: dict) -> list[int]:
        from basecli.backends import shapes

        return shapes.token_ids(self._post(path, body), self._t.root + path)

    def _text(self, path: str, body: dict, key: str) -> str:
        from basecli.backends import shapes

        return shapes.text_field(self._post(path, body), self._t.root + path, key)

    def _post(self, path: str, body: dict) -> dict:
        # tokenizing is cheap: retry only when the server says it is busy
        return self._t.post_json(path, body, root=True, retry_on=(429, 503))

    def _no_tokenizer(self) -> UsageError:
        return UsageError(f"{self.name}: this server has no tokenize endpoint; name a local tokenizer for it "
                          f"(basecli models add ... --tokenizer gpt2|cl100k_base|MODEL_DIR, or BASECLI_TOKENIZER)")


def local_tokenizer(spec: str):
    """A tokenizer on this machine: a tiktoken encoding, a model directory, an alias or hub id (tokenizer files only)."""
    from pathlib import Path

    from basecli.weights import models
    from basecli.text.tokenizers import TIKTOKEN_ENCODINGS, tiktoken_tokenizer

    if spec in TIKTOKEN_ENCODINGS:
        return tiktoken_tokenizer(spec)
    source = models.resolve(spec)
    if source.kind == "dir":
        return models.tokenizer_for(Path(source.location), spec)
    if source.kind in ("embedded", "gguf"):
        return models.tokenizer_for(models.model_dir(source), spec)
    from huggingface_hub import snapshot_download

    models.no_agent_lookup()
    try:
        folder = snapshot_download(source.location, allow_patterns=["tokenizer.json", "config.json", "generation_config.json"])
    except Exception as e:  # hub errors come in many classes
        raise UsageError(f"cannot get the tokenizer of {source.location} ({type(e).__name__}); "
                         f"name a local directory or a tiktoken encoding instead") from None
    return models.tokenizer_for(Path(folder), spec)


def token_bytes(tok: str) -> bytes:
    """A token as the server wrote it; vLLM writes undecodable ones as 'bytes:\\xe4\\xbd'. A credential
    a server wrote back into a token is redacted here, before ids and records are made of it."""
    from basecli.errors import redact

    if tok.startswith("bytes:"):
        try:
            return tok[6:].encode("latin-1").decode("unicode_escape").encode("latin-1")
        except (UnicodeError, ValueError):
            pass
    return redact(tok).encode("utf-8", errors="replace")
