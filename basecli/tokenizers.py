"""One tokenizer interface over tiktoken encodings and Hugging Face `tokenizer.json` files.

Neither adapter imports torch or transformers: tokenizing stays fast.
Everything is defined on bytes: `token_bytes(id)` is the exact byte string a token
stands for, so decoding and streaming never depend on a library's text clean-up.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Protocol, Sequence

from basecli.errors import UsageError

TIKTOKEN_ENCODINGS = ("gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base")


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eos_ids: frozenset[int]  # any of these ends a document
    bos_id: int | None  # the start token, used where a text needs a first context (score)
    prefix_ids: list[int]  # put before every prompt, as the model was trained (Llama 3's BOS)

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_bytes(self, token_id: int) -> bytes: ...


def decode_bytes(tok: Tokenizer, ids: Sequence[int]) -> str:
    return b"".join(tok.token_bytes(i) for i in ids).decode("utf-8", errors="replace")


def check_ids(tok: Tokenizer, ids: Sequence[int]) -> None:
    for i in ids:
        if not 0 <= i < tok.vocab_size:
            raise UsageError(f"token id {i} is out of range for {tok.name} (vocabulary 0..{tok.vocab_size - 1})")


# --- tiktoken -------------------------------------------------------------------------------


class TiktokenTokenizer:
    def __init__(self, encoding, name: str):
        self._enc = encoding
        self.name = name
        self.vocab_size = encoding.n_vocab
        eot = getattr(encoding, "eot_token", None)
        self.eos_ids = frozenset([eot] if eot is not None else [])
        self.bos_id = eot  # GPT-2 style models start documents with <|endoftext|>
        self.prefix_ids: list[int] = []

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        if allow_special:
            return self._enc.encode(text, allowed_special="all")
        return self._enc.encode(text, disallowed_special=())

    def decode(self, ids: Sequence[int]) -> str:
        return decode_bytes(self, ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self._enc.decode_single_token_bytes(token_id)


def tiktoken_tokenizer(name: str) -> TiktokenTokenizer:
    """A tiktoken encoding by name, offline where a local copy exists."""
    from basecli.encodings import get_encoding

    return TiktokenTokenizer(get_encoding(name), name)


# --- Hugging Face tokenizer.json ------------------------------------------------------------


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: byte-level BPE writes each byte as a printable char."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class HFTokenizer:
    def __init__(self, backend, name: str, eos_ids: Sequence[int] = (), bos_id: int | None = None):
        self._tk = backend
        self.name = name
        spec = json.loads(backend.to_str())
        self._byte_level = "ByteLevel" in json.dumps(spec.get("decoder"))
        self._added = {t["id"]: t["content"] for t in spec.get("added_tokens", [])}
        self.special_tokens = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        eos = set(eos_ids)
        if "<|endoftext|>" in self.special_tokens:  # the document separator of most base models
            eos.add(self.special_tokens["<|endoftext|>"])
        self.eos_ids = frozenset(eos)
        self.bos_id = bos_id
        self._bytes_cache: dict[int, bytes] = {}
        # What the model's own pipeline puts before every text (Llama 3's <|begin_of_text|>; nothing for GPT-2).
        self.prefix_ids = list(backend.encode("", add_special_tokens=True).ids)

    @classmethod
    def from_file(cls, path: str | Path, name: str, **kw) -> "HFTokenizer":
        import tokenizers

        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception on malformed files
            raise UsageError(f"cannot read tokenizer {path}: {e}") from None
        return cls(backend, name, **kw)

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        self._tk.encode_special_tokens = not allow_special
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return decode_bytes(self, ids)

    def token_bytes(self, token_id: int) -> bytes:
        b = self._bytes_cache.get(token_id)
        if b is None:
            b = self._bytes_cache[token_id] = self._token_bytes(token_id)
        return b

    def _token_bytes(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        piece = self._tk.id_to_token(token_id)
        if piece is None:
            raise UsageError(f"token id {token_id} is out of range for {self.name}")
        if self._byte_level:
            table = _byte_decoder()
            return bytes(table[c] for c in piece if c in table)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece byte fallback
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode("utf-8")  # SentencePiece marks spaces with ▁
