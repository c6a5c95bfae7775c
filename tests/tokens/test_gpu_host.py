"""The GPU counter's C++ built for the host (g++): tiktoken's counts, exactly.

`kernels/host.cpp` runs the kernel's own code (scanner, sync points, merge, long-piece
hand-off) chunk by chunk as the kernel's threads do, and `packing.complete` finishes the
counts as the GPU counter does; so what holds here holds for the kernel, less the CUDA
runtime (tested on a device in test_gpu_device.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tiktoken

from gateway.tokens.encodings import ENCODINGS
from gateway.tokens.native import HostCounter, HostLib, build, compiler
from gateway.tokens.packing import SCANNERS, PackedBatch, utf8
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
    assert host.last is not None and host.last.long_pieces > 100  # the hand-off is exercised
    assert sum(len(d.encode()) for d in MIXED) >= 8_000_000


def test_long_piece_overflow_recounts_whole_documents(
        lib: HostLib, encodings: dict[str, tiktoken.Encoding]) -> None:
    texts = [" " * 300 + "x", "a" * 129, "short", "y" * 500 + " z" + "\n" * 200]
    small = HostCounter(lib, encodings, chunk=16, long_cap=1)
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
