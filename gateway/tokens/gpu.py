"""The GPU counter: exact tiktoken counts from a CUDA kernel, through NVIDIA's `cuda.core`.

The kernel (`kernels/count.cu` over `kernels/scanner.h`) is compiled at start with NVRTC
for the device's architecture. Everything it needs is allocated once and reused: the
vocabulary hash tables of both encodings in device memory, and a pinned staging buffer and
a device buffer for each of the batch's text, offsets and outputs. One batch runs at a time
(a lock); callers gather into batches in `TokenService`. Pieces longer than the kernel's
limit (TOK_MAX_PIECE, 128 bytes) are listed by the first kernel and merged by a second
(`tok_long_kernel`: one thread per piece, O(n log n), scratch in device memory); only those
the scratch has no room for, and documents whose long pieces overflow the list, are counted
on the CPU by `packing.complete`, so counts stay exact. With a `cache_dir`, the cubin and the
vocabulary tables are cached there, so a start compiles and builds nothing.

Needs the optional extra `gpu` (`cuda-core[cu13]`), a driver and a device.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken

from gateway.tokens.packing import (
    LONG_PIECE_FIELDS,
    SCANNERS,
    PackedBatch,
    VocabTable,
    complete,
)

# Re-exported: the probe lives apart so that asking costs no numpy import.
from gateway.tokens.probe import GpuUnavailable, driver_reason, unavailable_reason  # noqa: F401

KERNELS = Path(__file__).parent / "kernels"
KERNEL = "tok_count_kernel"
LONG_KERNEL = "tok_long_kernel"  # the second pass: pieces over the first's limit


KERNEL_SOURCES = ("count.cu", "scanner.h", "unicode_table.h")
CUBIN_FORMAT = 1  # bump when the way the kernels are compiled changes


def cubin_path(cache_dir: Path, arch: str) -> Path:
    """Where the cubin for `arch` is cached: named by a hash of what it depends on (the
    sources, the compile options, the architecture, the NVRTC version)."""
    digest = hashlib.sha256(f"{CUBIN_FORMAT}\0{arch}\0c++17\0{nvrtc_version()}".encode())
    for name in KERNEL_SOURCES:
        digest.update((KERNELS / name).read_bytes())
    return cache_dir / f"count-{arch}-{digest.hexdigest()[:24]}.cubin"


def nvrtc_version() -> str:
    try:
        from cuda.bindings import nvrtc

        _, major, minor = nvrtc.nvrtcVersion()
        return f"{major}.{minor}"
    except Exception:  # no cuda.bindings (a stand-in in the tests): key on the sources alone
        return "unknown"


def compile_kernel(arch: str, cache_dir: Path | None = None) -> Any:
    """NVRTC: the counting kernels as a cubin for `arch` ("sm_90"); needs no device. With
    `cache_dir`, a cubin compiled earlier from the same sources is loaded from there
    instead of compiling (~1 s), and a new one is saved there."""
    from cuda.core import ObjectCode, Program, ProgramOptions

    cached = None if cache_dir is None else cubin_path(cache_dir, arch)
    if cached is not None and cached.is_file():
        return ObjectCode.from_cubin(cached.read_bytes(), name="count.cu")
    options = ProgramOptions(name="count.cu", arch=arch, std="c++17",
                             include_path=str(KERNELS))
    program = Program((KERNELS / "count.cu").read_text(), code_type="c++", options=options)
    code = program.compile("cubin")
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
            tmp.write_bytes(bytes(code.code))
            tmp.replace(cached)
        except OSError:
            pass  # a read-only data directory: compile at every start, as before
    return code


def load_kernels(arch: str, cache_dir: Path | None) -> tuple[Any, Any]:
    """The two kernels (count, long pieces); a cached cubin that does not load is removed
    and compiled again."""
    try:
        code = compile_kernel(arch, cache_dir)
        return code.get_kernel(KERNEL), code.get_kernel(LONG_KERNEL)
    except Exception:
        if cache_dir is None or not cubin_path(cache_dir, arch).is_file():
            raise
        cubin_path(cache_dir, arch).unlink(missing_ok=True)
    code = compile_kernel(arch, cache_dir)
    return code.get_kernel(KERNEL), code.get_kernel(LONG_KERNEL)


@dataclass
class GpuStats:
    batches: int = 0
    documents: int = 0
    bytes: int = 0
    long_pieces: int = 0    # counted on the CPU (the second pass had no scratch left)
    fallback_docs: int = 0  # counted whole on the CPU
    device_long_pieces: int = 0  # counted by the second kernel
    seconds: float = 0.0    # packing, device work and completion together
    pack_seconds: float = 0.0
    device_seconds: float = 0.0  # staging copies, transfers and both kernels
    complete_seconds: float = 0.0


class _Staged:
    """A pinned host buffer and a device buffer of the same size, allocated once."""

    def __init__(self, device: Any, pinned: Any, size: int, stream: Any) -> None:
        self.size = size
        self.host = pinned.allocate(size)
        self.hosts = [self.host]  # more pinned buffers that may upload to `device`
        self.device = device.allocate(size, stream=stream)

    def host_address(self) -> int:
        return int(self.host.handle)

    def upload(self, nbytes: int, stream: Any, source: int = 0) -> None:
        """Host to device; from the pinned buffer at address `source` if one is given
        (`GpuCounter._text_hosts`), else from this one's."""
        if nbytes:
            host = self.host
            if source and source != int(self.host.handle):
                host = next(h for h in self.hosts if int(h.handle) == source)
            self._part(self.device, nbytes).copy_from(self._part(host, nbytes), stream=stream)

    def download(self, nbytes: int, stream: Any) -> None:
        if nbytes:
            self._part(self.host, nbytes).copy_from(self._part(self.device, nbytes),
                                                    stream=stream)

    def zero(self, nbytes: int, stream: Any) -> None:
        if nbytes:
            self._part(self.device, nbytes).fill(0, stream=stream)

    @staticmethod
    def _part(buffer: Any, nbytes: int) -> Any:
        from cuda.core import Buffer

        # a view of the first nbytes: no memory resource, so closing it frees nothing
        return Buffer.from_handle(int(buffer.handle), nbytes, owner=buffer)

    def close(self) -> None:
        self.device.close()
        for host in self.hosts:
            host.close()


@dataclass
class _Raw:
    """A part's kernel outputs, read out of the staging buffers."""

    counts: list[int]
    longs: list[int]
    long_count: int
    fallback: bytes
    long_tokens: list[int]


def _max_bytes(text: str) -> int:
    """A ceiling on the text's UTF-8 size without encoding it (isascii is a flag check)."""
    return len(text) if text.isascii() else 4 * len(text)


class GpuCounter:
    """A `Counter` on one CUDA device. Thread-safe: batches run one at a time."""

    name = "gpu"

    def __init__(self, encodings: dict[str, tiktoken.Encoding], *, device_id: int = 0,
                 capacity_bytes: int = 64 << 20, max_docs: int = 1 << 17, chunk: int = 64,
                 block: int = 128, long_cap: int = 1 << 16, long_scratch_bytes: int = 1 << 28,
                 cache_dir: Path | None = None, part_bytes: int = 16 << 20) -> None:
        reason = unavailable_reason(device_id)
        if reason:
            raise GpuUnavailable(reason)
        from cuda.core import Device, LegacyPinnedMemoryResource

        self._encodings = {k: v for k, v in encodings.items() if k in SCANNERS}
        self.capacity_bytes, self.max_docs = capacity_bytes, max_docs
        self.chunk, self.block, self.long_cap = chunk, block, long_cap
        self.scratch_words = max(long_scratch_bytes // 8, 1)
        self.part_bytes = part_bytes  # a larger batch is pipelined in parts of this size
        self.stats = GpuStats()
        self._lock = threading.Lock()
        self.device = Device(device_id)
        self.device.set_current()
        self.device_name = f"{self.device.name} (sm_{self.device.arch}, device {device_id})"
        started = time.perf_counter()
        try:
            self.kernel, self.long_kernel = load_kernels(f"sm_{self.device.arch}", cache_dir)
        except Exception as exc:
            raise GpuUnavailable(f"cannot compile the counting kernel: {exc}") from exc
        self.compile_seconds = time.perf_counter() - started
        self.stream = self.device.create_stream()
        pinned = LegacyPinnedMemoryResource()
        started = time.perf_counter()
        self._tables = {name: self._upload_table(VocabTable.of(enc, cache_dir), pinned)
                        for name, enc in self._encodings.items()}
        self.table_seconds = time.perf_counter() - started
        self._text = _Staged(self.device, pinned, capacity_bytes, self.stream)
        # double-buffered: a part is packed into one pinned buffer while the previous one
        # may still be uploading from the other
        self._text.hosts.append(pinned.allocate(capacity_bytes))
        self._text_hosts = self._text.hosts
        self._next_host = 0
        self._starts = _Staged(self.device, pinned, 4 * (max_docs + 1), self.stream)
        self._counts = _Staged(self.device, pinned, 4 * max_docs, self.stream)
        self._longs = _Staged(self.device, pinned, 4 * LONG_PIECE_FIELDS * long_cap,
                              self.stream)
        self._long_count = _Staged(self.device, pinned, 4, self.stream)
        self._fallback = _Staged(self.device, pinned, max_docs, self.stream)
        self._long_tokens = _Staged(self.device, pinned, 4 * long_cap, self.stream)
        self._scratch_used = _Staged(self.device, pinned, 8, self.stream)
        self._scratch = self.device.allocate(8 * self.scratch_words, stream=self.stream)
        self.stream.sync()

    @property
    def encodings(self) -> tuple[str, ...]:
        return tuple(self._encodings)

    def _upload_table(self, table: VocabTable, pinned: Any) -> tuple[Any, Any, Any, int]:
        """The vocabulary in device memory, once; its staging buffer is freed after."""
        buffers = []
        for data in (table.slots.tobytes(), table.blob, table.pair_rank.tobytes()):
            staged = _Staged(self.device, pinned, len(data), self.stream)
            ctypes.memmove(staged.host_address(), data, len(data))
            staged.upload(len(data), self.stream)
            self.stream.sync()
            staged.host.close()
            buffers.append(staged.device)
        return buffers[0], buffers[1], buffers[2], table.mask

    def count(self, texts: Sequence[str], encoding: str) -> list[int]:
        """Exact counts; batches larger than the staging buffers are split into parts, and
        the parts pipelined: while the device counts one part, the CPU packs the next and
        completes the one before."""
        results: list[list[int]] = []
        enc = self._encodings[encoding]
        with self._lock:
            self.device.set_current()  # callers come from a thread pool
            running: tuple[PackedBatch, int] | None = None  # submitted, not yet collected
            finished: tuple[PackedBatch, _Raw, int] | None = None  # collected, not completed
            for part in self._parts(texts):
                if len(part) == 1 and _max_bytes(part[0]) > self.capacity_bytes:
                    batch, slot = None, len(results)
                    results.append([len(enc.encode_ordinary(part[0]))])
                else:
                    started = time.perf_counter()
                    host = self._text_hosts[self._next_host]
                    self._next_host ^= 1
                    batch = PackedBatch.pack_into(part, int(host.handle), self.capacity_bytes)
                    slot = len(results)
                    results.append([])
                    self._timed("pack_seconds", started)
                if running is not None:  # the device's part is done: its outputs are read
                    finished = (running[0], self._collect(running[0]), running[1])
                    running = None
                if batch is not None:
                    self._submit(batch, encoding)
                    running = (batch, slot)
                if finished is not None:  # on the CPU while the device counts the next part
                    results[finished[2]] = self._complete(finished[0], finished[1], enc)
                    finished = None
            if running is not None:
                results[running[1]] = self._complete(running[0], self._collect(running[0]), enc)
        return [n for part_counts in results for n in part_counts]

    def _timed(self, field: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        setattr(self.stats, field, getattr(self.stats, field) + elapsed)
        self.stats.seconds += elapsed

    def _parts(self, texts: Sequence[str]) -> list[Sequence[str]]:
        parts: list[Sequence[str]] = []
        begin, size = 0, 0
        for i, text in enumerate(texts):
            need = _max_bytes(text)
            if i > begin and (size + need > min(self.part_bytes, self.capacity_bytes)
                              or i - begin >= self.max_docs):
                parts.append(texts[begin:i])
                begin, size = i, 0
            size += need
        if begin < len(texts):
            parts.append(texts[begin:])
        return parts

    def _submit(self, batch: PackedBatch, encoding: str) -> None:
        """Stage a packed part and enqueue its copies, both kernels and every download; the
        device works on it while the caller goes on (`_collect` waits for it)."""
        from cuda.core import LaunchConfig, launch

        started = time.perf_counter()
        docs, nbytes = batch.docs, len(batch.data)
        chunks = batch.chunks(self.chunk)
        slots, blob, pair_rank, mask = self._tables[encoding]
        if not batch.staged_at:  # packed elsewhere: staged here
            ctypes.memmove(self._text.host_address(), bytes(batch.data), nbytes)
        ctypes.memmove(self._starts.host_address(), batch.starts.tobytes(), 4 * (docs + 1))
        stream = self.stream
        self._text.upload(nbytes, stream, batch.staged_at)
        self._starts.upload(4 * (docs + 1), stream)
        self._counts.zero(4 * docs, stream)
        self._fallback.zero(docs, stream)
        self._long_count.zero(4, stream)
        if chunks:
            config = LaunchConfig(grid=-(-chunks // self.block), block=self.block)
            u32 = ctypes.c_uint32
            launch(stream, config, self.kernel, ctypes.c_int32(SCANNERS[encoding]),
                   self._text.device, self._starts.device, u32(docs), u32(self.chunk),
                   u32(chunks), slots, blob, pair_rank, u32(mask), self._counts.device,
                   self._longs.device, u32(self.long_cap), self._long_count.device,
                   self._fallback.device)
            # the second pass reads how many long pieces the first listed on the device: a
            # grid for all long_cap of them, the threads past the count return at once
            self._scratch_used.zero(8, stream)
            config = LaunchConfig(grid=-(-self.long_cap // self.block), block=self.block)
            launch(stream, config, self.long_kernel, self._text.device, self._longs.device,
                   self._long_count.device, u32(self.long_cap), slots, blob, pair_rank,
                   u32(mask), self._scratch, ctypes.c_uint64(self.scratch_words),
                   self._scratch_used.device, self._long_tokens.device)
        self._counts.download(4 * docs, stream)
        self._long_count.download(4, stream)
        self._fallback.download(docs, stream)
        # the whole long-piece list (12 bytes a piece): no second round trip for its length
        self._longs.download(4 * LONG_PIECE_FIELDS * self.long_cap, stream)
        self._long_tokens.download(4 * self.long_cap, stream)
        self._timed("device_seconds", started)

    def _collect(self, batch: PackedBatch) -> _Raw:
        """Wait for the submitted part and read its outputs out of the staging buffers."""
        started = time.perf_counter()
        docs = batch.docs
        self.stream.sync()
        long_count = ctypes.c_uint32.from_address(self._long_count.host_address()).value
        listed = min(long_count, self.long_cap) if batch.chunks(self.chunk) else 0
        raw = _Raw(
            counts=list((ctypes.c_uint32 * docs).from_address(self._counts.host_address())),
            longs=list((ctypes.c_uint32 * (LONG_PIECE_FIELDS * listed)).from_address(
                self._longs.host_address())),
            long_count=long_count if listed else 0,
            fallback=ctypes.string_at(self._fallback.host_address(), docs),
            long_tokens=list((ctypes.c_uint32 * listed).from_address(
                self._long_tokens.host_address())))
        self._timed("device_seconds", started)
        return raw

    def _complete(self, batch: PackedBatch, raw: _Raw, enc: tiktoken.Encoding) -> list[int]:
        started = time.perf_counter()
        done = complete(batch, raw.counts, raw.longs, raw.long_count, raw.fallback, enc,
                        raw.long_tokens)
        stats = self.stats
        stats.batches += 1
        stats.documents += batch.docs
        stats.bytes += len(batch.data)
        stats.long_pieces += done.long_pieces
        stats.fallback_docs += done.fallback_docs
        stats.device_long_pieces += done.device_long_pieces
        self._timed("complete_seconds", started)
        return done.counts

    def close(self) -> None:
        with self._lock:
            self.device.set_current()
            self.stream.sync()
            for staged in (self._text, self._starts, self._counts, self._longs,
                           self._long_count, self._fallback, self._long_tokens,
                           self._scratch_used):
                staged.close()
            self._scratch.close()
            for slots, blob, pair_rank, _ in self._tables.values():
                for buffer in (slots, blob, pair_rank):
                    buffer.close()
            self.stream.close()
