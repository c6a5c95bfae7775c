"""The GPU counter on a real device: tiktoken's counts, exactly (marked `gpu`).

    .venv/bin/python -m pytest tests/tokens/test_gpu_device.py -m gpu -v -s
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import tiktoken

from gateway.settings import PROJECT_ROOT, TokensSettings
from gateway.tokens.encodings import ENCODINGS
from gateway.tokens.gpu import GpuCounter, unavailable_reason
from gateway.tokens.models import ModelTokenizers
from gateway.tokens.sample_text import mixed_documents
from gateway.tokens.service import build_token_service

from .corpus import FIXED, random_texts

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(unavailable_reason() is not None,
                                 reason=f"no GPU: {unavailable_reason()}")]
RANDOM = random_texts()


@pytest.fixture(scope="module")
def gpu(encodings: dict[str, tiktoken.Encoding]) -> Iterator[GpuCounter]:
    counter = GpuCounter(encodings)
    print(f"\n{counter.device_name}: kernel compiled in {counter.compile_seconds:.2f} s")
    yield counter
    counter.close()


def reference(enc: tiktoken.Encoding, texts: list[str]) -> list[int]:
    return [len(ids) for ids in enc.encode_ordinary_batch(texts, num_threads=16)]


@pytest.mark.parametrize("name", ENCODINGS)
@pytest.mark.parametrize("chunk", [1, 7, 64, 256])
def test_parity_corpus(gpu: GpuCounter, name: str, chunk: int,
                       encodings: dict[str, tiktoken.Encoding]) -> None:
    gpu.chunk = chunk
    try:
        assert gpu.count(FIXED, name) == reference(encodings[name], FIXED)
        assert gpu.count(RANDOM, name) == reference(encodings[name], RANDOM)
    finally:
        gpu.chunk = 64


@pytest.mark.parametrize("name", ENCODINGS)
def test_a_hundred_megabytes_of_mixed_text(gpu: GpuCounter, name: str,
                                           encodings: dict[str, tiktoken.Encoding]) -> None:
    docs = mixed_documents(100, seed=11)
    expected = reference(encodings[name], docs)
    started = time.perf_counter()
    counts = gpu.count(docs, name)
    elapsed = time.perf_counter() - started
    assert counts == expected
    size = sum(len(d.encode()) for d in docs)
    print(f"\n{name}: {size / 1e6:.0f} MB in {elapsed:.2f} s, {size / 1e6 / elapsed:.0f} MB/s")


class _NoAllocation:
    def __init__(self, device: Any) -> None:
        self._device = device

    def allocate(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the counter allocated device memory for a batch")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._device, name)


def test_batches_reuse_the_buffers_allocated_at_start(
        gpu: GpuCounter, encodings: dict[str, tiktoken.Encoding]) -> None:
    device = gpu.device
    gpu.device = _NoAllocation(device)
    try:
        for _ in range(3):
            assert gpu.count(FIXED, "o200k_base") == reference(encodings["o200k_base"], FIXED)
    finally:
        gpu.device = device


def test_an_overflowing_long_piece_list_recounts_documents(
        gpu: GpuCounter, encodings: dict[str, tiktoken.Encoding]) -> None:
    texts = [" " * 300 + "x", "a" * 129, "short", "y" * 500 + " z" + "\n" * 200] * 50
    cap, gpu.long_cap = gpu.long_cap, 3
    before = gpu.stats.fallback_docs
    try:
        assert gpu.count(texts, "cl100k_base") == reference(encodings["cl100k_base"], texts)
    finally:
        gpu.long_cap = cap
    assert gpu.stats.fallback_docs > before


def test_concurrent_callers(gpu: GpuCounter, encodings: dict[str, tiktoken.Encoding]) -> None:
    parts = [RANDOM[i::8] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: gpu.count(p, "o200k_base"), parts))
    assert results == [reference(encodings["o200k_base"], p) for p in parts]


async def test_the_service_routes_large_batches_to_the_gpu(
        encodings: dict[str, tiktoken.Encoding]) -> None:
    models = ModelTokenizers.load(PROJECT_ROOT / "config" / "tokens.toml")
    service = build_token_service(TokensSettings(backend="gpu"), models, encodings)
    try:
        docs = mixed_documents(4)
        assert await service.count(docs, "o200k_base") == reference(encodings["o200k_base"],
                                                                    docs)
        assert service.backend == "gpu" and service.device
        assert service.usage["gpu"].documents == len(docs)
    finally:
        service.close()


@pytest.mark.parametrize("name", ENCODINGS)
def test_long_pieces_are_merged_on_the_device(gpu: GpuCounter, name: str,
                                              encodings: dict[str, tiktoken.Encoding]) -> None:
    from .test_gpu_host import LONG

    before = (gpu.stats.long_pieces, gpu.stats.device_long_pieces)
    assert gpu.count(LONG, name) == reference(encodings[name], LONG)
    assert gpu.stats.long_pieces == before[0]  # none left to the CPU
    assert gpu.stats.device_long_pieces > before[1] + 60


def test_a_second_start_loads_the_cached_kernel_and_tables(
        tmp_path: Path, encodings: dict[str, tiktoken.Encoding]) -> None:
    first = GpuCounter(encodings, cache_dir=tmp_path)
    try:
        expected = first.count(FIXED, "o200k_base")
    finally:
        first.close()
    assert list(tmp_path.glob("count-sm_*.cubin")) and list(tmp_path.glob("*.npz"))
    started = time.perf_counter()
    second = GpuCounter(encodings, cache_dir=tmp_path)
    elapsed = time.perf_counter() - started
    try:
        assert second.count(FIXED, "o200k_base") == expected
        print(f"\nstart with caches: {elapsed:.3f} s (kernel {second.compile_seconds:.3f} s, "
              f"tables {second.table_seconds:.3f} s)")
        assert second.compile_seconds < 0.2 and second.table_seconds < 0.2
    finally:
        second.close()
