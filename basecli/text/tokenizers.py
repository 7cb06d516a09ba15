"""One tokenizer interface over tiktoken encodings and Hugging Face `tokenizer.json` files.

Neither adapter imports torch or transformers: tokenizing stays fast.
Everything is defined on bytes: `token_bytes(id)` is the exact byte string a token
stands for, so decoding and streaming never depend on a library's text clean-up.
"""

from __future__ import annotations

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
    from basecli.text.encodings import get_encoding

    return TiktokenTokenizer(get_encoding(name), name)


# --- Hugging Face tokenizer.json ------------------------------------------------------------


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's bytes_to_unicode: byte-level BPE writes each byte as a printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of byte_alphabet: a token's printable spelling back to its bytes."""
    return {c: b for b, c in byte_alphabet().items()}


class HFTokenizer:
    def __init__(self, backend, name: str, eos_ids: Sequence[int] = (), bos_id: int | None = None):
        self._tk = backend
        self.name = name
        # Asked of the library directly: serialising the whole tokenizer to JSON and parsing it back
        # cost 0.3 s and 40 MiB at start-up for a 49k vocabulary.
        added = backend.get_added_tokens_decoder()  # {id: AddedToken}
        self._byte_level = backend.decoder is not None and b"ByteLevel" in backend.decoder.__getstate__()
        self._added = {i: t.content for i, t in sorted(added.items())}
        self.special_tokens = {t.content: i for i, t in sorted(added.items()) if t.special}
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
            from basecli.weights.integrity import cache_hint

            raise UsageError(f"cannot read tokenizer {path}: {' '.join(str(e).split())[:160]}{cache_hint(Path(path).parent)}") from None
        return cls(backend, name, **kw)

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        return self.encode_offsets(text, allow_special=allow_special)[0]

    def encode_offsets(self, text: str, *, allow_special: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and the library's (start, end) character offsets, for tokenizers whose bytes are not the text's."""
        self._tk.encode_special_tokens = not allow_special
        enc = self._tk.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

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


# --- where each token sits in the text ----------------------------------------------------------

_CONTINUATION = bytes(range(0x80, 0xC0))  # UTF-8 bytes that never start a character


def char_spans(pieces: Sequence[bytes]) -> list[tuple[int, int]]:
    """(start, end) character offsets of consecutive tokens' bytes in the text they decode to.

    A token that begins inside a character starts at that character (tiktoken's
    `decode_with_offsets` rule); one that ends inside a character ends after it. So the
    pieces of a split Hangul syllable or emoji all cover that one character.
    """
    memo: dict[bytes, tuple[int, int]] = {}
    spans = []
    chars = 0  # characters whose first byte has been seen
    for b in pieces:
        info = memo.get(b)
        if info is None:  # (characters starting in b, 1 if b continues the previous token's character)
            info = memo[b] = (len(b.translate(None, _CONTINUATION)), 1 if b and 0x80 <= b[0] < 0xC0 else 0)
        start = chars - info[1]
        chars += info[0]
        spans.append((start if start > 0 else 0, chars))
    return spans


def segment(tok: Tokenizer, text: str, *, allow_special: bool = False) -> tuple[list[int], list[bytes], list[tuple[int, int]]]:
    """Ids, each token's bytes and its character span in `text`."""
    if hasattr(tok, "encode_offsets"):
        ids, lib_spans = tok.encode_offsets(text, allow_special=allow_special)
    else:
        ids, lib_spans = tok.encode(text, allow_special=allow_special), None
    memo: dict[int, bytes] = {}  # long texts repeat tokens: one lookup per distinct id
    pieces = [memo[i] if i in memo else memo.setdefault(i, tok.token_bytes(i)) for i in ids]
    if lib_spans is not None and b"".join(pieces) != text.encode("utf-8"):
        # a normalizer or SentencePiece's added space: the bytes are not the text's, trust the library
        return ids, pieces, [tuple(s) for s in lib_spans]
    return ids, pieces, char_spans(pieces)
