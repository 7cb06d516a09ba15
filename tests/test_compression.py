"""Bits, bits per byte and perplexity on hand-computed cases; compressor sizes against the stdlib's own streams."""

from __future__ import annotations

import bz2
import lzma
import math
import zlib

import pytest

from basecli.analyses.compression import compressed_sizes, compression_table, summarize


def test_bits_per_byte_on_a_hand_computed_case():
    # p = 1/2 and 1/4: 1 + 2 = 3 bits over "abcd" (4 bytes) -> 0.75 bits per byte
    s = summarize([math.log(0.5), math.log(0.25)], "abcd")
    assert s.bits == pytest.approx(3.0)
    assert s.bits_per_byte == pytest.approx(0.75)
    assert s.bits_per_char == pytest.approx(0.75)
    assert s.bits_per_token == pytest.approx(1.5)
    assert s.perplexity == pytest.approx(math.sqrt(8))  # exp(mean nats) = (2 * 4) ** (1/2)


def test_bytes_and_characters_differ_for_multibyte_text():
    # "é😀" is 2 characters and 2 + 4 = 6 UTF-8 bytes; p = 1/8 for each of 2 tokens: 6 bits
    s = summarize([math.log(1 / 8)] * 2, "é😀")
    assert (s.bytes, s.chars) == (6, 2)
    assert s.bits_per_byte == pytest.approx(1.0)
    assert s.bits_per_char == pytest.approx(3.0)


def test_an_unscored_first_token_is_counted_but_costs_nothing():
    s = summarize([None, math.log(0.5)], "ab")
    assert (s.tokens, s.scored, s.bits) == (2, 1, pytest.approx(1.0))


DATA = ("The quick brown fox jumps over the lazy dog. " * 40 + "안녕하세요 😀\n").encode()


def test_sizes_equal_the_stdlib_compressors():
    sizes = compressed_sizes(DATA)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate; gzip adds a 10-byte header and 8-byte trailer
    assert sizes["gzip -9"] == len(deflate.compress(DATA) + deflate.flush()) + 18
    c = bz2.BZ2Compressor(9)
    assert sizes["bz2 -9"] == len(c.compress(DATA) + c.flush())
    x = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=9)
    assert sizes["xz -9"] == len(x.compress(DATA) + x.flush())


def test_compression_table_in_bits_per_byte():
    table = compression_table(DATA.decode(), model_bits=800.0)
    n = len(DATA)
    assert table["model"]["bits_per_byte"] == pytest.approx(800.0 / n, abs=1e-5)
    for name, size in compressed_sizes(DATA).items():
        assert table[name] == {"bytes": size, "bits_per_byte": pytest.approx(8 * size / n, abs=1e-5)}
