"""The host build of the GPU counter's C++ (`kernels/host.cpp`), compiled with the system's
C++ compiler and loaded with ctypes.

It runs the very scanner, sync-point and merge code that the kernels run, chunk by chunk and
long piece by long piece as their threads would, so its exactness against tiktoken is the
kernels'. Tests and
the benchmark use it; the gateway never serves with it.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import shutil
import subprocess
from array import array
from collections.abc import Sequence
from pathlib import Path

import tiktoken

from gateway.tokens.packing import (
    LONG_PIECE_FIELDS,
    SCANNERS,
    Completed,
    PackedBatch,
    VocabTable,
    complete,
    long_words,
    utf8,
)

KERNELS = Path(__file__).parent / "kernels"
SOURCES = ("host.cpp", "scanner.h", "unicode_table.h")
U32P = ctypes.POINTER(ctypes.c_uint32)


class NativeUnavailable(RuntimeError):
    pass


def compiler() -> str | None:
    return next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)


def build(directory: Path, *, test_hooks: bool = False) -> Path:
    """Compile host.cpp into `directory` (reused while the sources are unchanged)."""
    cxx = compiler()
    if cxx is None:
        raise NativeUnavailable("no C++ compiler (g++, c++ or clang++) on PATH")
    flags = ["-O2", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror"]
    if test_hooks:
        flags.append("-DTOK_CLASS_OVERRIDE")
    digest = hashlib.sha256(" ".join([cxx, *flags]).encode())
    for name in SOURCES:
        digest.update((KERNELS / name).read_bytes())
    target = directory / f"libtokens-{digest.hexdigest()[:16]}.so"
    if not target.exists():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        result = subprocess.run([cxx, *flags, "-I", str(KERNELS), str(KERNELS / "host.cpp"),
                                 "-o", str(tmp)], capture_output=True, text=True, check=False)
        if result.returncode:
            raise NativeUnavailable(f"{cxx} failed:\n{result.stderr}")
        tmp.replace(target)
    return target


def _u32(values: array) -> ctypes.Array[ctypes.c_uint32]:
    return (ctypes.c_uint32 * len(values)).from_buffer(values)


class HostLib:
    """ctypes bindings of host.cpp."""

    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        self.test_hooks = hasattr(self.lib, "tok_host_override")
        self.lib.tok_host_encode.restype = ctypes.c_longlong
        self.lib.tok_host_pieces.restype = ctypes.c_uint32
        self.lib.tok_host_unsound_sync.restype = ctypes.c_uint32
        self.lib.tok_host_class.restype = ctypes.c_uint32
        self.lib.tok_host_long_tokens.restype = ctypes.c_uint32

    def count(self, scanner: int, table: VocabTable, batch: PackedBatch, chunk: int,
              long_cap: int = 4096) -> tuple[array, array, int, bytearray]:
        """Raw kernel output: (counts, long pieces, how many long pieces, fallback flags)."""
        counts = array("I", bytes(4 * max(batch.docs, 1)))
        longs = array("I", bytes(4 * LONG_PIECE_FIELDS * long_cap))
        long_count = ctypes.c_uint32(0)
        fallback = bytearray(max(batch.docs, 1))
        self.lib.tok_host_count(
            scanner, batch.data, _u32(batch.starts), ctypes.c_uint32(batch.docs),
            ctypes.c_uint32(chunk), _u32(table.slots), table.blob, _u32(table.pair_rank),
            ctypes.c_uint32(table.mask), _u32(counts), _u32(longs), ctypes.c_uint32(long_cap),
            ctypes.byref(long_count), (ctypes.c_uint8 * len(fallback)).from_buffer(fallback))
        return counts, longs, long_count.value, fallback

    def long(self, table: VocabTable, batch: PackedBatch, longs: array, long_count: int,
             scratch_words: int | None = None) -> array:
        """The second pass over the listed long pieces: their tokens, NONE where the scratch
        (`scratch_words` 64-bit words; default: enough for all of them) ran out."""
        listed = min(long_count, len(longs) // LONG_PIECE_FIELDS)
        if scratch_words is None:
            scratch_words = sum(long_words(longs[3 * i + 1]) for i in range(listed))
        scratch = (ctypes.c_uint64 * max(scratch_words, 1))()
        used = ctypes.c_uint64(0)
        tokens = array("I", bytes(4 * max(listed, 1)))
        self.lib.tok_host_long(
            batch.data, _u32(longs), ctypes.byref(ctypes.c_uint32(long_count)),
            ctypes.c_uint32(len(longs) // LONG_PIECE_FIELDS), _u32(table.slots), table.blob,
            _u32(table.pair_rank), ctypes.c_uint32(table.mask), scratch,
            ctypes.c_uint64(scratch_words), ctypes.byref(used), _u32(tokens))
        return tokens[:listed]

    def long_tokens(self, table: VocabTable, piece: bytes) -> int:
        """Tokens of one piece of any length by the second pass's merge."""
        scratch = (ctypes.c_uint64 * long_words(len(piece)))()
        return int(self.lib.tok_host_long_tokens(
            piece, ctypes.c_uint32(len(piece)), _u32(table.slots), table.blob,
            _u32(table.pair_rank), ctypes.c_uint32(table.mask), scratch,
            ctypes.c_uint64(len(scratch))))

    def encode(self, scanner: int, table: VocabTable, data: bytes) -> list[int]:
        ids = array("I", bytes(4 * (len(data) + 1)))
        n = self.lib.tok_host_encode(scanner, data, ctypes.c_uint32(len(data)),
                                     _u32(table.slots), table.blob, _u32(table.pair_rank),
                                     ctypes.c_uint32(table.mask), _u32(ids),
                                     ctypes.c_uint32(len(ids)))
        if n < 0:
            raise ValueError("a piece is longer than the kernel's limit")
        return ids[:n].tolist()

    def pieces(self, scanner: int, data: bytes) -> list[bytes]:
        ends = array("I", bytes(4 * (len(data) + 1)))
        n = self.lib.tok_host_pieces(scanner, data, ctypes.c_uint32(len(data)), _u32(ends),
                                     ctypes.c_uint32(len(ends)))
        bounds = [0, *ends[:n]]
        return [data[a:b] for a, b in itertools.pairwise(bounds)]

    def unsound_sync(self, scanner: int, data: bytes) -> int | None:
        """The first sync point that is not a match boundary, or None."""
        at = self.lib.tok_host_unsound_sync(scanner, data, ctypes.c_uint32(len(data)))
        return None if at == len(data) else at

    def char_class(self, cp: int) -> int:
        return int(self.lib.tok_host_class(ctypes.c_uint32(cp)))

    def override(self, cp: int | None, cls: int = 0) -> None:
        """Pretend code point `cp` has class `cls` (a test-hooks build only); None undoes it."""
        self.lib.tok_host_override(ctypes.c_uint32(0xFFFFFFFF if cp is None else cp),
                                   ctypes.c_uint32(cls))


class HostCounter:
    """A `Counter` over the host build: what the GPU counter computes, on one CPU thread."""

    name = "host"

    def __init__(self, lib: HostLib, encodings: dict[str, tiktoken.Encoding], *,
                 chunk: int = 256, long_cap: int = 4096, long_pass: bool = True,
                 scratch_words: int | None = None, cache_dir: Path | None = None) -> None:
        self.lib = lib
        self.long_pass = long_pass  # False: long pieces go to the CPU, as before issue 19
        self.scratch_words = scratch_words
        self.cache_dir = cache_dir
        self._encodings = {k: v for k, v in encodings.items() if k in SCANNERS}
        self._tables: dict[str, VocabTable] = {}
        self.chunk = chunk
        self.long_cap = long_cap
        self.last: Completed | None = None

    @property
    def encodings(self) -> tuple[str, ...]:
        return tuple(self._encodings)

    def table(self, encoding: str) -> VocabTable:
        if encoding not in self._tables:
            self._tables[encoding] = VocabTable.of(self._encodings[encoding], self.cache_dir)
        return self._tables[encoding]

    def count(self, texts: Sequence[str], encoding: str) -> list[int]:
        batch = PackedBatch.pack(texts)
        table = self.table(encoding)
        counts, longs, long_count, fallback = self.lib.count(SCANNERS[encoding], table, batch,
                                                             self.chunk, self.long_cap)
        long_tokens = (self.lib.long(table, batch, longs, long_count, self.scratch_words)
                       if self.long_pass else None)
        self.last = complete(batch, counts, longs, long_count, fallback,
                             self._encodings[encoding], long_tokens)
        return self.last.counts

    def encode(self, text: str, encoding: str) -> list[int]:
        return self.lib.encode(SCANNERS[encoding], self.table(encoding), utf8(text))
