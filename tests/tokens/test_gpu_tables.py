"""The vocabulary tables the kernels read: built with numpy, cached under the data
directory, and equal in effect (every token found with its rank) to the Python build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiktoken

from gateway.tokens.encodings import ENCODINGS, ranks
from gateway.tokens.packing import NONE, PackedBatch, VocabTable, token_hash
from gateway.tokens.sample_text import mixed_documents


def lookup(table: VocabTable, key: bytes) -> int:
    """`tok_rank` in scanner.h, in Python."""
    if len(key) == 2:
        return table.pair_rank[key[0] * 256 + key[1]]
    h = token_hash(key)
    i = h & table.mask
    while True:
        slot = table.slots[4 * i:4 * i + 4]
        if slot[3] == 0:
            return NONE
        if slot[0] == h and slot[3] == len(key) and table.blob[
                slot[2]:slot[2] + slot[3]] == key:
            return slot[1]
        i = (i + 1) & table.mask


@pytest.mark.parametrize("name", ENCODINGS)
def test_numpy_build_finds_every_token(name: str,
                                       encodings: dict[str, tiktoken.Encoding]) -> None:
    bpe = ranks(encodings[name])  # read again: load_encoding dropped tiktoken's copy
    table = VocabTable._build_numpy(bpe)
    python = VocabTable._build_python(bpe)
    assert (table.mask, table.pair_rank) == (python.mask, python.pair_rank)
    slots = np.frombuffer(table.slots, dtype=np.uint32).reshape(-1, 4)
    assert int((slots[:, 3] > 0).sum()) == len(bpe)  # every token placed once
    step = 7 if name == "o200k_base" else 5  # a spread sample keeps the test fast
    for key, rank in list(bpe.items())[::step]:
        assert lookup(table, key) == rank, key
    for absent in (b"\x00\x00\x00\x00\x01", b"not a token at all, surely", b"\xff" * 9):
        assert lookup(table, absent) == NONE


def test_the_cache_is_used_and_a_damaged_one_rebuilt(
        tmp_path: Path, encodings: dict[str, tiktoken.Encoding]) -> None:
    enc = encodings["cl100k_base"]
    entries = len(ranks(enc))
    built = VocabTable.of(enc, tmp_path)
    [path] = tmp_path.glob("cl100k_base-*.npz")
    stamp = path.stat().st_mtime_ns
    again = VocabTable.of(enc, tmp_path)
    assert path.stat().st_mtime_ns == stamp  # loaded, not written again
    assert again == built
    # a damaged file (bytes flipped in the middle) fails its checksum and is rebuilt
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert VocabTable._load(path, entries) is None
    assert VocabTable.of(enc, tmp_path) == built
    assert VocabTable._load(path, entries) == built  # and saved again
    # a truncated file, and one for another vocabulary size, are not used either
    path.write_bytes(path.read_bytes()[:1000])
    assert VocabTable._load(path, entries) is None
    VocabTable.of(enc, tmp_path)
    assert VocabTable._load(path, entries + 1) is None


def test_a_custom_vocabulary_is_never_cached(tmp_path: Path) -> None:
    enc = tiktoken.Encoding("probe", pat_str=r"\S+|\s+",
                            mergeable_ranks={bytes([b]): b for b in range(256)},
                            special_tokens={})
    VocabTable.of(enc, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_bulk_packing_equals_packing_each_document() -> None:
    cases = [[], [""], ["", "", "a"], ["é" * 3, "", "😀", "x"], ["plain ascii", "only"],
             ["日本語", "mixed é and ascii", "", "🙂" * 50, "tail"],
             ["lone \ud800 surrogate", "ok"]]
    for texts in cases:
        assert PackedBatch.pack(texts) == PackedBatch._pack_each(texts), texts


def test_packing_into_staging_memory_equals_packing() -> None:
    import ctypes

    memory = ctypes.create_string_buffer(1 << 16)
    address = ctypes.addressof(memory)
    for texts in ([], ["", "a"], ["é" * 3, "", "😀", "x"], ["日本語", "🙂" * 50, "tail"],
                  ["lone \ud800 surrogate", "ok"], mixed_documents(0.03)):
        packed = PackedBatch.pack_into(texts, address, len(memory))
        expected = PackedBatch._pack_each(texts)
        assert bytes(packed.data) == expected.data and packed.starts == expected.starts
        assert packed.staged_at == address
        assert memory.raw[:len(expected.data)] == expected.data  # written in place
    with pytest.raises(ValueError, match="do not fit"):
        PackedBatch.pack_into(["x" * 100], address, 99)
    with pytest.raises(ValueError, match="do not fit"):
        PackedBatch.pack_into(["\ud800" * 100], address, 99)
