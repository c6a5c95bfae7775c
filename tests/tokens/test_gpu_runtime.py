"""`GpuCounter`'s runtime (staging, uploads, launch, downloads, completion) on a stand-in
for `cuda.core` whose "device" is host memory and whose launch runs the kernel's host
build: every step of gpu.py runs here, only CUDA itself is pretended."""

from __future__ import annotations

import ctypes
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
import tiktoken

from gateway.tokens import gpu as gpu_module
from gateway.tokens.encodings import ENCODINGS
from gateway.tokens.gpu import GpuCounter
from gateway.tokens.native import HostLib, build, compiler
from gateway.tokens.packing import long_words
from gateway.tokens.sample_text import mixed_documents

from .corpus import FIXED, random_texts

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler (g++) to build "
                                "the kernel's host twin")


class FakeBuffer:
    live = 0

    def __init__(self, size: int, owner: Any = None, handle: int | None = None) -> None:
        self.size, self.owner = size, owner
        if handle is None:
            self._memory = (ctypes.c_char * max(size, 1))(b"\xa5")  # garbage, as CUDA's is
            ctypes.memset(self._memory, 0xA5, max(size, 1))
            handle = ctypes.addressof(self._memory)
            FakeBuffer.live += 1
        self.handle = handle

    @classmethod
    def from_handle(cls, ptr: int, size: int, mr: Any = None, owner: Any = None) -> FakeBuffer:
        assert owner is not None and ptr >= owner.handle and size <= owner.size
        return cls(size, owner, ptr)

    def copy_from(self, src: FakeBuffer, *, stream: Any) -> None:
        assert src.size == self.size and stream is not None
        ctypes.memmove(self.handle, src.handle, self.size)

    def fill(self, value: int, *, stream: Any) -> None:
        ctypes.memset(self.handle, value, self.size)

    def close(self) -> None:
        if self.owner is None:
            FakeBuffer.live -= 1


class FakeStream:
    def sync(self) -> None: ...
    def close(self) -> None: ...


class FakeDevice:
    name, arch = "Fake H100", "90"

    def __init__(self, device_id: int = 0) -> None:
        self.allocations = 0

    @staticmethod
    def get_all_devices() -> tuple[FakeDevice]:
        return (FakeDevice(),)

    def set_current(self) -> None: ...

    def create_stream(self) -> FakeStream:
        return FakeStream()

    def allocate(self, size: int, *, stream: Any) -> FakeBuffer:
        self.allocations += 1
        return FakeBuffer(size)


class FakePinned:
    def allocate(self, size: int) -> FakeBuffer:
        return FakeBuffer(size)


class FakeLaunchConfig:
    def __init__(self, grid: int, block: int) -> None:
        self.grid, self.block = grid, block


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    lib = HostLib(build(tmp_path_factory.getbasetemp() / "native", test_hooks=True)).lib
    launches: list[int] = []

    def launch(stream: Any, config: FakeLaunchConfig, kernel: Any, *args: Any) -> None:
        pointers = [ctypes.c_void_p(a.handle) if isinstance(a, FakeBuffer) else a
                    for a in args]
        if kernel == gpu_module.LONG_KERNEL:  # one thread per listable long piece
            long_cap = args[3].value
            assert config.grid * config.block >= long_cap > (config.grid - 1) * config.block
            lib.tok_host_long(*pointers)
            return
        assert kernel == gpu_module.KERNEL
        chunks = args[5].value
        assert config.grid * config.block >= chunks > (config.grid - 1) * config.block
        launches.append(chunks)
        del pointers[5]
        lib.tok_host_count(*pointers)

    def compile_kernel(arch: str, cache_dir: Any = None) -> Any:
        assert arch == "sm_90"
        return types.SimpleNamespace(get_kernel=lambda name: name)

    fake = types.ModuleType("cuda.core")
    fake.Device = FakeDevice  # type: ignore[attr-defined]
    fake.Buffer = FakeBuffer  # type: ignore[attr-defined]
    fake.LegacyPinnedMemoryResource = FakePinned  # type: ignore[attr-defined]
    fake.LaunchConfig = FakeLaunchConfig  # type: ignore[attr-defined]
    fake.launch = launch  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda.core", fake)
    monkeypatch.setattr(gpu_module, "compile_kernel", compile_kernel)
    FakeBuffer.live = 0
    yield launches
    assert FakeBuffer.live == 0, "GpuCounter.close left buffers allocated"


def reference(enc: tiktoken.Encoding, texts: list[str]) -> list[int]:
    return [len(enc.encode_ordinary(t)) for t in texts]


@pytest.mark.parametrize("name", ENCODINGS)
def test_counts_through_the_runtime(fake_cuda: list[int], name: str,
                                    encodings: dict[str, tiktoken.Encoding]) -> None:
    counter = GpuCounter(encodings, capacity_bytes=1 << 20, max_docs=512, long_cap=64)
    try:
        assert counter.device_name == "Fake H100 (sm_90, device 0)"
        allocated = counter.device.allocations
        texts = FIXED + random_texts(2000) + mixed_documents(2)
        assert counter.count(texts, name) == reference(encodings[name], texts)
        assert len(fake_cuda) > 3  # split to fit 512 documents and 1 MB per batch
        assert counter.count(FIXED, name) == reference(encodings[name], FIXED)
        assert counter.device.allocations == allocated  # buffers are reused
        assert counter.stats.device_long_pieces > 0 and counter.stats.long_pieces == 0
        assert counter.stats.documents == len(texts) + len(
            FIXED)
    finally:
        counter.close()


def test_overflow_and_oversized_texts(fake_cuda: list[int],
                                      encodings: dict[str, tiktoken.Encoding]) -> None:
    counter = GpuCounter(encodings, capacity_bytes=4096, max_docs=8, long_cap=2)
    try:
        three_long = " ".join(c * 200 for c in "xyz")  # three long pieces, one document
        texts = [" " * 300 + "x", "a" * 129, "", three_long, "huge " * 2000, "small"]
        assert counter.count(texts, "o200k_base") == reference(encodings["o200k_base"], texts)
        assert counter.stats.fallback_docs >= 1
        assert counter.count([], "o200k_base") == []
        assert counter.count([""], "cl100k_base") == [0]
    finally:
        counter.close()


def test_long_pieces_beyond_the_scratch_are_counted_on_the_cpu(
        fake_cuda: list[int], encodings: dict[str, tiktoken.Encoding]) -> None:
    texts = [" " * 300 + "x", "a" * 129, "é" * 700, "🙂" * 400, "ok " + "z" * 2000]
    counter = GpuCounter(encodings, capacity_bytes=1 << 16, max_docs=64,
                         long_scratch_bytes=8 * long_words(800))
    try:
        assert counter.count(texts, "o200k_base") == reference(encodings["o200k_base"], texts)
        assert counter.stats.device_long_pieces > 0 and counter.stats.long_pieces > 0
        assert counter.stats.pack_seconds > 0 and counter.stats.device_seconds > 0
    finally:
        counter.close()
