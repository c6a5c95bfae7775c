"""Data layouts shared by the native counters (the CUDA kernel and its host build).

The vocabulary becomes an open-addressing hash table keyed by token bytes (the layout that
`kernels/scanner.h` reads); a batch of texts becomes one UTF-8 buffer with document offsets;
and `complete` turns the kernels' output into exact counts: the long pieces' tokens from the
second kernel added in, and on the CPU only what the kernels could not count (a long piece
the scratch memory had no room for, a document whose long pieces overflowed the list).
Tables are cached as .npz files when a cache directory is given.
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import itertools
import os
import zipfile
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tiktoken

from gateway.tokens.encodings import BPE_FILES
from gateway.tokens.encodings import ranks as bpe_ranks

try:  # cuda-core brings numpy; without it the tables and batches are built in Python
    import numpy as np
except ImportError:  # pragma: no cover - the gpu extra is not installed
    np = None  # type: ignore[assignment]

NONE = 0xFFFFFFFF
MAX_PIECE = 128  # TOK_MAX_PIECE in scanner.h
SCANNERS = {"o200k_base": 0, "cl100k_base": 1}  # TOK_O200K, TOK_CL100K
TABLE_FORMAT = 1  # bump when VocabTable's layout or tok_hash changes
LONG_PIECE_FIELDS = 3  # TokLongPiece: start, len, doc (uint32 each)


def long_words(length: int) -> int:
    """`tok_long_words` in scanner.h: 64-bit scratch words the long-piece merge needs."""
    return (3 * (length + 1) + 1) // 2 + 3 * length + 1


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
        """The table, built with numpy (vectorised: ~0.1 s for o200k) when it is installed,
        else in Python (~0.6 s); either layout is valid for `tok_rank`."""
        for key, rank in ranks.items():
            if not key or not 0 <= rank < NONE:
                raise ValueError(f"bad vocabulary entry {key!r}: {rank}")
        if np is None:
            return cls._build_python(ranks)
        return cls._build_numpy(ranks)

    @staticmethod
    def capacity(entries: int) -> int:
        return 1 << max(4, (2 * entries - 1).bit_length())

    @classmethod
    def _build_python(cls, ranks: dict[bytes, int]) -> VocabTable:
        mask = cls.capacity(len(ranks)) - 1
        slots = array("I", bytes(16 * (mask + 1)))
        pair_rank = array("I", [NONE]) * 65536
        blob = bytearray()
        for key, rank in ranks.items():
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
    def _build_numpy(cls, ranks: dict[bytes, int]) -> VocabTable:
        assert np is not None
        keys = list(ranks)
        n = len(keys)
        mask = cls.capacity(n) - 1
        blob = b"".join(keys)
        data = np.frombuffer(blob, dtype=np.uint8).astype(np.uint32)
        lengths = np.fromiter(map(len, keys), dtype=np.uint32, count=n)
        offsets = np.zeros(n, dtype=np.uint32)
        np.cumsum(lengths[:-1], out=offsets[1:])
        rank = np.fromiter(ranks.values(), dtype=np.uint32, count=n)
        # FNV-1a over every key at once: keys by length, longest first, so that the keys
        # still going at byte j are a prefix of that order
        order = np.argsort(-lengths.astype(np.int64), kind="stable")
        live_at = np.searchsorted(lengths[order][::-1], np.arange(int(lengths.max(initial=0))),
                                  side="right")
        starts, hs = offsets[order], np.full(n, 2166136261, dtype=np.uint32)
        for j, behind in enumerate(live_at.tolist()):
            live = n - behind  # keys longer than j
            hs[:live] = (hs[:live] ^ data[starts[:live] + j]) * np.uint32(16777619)
        h = np.empty_like(hs)
        h[order] = hs
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> np.uint32(13)
        # linear probing in rounds: every unplaced key tries its next slot; of the keys that
        # want one empty slot, the first (in vocabulary order) takes it and the rest move on
        slot_of = np.full(mask + 1, -1, dtype=np.int64)
        pending = np.arange(n, dtype=np.int64)
        probe = h.astype(np.int64) & mask
        while pending.size:
            want = probe[pending]
            free = slot_of[want] < 0
            cand, cand_slot = pending[free], want[free]
            taken, first = np.unique(cand_slot, return_index=True)
            slot_of[taken] = cand[first]
            placed = np.zeros(n, dtype=bool)
            placed[cand[first]] = True
            pending = pending[~placed[pending]]
            probe[pending] = (probe[pending] + 1) & mask
        slots = np.zeros((mask + 1, 4), dtype=np.uint32)
        used = slot_of >= 0
        k = slot_of[used]
        slots[used] = np.stack([h[k], rank[k], offsets[k], lengths[k]], axis=1)
        pair_rank = np.full(65536, NONE, dtype=np.uint32)
        two = np.flatnonzero(lengths == 2)
        pair_rank[data[offsets[two]] * 256 + data[offsets[two] + 1]] = rank[two]
        return cls(array("I", slots.tobytes()), blob, array("I", pair_rank.tobytes()), mask)

    @classmethod
    def of(cls, encoding: tiktoken.Encoding, cache_dir: Path | None = None) -> VocabTable:
        """The encoding's table; with `cache_dir`, loaded from (or saved to) a file there
        keyed by the encoding, its BPE file's SHA-256 and the table format."""
        ranks = bpe_ranks(encoding)
        bpe = BPE_FILES.get(encoding.name)
        if cache_dir is None or np is None or bpe is None:
            return cls.build(ranks)
        path = cache_dir / f"{encoding.name}-{bpe.sha256[:16]}-v{TABLE_FORMAT}.npz"
        cached = cls._load(path, len(ranks))
        if cached is not None:
            return cached
        table = cls.build(ranks)
        table._save(path, len(ranks))
        return table

    @classmethod
    def _load(cls, path: Path, entries: int) -> VocabTable | None:
        """A cached table, or None when there is none or it is damaged or not this one's."""
        assert np is not None
        try:
            with np.load(path, allow_pickle=False) as f:
                slots, blob, pair_rank, meta = f["slots"], f["blob"], f["pair_rank"], f["meta"]
                digest = hashlib.sha256()
                for part in (slots, blob, pair_rank):
                    digest.update(part.tobytes())
                capacity = cls.capacity(entries)
                if (meta.tolist()[:3] != [TABLE_FORMAT, entries, capacity - 1]
                        or bytes(f["sha256"].tobytes()) != digest.digest()
                        or slots.shape != (4 * capacity,) or pair_rank.shape != (65536,)):
                    return None
                return cls(array("I", slots.tobytes()), blob.tobytes(),
                           array("I", pair_rank.tobytes()), capacity - 1)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None

    def _save(self, path: Path, entries: int) -> None:
        assert np is not None
        parts = (np.frombuffer(self.slots, dtype=np.uint32), np.frombuffer(self.blob, np.uint8),
                 np.frombuffer(self.pair_rank, dtype=np.uint32))
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part.tobytes())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with tmp.open("wb") as f:
                np.savez(f, slots=parts[0], blob=parts[1], pair_rank=parts[2],
                         meta=np.array([TABLE_FORMAT, entries, self.mask], dtype=np.int64),
                         sha256=np.frombuffer(digest.digest(), dtype=np.uint8))
            tmp.replace(path)
        except OSError:
            pass  # a read-only data directory: build at every start, as before

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
    data: bytes | memoryview  # every document's UTF-8, concatenated
    starts: array  # uint32: document d is data[starts[d]:starts[d + 1]]
    staged_at: int = 0  # pack_into: the address data was written to (a view of it)

    @classmethod
    def pack(cls, texts: Sequence[str]) -> PackedBatch:
        """Every document encoded by `str.encode` through `map` (no Python code runs per
        document), one join, and the offsets by a numpy cumulative sum; batches with lone
        surrogates are encoded as tiktoken does, document by document. (Joining the texts
        first and encoding once was measured slower: a joined str of mixed scripts is
        widened to 4 bytes a character.)"""
        if np is None:
            return cls._pack_each(texts)
        try:
            encoded = list(map(str.encode, texts))
        except UnicodeEncodeError:
            return cls._pack_each(texts)
        starts = np.zeros(len(encoded) + 1, dtype=np.uint64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.uint64, count=len(encoded)),
                  out=starts[1:])
        if starts[-1] >= NONE:
            raise ValueError("a packed batch is limited to 4 GiB")
        return cls(b"".join(encoded), array("I", starts.astype(np.uint32).tobytes()))

    @classmethod
    def pack_into(cls, texts: Sequence[str], address: int, capacity: int) -> PackedBatch:
        """`pack`, written straight into `capacity` bytes at `address` (the GPU counter's
        pinned staging buffer): each document's UTF-8 copied to its offset by
        `map(ctypes.memmove, ...)`, no join and no second copy; `data` is a view of that
        memory, valid until the caller writes there again."""
        if np is None:
            return cls._copied(cls._pack_each(texts), address, capacity)
        try:
            encoded = list(map(str.encode, texts))
        except UnicodeEncodeError:
            return cls._copied(cls._pack_each(texts), address, capacity)
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        starts = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        total = int(starts[-1])
        if total > capacity:
            raise ValueError(f"{total} bytes do not fit the {capacity}-byte staging buffer")
        bases = (address + start for start in starts[:-1].tolist())
        collections.deque(map(ctypes.memmove, bases, encoded, lengths.tolist()), maxlen=0)
        view = memoryview((ctypes.c_char * total).from_address(address)).cast("B")
        return cls(view, array("I", starts.astype(np.uint32).tobytes()), address)

    @classmethod
    def _copied(cls, batch: PackedBatch, address: int, capacity: int) -> PackedBatch:
        total = len(batch.data)
        if total > capacity:
            raise ValueError(f"{total} bytes do not fit the {capacity}-byte staging buffer")
        ctypes.memmove(address, bytes(batch.data), total)
        view = memoryview((ctypes.c_char * total).from_address(address)).cast("B")
        return cls(view, batch.starts, address)

    @classmethod
    def _pack_each(cls, texts: Sequence[str]) -> PackedBatch:
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
    long_pieces: int = 0    # counted on the CPU
    fallback_docs: int = 0  # counted whole on the CPU (the long-piece list overflowed)
    device_long_pieces: int = 0  # counted by the second pass (tok_long_piece)


def complete(batch: PackedBatch, counts: Sequence[int], longs: Sequence[int],
             long_count: int, fallback: bytes | bytearray, encoding: tiktoken.Encoding,
             long_tokens: Sequence[int] | None = None) -> Completed:
    """Exact counts from the kernels' output: the long pieces' tokens from the second pass
    (`long_tokens`, NONE where it had no room) added to their documents, the pieces it did
    not count counted on the CPU, and documents whose long pieces overflowed the list
    counted whole on the CPU. With numpy, the additions are one scatter-add."""
    docs = batch.docs
    listed = min(long_count, len(longs) // LONG_PIECE_FIELDS)
    redo = [d for d in range(docs) if fallback[d]] if np is None else np.flatnonzero(
        np.frombuffer(bytes(fallback[:docs]), dtype=np.uint8)).tolist()
    if np is None or not listed:
        return _complete_each(batch, list(counts[:docs]), longs, listed, set(redo), encoding,
                              long_tokens)
    total = np.asarray(counts[:docs], dtype=np.int64)
    table = np.asarray(longs[:LONG_PIECE_FIELDS * listed], dtype=np.int64).reshape(-1, 3)
    tokens = (np.full(listed, NONE, dtype=np.int64) if long_tokens is None
              else np.asarray(long_tokens[:listed], dtype=np.int64))
    keep = np.ones(listed, dtype=bool)
    if redo:
        redone = np.zeros(docs, dtype=bool)
        redone[redo] = True
        keep = ~redone[table[:, 2]]
    counted = keep & (tokens != NONE)
    np.add.at(total, table[counted, 2], tokens[counted])
    result = Completed(total.tolist(), device_long_pieces=int(counted.sum()))
    for start, length, doc in table[keep & (tokens == NONE)].tolist():
        piece = bytes(batch.data[start:start + length])
        result.counts[doc] += len(encoding._encode_single_piece(piece))
        result.long_pieces += 1
    _recount(batch, result, redo, encoding)
    return result


def _complete_each(batch: PackedBatch, counts: list[int], longs: Sequence[int], listed: int,
                   redo: set[int], encoding: tiktoken.Encoding,
                   long_tokens: Sequence[int] | None) -> Completed:
    """`complete` one long piece at a time (no numpy, or nothing listed)."""
    result = Completed(counts)
    tokens = list(long_tokens[:listed]) if long_tokens is not None else [NONE] * listed
    for i in range(listed):
        start, length, doc = longs[3 * i:3 * i + 3]
        if doc in redo:
            continue
        if tokens[i] != NONE:
            result.counts[doc] += tokens[i]
            result.device_long_pieces += 1
        else:
            piece = bytes(batch.data[start:start + length])
            result.counts[doc] += len(encoding._encode_single_piece(piece))
            result.long_pieces += 1
    _recount(batch, result, sorted(redo), encoding)
    return result


def _recount(batch: PackedBatch, result: Completed, redo: Sequence[int],
             encoding: tiktoken.Encoding) -> None:
    """Documents whose long pieces overflowed the list: counted whole on the CPU."""
    for doc in redo:
        text = bytes(batch.data[batch.starts[doc]:batch.starts[doc + 1]]).decode()
        result.counts[doc] = len(encoding.encode_ordinary(text))
    result.fallback_docs = len(redo)
