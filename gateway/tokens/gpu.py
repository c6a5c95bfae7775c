"""The GPU counter: exact tiktoken counts from a CUDA kernel, through NVIDIA's `cuda.core`.

The kernel (`kernels/count.cu` over `kernels/scanner.h`) is compiled at start with NVRTC
for the device's architecture. Everything it needs is allocated once and reused: the
vocabulary hash tables of both encodings in device memory, and a pinned staging buffer and
a device buffer for each of the batch's text, offsets and outputs. One batch runs at a time
(a lock); callers gather into batches in `TokenService`. Pieces longer than the kernel's
limit, and documents whose long pieces overflow the list, are counted on the CPU by
`packing.complete`, so counts stay exact.

Needs the optional extra `gpu` (`cuda-core[cu13]`), a driver and a device.
"""

from __future__ import annotations

import ctypes
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

KERNELS = Path(__file__).parent / "kernels"
KERNEL = "tok_count_kernel"


class GpuUnavailable(RuntimeError):
    """No usable GPU: cuda-python missing, no driver, no such device, or no compile."""


def unavailable_reason(device_id: int = 0) -> str | None:
    """Why the GPU counter cannot run here, or None if it can (cheap: compiles nothing)."""
    try:
        from cuda.core import Device
    except ImportError as exc:
        return (f"cuda-python is not installed ({exc}); install the extra: "
                "pip install 'ai-cost-gateway[gpu]'")
    try:
        devices = Device.get_all_devices()
    except Exception as exc:  # the driver's own error types vary by version
        return f"no CUDA driver: {type(exc).__name__}: {exc}"
    if device_id >= len(devices):
        return f"no CUDA device {device_id} ({len(devices)} found)"
    return None


def compile_kernel(arch: str) -> Any:
    """NVRTC: the counting kernel as a cubin for `arch` ("sm_90"); needs no device."""
    from cuda.core import Program, ProgramOptions

    options = ProgramOptions(name="count.cu", arch=arch, std="c++17",
                             include_path=str(KERNELS))
    program = Program((KERNELS / "count.cu").read_text(), code_type="c++", options=options)
    return program.compile("cubin")


@dataclass
class GpuStats:
    batches: int = 0
    documents: int = 0
    bytes: int = 0
    long_pieces: int = 0    # counted on the CPU
    fallback_docs: int = 0  # counted whole on the CPU
    seconds: float = 0.0


class _Staged:
    """A pinned host buffer and a device buffer of the same size, allocated once."""

    def __init__(self, device: Any, pinned: Any, size: int, stream: Any) -> None:
        self.size = size
        self.host = pinned.allocate(size)
        self.device = device.allocate(size, stream=stream)

    def host_address(self) -> int:
        return int(self.host.handle)

    def upload(self, nbytes: int, stream: Any) -> None:
        if nbytes:
            self._part(self.device, nbytes).copy_from(self._part(self.host, nbytes),
                                                      stream=stream)

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
        self.host.close()


def _max_bytes(text: str) -> int:
    """A ceiling on the text's UTF-8 size without encoding it (isascii is a flag check)."""
    return len(text) if text.isascii() else 4 * len(text)


class GpuCounter:
    """A `Counter` on one CUDA device. Thread-safe: batches run one at a time."""

    name = "gpu"

    def __init__(self, encodings: dict[str, tiktoken.Encoding], *, device_id: int = 0,
                 capacity_bytes: int = 64 << 20, max_docs: int = 1 << 17, chunk: int = 64,
                 block: int = 128, long_cap: int = 1 << 16) -> None:
        reason = unavailable_reason(device_id)
        if reason:
            raise GpuUnavailable(reason)
        from cuda.core import Device, LegacyPinnedMemoryResource

        self._encodings = {k: v for k, v in encodings.items() if k in SCANNERS}
        self.capacity_bytes, self.max_docs = capacity_bytes, max_docs
        self.chunk, self.block, self.long_cap = chunk, block, long_cap
        self.stats = GpuStats()
        self._lock = threading.Lock()
        self.device = Device(device_id)
        self.device.set_current()
        self.device_name = f"{self.device.name} (sm_{self.device.arch}, device {device_id})"
        started = time.perf_counter()
        try:
            self.kernel = compile_kernel(f"sm_{self.device.arch}").get_kernel(KERNEL)
        except Exception as exc:
            raise GpuUnavailable(f"cannot compile the counting kernel: {exc}") from exc
        self.compile_seconds = time.perf_counter() - started
        self.stream = self.device.create_stream()
        pinned = LegacyPinnedMemoryResource()
        self._tables = {name: self._upload_table(VocabTable.of(enc), pinned)
                        for name, enc in self._encodings.items()}
        self._text = _Staged(self.device, pinned, capacity_bytes, self.stream)
        self._starts = _Staged(self.device, pinned, 4 * (max_docs + 1), self.stream)
        self._counts = _Staged(self.device, pinned, 4 * max_docs, self.stream)
        self._longs = _Staged(self.device, pinned, 4 * LONG_PIECE_FIELDS * long_cap,
                              self.stream)
        self._long_count = _Staged(self.device, pinned, 4, self.stream)
        self._fallback = _Staged(self.device, pinned, max_docs, self.stream)
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
        """Exact counts; batches larger than the staging buffers are split."""
        counts: list[int] = []
        for part in self._parts(texts):
            if len(part) == 1 and _max_bytes(part[0]) > self.capacity_bytes:
                counts.append(len(self._encodings[encoding].encode_ordinary(part[0])))
            else:
                counts.extend(self._count_batch(PackedBatch.pack(part), encoding))
        return counts

    def _parts(self, texts: Sequence[str]) -> list[Sequence[str]]:
        parts: list[Sequence[str]] = []
        begin, size = 0, 0
        for i, text in enumerate(texts):
            need = _max_bytes(text)
            if i > begin and (size + need > self.capacity_bytes
                              or i - begin >= self.max_docs):
                parts.append(texts[begin:i])
                begin, size = i, 0
            size += need
        if begin < len(texts):
            parts.append(texts[begin:])
        return parts

    def _count_batch(self, batch: PackedBatch, encoding: str) -> list[int]:
        from cuda.core import LaunchConfig, launch

        started = time.perf_counter()
        docs, nbytes = batch.docs, len(batch.data)
        chunks = batch.chunks(self.chunk)
        slots, blob, pair_rank, mask = self._tables[encoding]
        with self._lock:
            self.device.set_current()  # callers come from a thread pool
            ctypes.memmove(self._text.host_address(), batch.data, nbytes)
            ctypes.memmove(self._starts.host_address(), batch.starts.tobytes(), 4 * (docs + 1))
            stream = self.stream
            self._text.upload(nbytes, stream)
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
            self._counts.download(4 * docs, stream)
            self._long_count.download(4, stream)
            self._fallback.download(docs, stream)
            stream.sync()
            long_count = ctypes.c_uint32.from_address(self._long_count.host_address()).value
            listed = min(long_count, self.long_cap)
            if listed:
                self._longs.download(4 * LONG_PIECE_FIELDS * listed, stream)
                stream.sync()
            counts = list((ctypes.c_uint32 * docs).from_address(self._counts.host_address()))
            longs = list((ctypes.c_uint32 * (LONG_PIECE_FIELDS * listed)).from_address(
                self._longs.host_address()))
            fallback = ctypes.string_at(self._fallback.host_address(), docs)
        done = complete(batch, counts, longs, long_count, fallback, self._encodings[encoding])
        stats = self.stats
        stats.batches += 1
        stats.documents += docs
        stats.bytes += nbytes
        stats.long_pieces += done.long_pieces
        stats.fallback_docs += done.fallback_docs
        stats.seconds += time.perf_counter() - started
        return done.counts

    def close(self) -> None:
        with self._lock:
            self.device.set_current()
            self.stream.sync()
            for staged in (self._text, self._starts, self._counts, self._longs,
                           self._long_count, self._fallback):
                staged.close()
            for slots, blob, pair_rank, _ in self._tables.values():
                for buffer in (slots, blob, pair_rank):
                    buffer.close()
            self.stream.close()
