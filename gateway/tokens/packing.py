"""Data layouts shared by the native counters (the CUDA kernel and its host build).

The vocabulary becomes an open-addressing hash table keyed by token bytes (the layout that
`kernels/scanner.h` reads); a batch of texts becomes one UTF-8 buffer with document offsets;
and `complete` turns a kernel's output into exact counts, counting on the CPU the pieces
that were too long for the kernel.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import tiktoken

NONE = 0xFFFFFFFF
MAX_PIECE = 128  # TOK_MAX_PIECE in scanner.h
SCANNERS = {"o200k_base": 0, "cl100k_base": 1}  # TOK_O200K, TOK_CL100K
LONG_PIECE_FIELDS = 3  # TokLongPiece: start, len, doc (uint32 each)


def token_hash(key: bytes) -> int:
    """`tok_hash` in scanner.h: FNV-1a then a murmur3 finaliser step, on 32 bits."""
    h = 2166136261
    for b in key:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    return h ^ (h >> 13)


@dataclass(frozen=True)
class VocabTable:
    """Token bytes -> rank: slots of {hash, rank, offset, length} (length 0: empty)."""

    slots: array      # uint32, 4 per slot, a power of two of slots at most half full
    blob: bytes       # every token's bytes, at the slots' offsets
    pair_rank: array  # uint32[65536]: rank of each two-byte token, else NONE
    mask: int

    @classmethod
    def build(cls, ranks: dict[bytes, int]) -> VocabTable:
        capacity = 1 << max(4, (2 * len(ranks) - 1).bit_length())
        mask = capacity - 1
        slots = array("I", bytes(16 * capacity))
        pair_rank = array("I", [NONE]) * 65536
        blob = bytearray()
        for key, rank in ranks.items():
            if not key or rank >= NONE:
                raise ValueError(f"bad vocabulary entry {key!r}: {rank}")
            h = token_hash(key)
            i = h & mask
            while slots[4 * i + 3]:
                i = (i + 1) & mask
            slots[4 * i], slots[4 * i + 1] = h, rank
            slots[4 * i + 2], slots[4 * i + 3] = len(blob), len(key)
            blob += key
            if len(key) == 2:
                pair_rank[key[0] * 256 + key[1]] = rank
        return cls(slots, bytes(blob), pair_rank, mask)

    @classmethod
    def of(cls, encoding: tiktoken.Encoding) -> VocabTable:
        return cls.build(encoding._mergeable_ranks)

    @property
    def nbytes(self) -> int:
        return len(self.slots) * 4 + len(self.blob) + len(self.pair_rank) * 4


def utf8(text: str) -> bytes:
    """The bytes tiktoken counts: lone surrogates become U+FFFD exactly as it does."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()


@dataclass(frozen=True)
class PackedBatch:
    data: bytes   # every document's UTF-8, concatenated
    starts: array  # uint32: document d is data[starts[d]:starts[d + 1]]

    @classmethod
    def pack(cls, texts: Sequence[str]) -> PackedBatch:
        encoded = [utf8(t) for t in texts]
        starts = array("I", [0])
        starts.extend(itertools.accumulate(map(len, encoded)))
        return cls(b"".join(encoded), starts)

    @property
    def docs(self) -> int:
        return len(self.starts) - 1

    def chunks(self, chunk: int) -> int:
        return -(-len(self.data) // chunk)


@dataclass
class Completed:
    counts: list[int]
    long_pieces: int = 0   # counted on the CPU
    fallback_docs: int = 0  # counted whole on the CPU (the long-piece list overflowed)


def complete(batch: PackedBatch, counts: Sequence[int], longs: Sequence[int],
             long_count: int, fallback: bytes | bytearray,
             encoding: tiktoken.Encoding) -> Completed:
    """Exact counts from a kernel's output: long pieces and overflowed documents on the CPU."""
    result = Completed(list(counts))
    redo = {d for d in range(batch.docs) if fallback[d]}
    listed = min(long_count, len(longs) // LONG_PIECE_FIELDS)
    for i in range(listed):
        start, length, doc = longs[3 * i:3 * i + 3]
        if doc not in redo:
            piece = batch.data[start:start + length]
            result.counts[doc] += len(encoding._encode_single_piece(piece))
            result.long_pieces += 1
    for doc in redo:
        text = batch.data[batch.starts[doc]:batch.starts[doc + 1]].decode()
        result.counts[doc] = len(encoding.encode_ordinary(text))
    result.fallback_docs = len(redo)
    return result
