"""The GPU counter's C++ built for the host (g++): tiktoken's counts, exactly.

`kernels/host.cpp` runs the kernel's own code (scanner, sync points, merge, long-piece
hand-off) chunk by chunk as the kernel's threads do, and `packing.complete` finishes the
counts as the GPU counter does; so what holds here holds for the kernel, less the CUDA
runtime (tested on a device in test_gpu_device.py).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import tiktoken

from gateway.tokens.encodings import ENCODINGS
from gateway.tokens.native import HostCounter, HostLib, build, compiler
from gateway.tokens.packing import (
    SCANNERS,
    PackedBatch,
    _complete_each,
    complete,
    long_words,
    utf8,
)
from gateway.tokens.sample_text import mixed_documents

from .corpus import FIXED, random_texts

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler (g++) to build "
                                "the kernel's host twin")
RANDOM = random_texts()
MIXED = mixed_documents(8)  # ~8 MB, ~2,000 documents of ~4 KB


def host_lib(base: Path) -> HostLib:
    return HostLib(build(base / "native", test_hooks=True))


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> HostLib:
    return host_lib(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def host(lib: HostLib, encodings: dict[str, tiktoken.Encoding]) -> HostCounter:
    return HostCounter(lib, encodings, chunk=64)


def reference(enc: tiktoken.Encoding, texts: list[str]) -> list[int]:
    return [len(enc.encode_ordinary(t)) for t in texts]


@pytest.mark.parametrize("name", ENCODINGS)
@pytest.mark.parametrize("chunk", [1, 7, 64, 256, 1 << 20])
def test_parity_corpus_at_every_chunk_size(host: HostCounter, name: str, chunk: int,
                                           encodings: dict[str, tiktoken.Encoding]) -> None:
    host.chunk = chunk
    assert host.count(FIXED, name) == reference(encodings[name], FIXED)
    if chunk in (7, 256):
        assert host.count(RANDOM, name) == reference(encodings[name], RANDOM)


@pytest.mark.parametrize("name", ENCODINGS)
def test_token_ids_equal_tiktokens(host: HostCounter, name: str,
                                   encodings: dict[str, tiktoken.Encoding]) -> None:
    enc, checked = encodings[name], 0
    for text in FIXED + RANDOM:
        try:
            ids = host.encode(text, name)
        except ValueError:  # a piece over the kernel's limit: the CPU counts it
            continue
        assert ids == enc.encode_ordinary(text), text
        checked += 1
    assert checked >= len(FIXED) + len(RANDOM) - 5


@pytest.mark.parametrize("name", ENCODINGS)
def test_eight_megabytes_of_mixed_text(host: HostCounter, name: str,
                                       encodings: dict[str, tiktoken.Encoding]) -> None:
    host.chunk = 64
    assert host.count(MIXED, name) == reference(encodings[name], MIXED)
    last = host.last
    assert last is not None and last.device_long_pieces > 100  # the second pass is exercised
    assert last.long_pieces == 0 and last.fallback_docs == 0  # and leaves the CPU nothing
    assert sum(len(d.encode()) for d in MIXED) >= 8_000_000


def test_long_piece_overflow_recounts_whole_documents(
        lib: HostLib, encodings: dict[str, tiktoken.Encoding]) -> None:
    texts = [" " * 300 + "x", "a" * 129, "short", "y" * 500 + " z" + "\n" * 200]
    small = HostCounter(lib, encodings, chunk=16, long_cap=1, long_pass=False)
    assert small.count(texts, "o200k_base") == reference(encodings["o200k_base"], texts)
    assert small.last is not None and small.last.fallback_docs >= 1


def test_empty_and_tiny_documents(host: HostCounter,
                                  encodings: dict[str, tiktoken.Encoding]) -> None:
    texts = ["", "a", "", " ", "\n", "", "1234567", "'s", "", "x y", ""]
    for chunk in (1, 2, 3, 5, 64):
        host.chunk = chunk
        for name in ENCODINGS:
            assert host.count(texts, name) == reference(encodings[name], texts)
    assert host.count([], "o200k_base") == []


@pytest.mark.parametrize("name", ENCODINGS)
def test_sync_points_are_match_boundaries(lib: HostLib, name: str) -> None:
    for texts in (FIXED, RANDOM, MIXED):
        data = b"".join(utf8(t) for t in texts)
        assert lib.unsound_sync(SCANNERS[name], data) is None


def test_lone_surrogates_are_counted_as_tiktoken_does(
        host: HostCounter, encodings: dict[str, tiktoken.Encoding]) -> None:
    texts = ["a\ud800b", "\udfff", "x\ud83d\ude00y", "\ud83d"]
    assert PackedBatch.pack(texts).data.count("\ufffd".encode()) == 3
    for name in ENCODINGS:
        assert host.count(texts, name) == reference(encodings[name], texts)


def long_pieces(rng: random.Random) -> list[str]:
    """Texts whose pieces are longer than the first pass's limit (TOK_MAX_PIECE, 128 bytes):
    runs of spaces, newlines, punctuation, letters of several scripts, marks, emoji."""
    texts = []
    for n in (129, 130, 255, 256, 1024, 10_000):
        texts += [" " * n + "x", "\n" * n, "a" * n, "ab" * (n // 2), "Hello" * (n // 5),
                  "!" * n, "-=" * (n // 2), "é" * n, "日本" * (n // 2), "🙂" * (n // 4),
                  "e\u0301" * n, "ÄbcDéF" * (n // 6), " " * n + "\t" * 3 + " " * n,
                  "x" + "\u3000" * n + "y", "\r\n" * n, "'s" + "z" * n]
    alphabet = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                "éèêàçñöüßøåæœЖжЯяλΩ你好日本語한국\u0301\u0308")
    for _ in range(200):  # random long words, over several scripts at once
        texts.append(" " + "".join(rng.choice(alphabet) for _ in range(rng.randint(129, 3000))))
    for _ in range(50):  # random unicode runs without spaces or digits
        chars = []
        while len(chars) < rng.randint(100, 1500):
            cp = rng.randint(0xA0, 0x2FFFF)
            if not 0xD800 <= cp < 0xE000 and not chr(cp).isspace() and not chr(cp).isdigit():
                chars.append(chr(cp))
        texts.append("".join(chars))
    return texts


LONG = long_pieces(random.Random(19))


@pytest.mark.parametrize("name", ENCODINGS)
def test_long_pieces_are_merged_exactly_by_the_second_pass(
        host: HostCounter, lib: HostLib, name: str,
        encodings: dict[str, tiktoken.Encoding]) -> None:
    enc = encodings[name]
    host.chunk = 64
    assert host.count(LONG, name) == reference(enc, LONG)
    last = host.last
    assert last is not None and last.long_pieces == 0 and last.fallback_docs == 0
    longer = sum(len(piece) > 128 for text in LONG
                 for piece in lib.pieces(SCANNERS[name], utf8(text)))
    assert last.device_long_pieces == longer > 60  # every one of them by the second pass
    table = host.table(name)
    for text in LONG[:60] + FIXED + RANDOM[:1000]:  # the merge alone, piece by piece
        for piece in lib.pieces(SCANNERS[name], utf8(text)):
            if len(piece) > 1:
                assert lib.long_tokens(table, piece) == len(enc._encode_single_piece(piece))


@pytest.mark.parametrize("name", ENCODINGS)
def test_the_long_merge_on_random_bytes(host: HostCounter, lib: HostLib, name: str,
                                        encodings: dict[str, tiktoken.Encoding]) -> None:
    """Byte strings from small alphabets (many equal ranks: the leftmost-first tie rule) and
    any bytes, of every length from 2 to 3,000, merged as tiktoken merges them."""
    enc, table, rng = encodings[name], host.table(name), random.Random(1919)
    alphabets = [b"ab", b"a ", b"  \n", b"0123456789", b"-=_", "é日🙂".encode(), bytes(range(256))]
    for length in [*range(2, 40), *(rng.randint(40, 3000) for _ in range(150))]:
        alphabet = rng.choice(alphabets)
        piece = bytes(rng.choice(alphabet) for _ in range(length))
        assert lib.long_tokens(table, piece) == len(enc._encode_single_piece(piece)), piece


def test_long_pieces_without_scratch_go_to_the_cpu(
        lib: HostLib, encodings: dict[str, tiktoken.Encoding]) -> None:
    texts = LONG[:40]
    room = 3 * long_words(1024)  # room for a few pieces, not for all of them
    small = HostCounter(lib, encodings, chunk=64, scratch_words=room)
    for name in ENCODINGS:
        assert small.count(texts, name) == reference(encodings[name], texts)
        last = small.last
        assert last is not None and last.long_pieces > 0 and last.device_long_pieces > 0


def test_completion_with_and_without_numpy_agree(
        lib: HostLib, encodings: dict[str, tiktoken.Encoding]) -> None:
    """The scatter-add and the one-piece-at-a-time completion, on outputs that mix pieces
    counted by the second pass, pieces left to the CPU and overflowed documents."""
    enc = encodings["o200k_base"]
    texts = LONG[:30] + FIXED
    batch = PackedBatch.pack(texts)
    table = HostCounter(lib, encodings).table("o200k_base")
    counts, longs, long_count, fallback = lib.count(SCANNERS["o200k_base"], table, batch, 64,
                                                    long_cap=15)
    tokens = lib.long(table, batch, longs, long_count, scratch_words=6 * long_words(200))
    fast = complete(batch, counts, longs, long_count, fallback, enc, tokens)
    listed = min(long_count, 15)
    slow = _complete_each(batch, list(counts[:batch.docs]), longs, listed,
                          {d for d in range(batch.docs) if fallback[d]}, enc, tokens)
    assert fast == slow and fast.counts == reference(enc, texts)
    assert fast.long_pieces and fast.device_long_pieces and fast.fallback_docs
