"""Backend selection and batching in `TokenService`, with a stand-in for the GPU counter.

The stand-in is tiktoken (so counts stay exact) recording the batches it is given; what the
real GPU counter does with a batch is tested in test_gpu_host.py and test_gpu_device.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import pytest
import tiktoken
from structlog.testing import capture_logs

from gateway.settings import PROJECT_ROOT, TokensSettings
from gateway.tokens.cpu import CpuCounter
from gateway.tokens.gpu import GpuUnavailable, unavailable_reason
from gateway.tokens.models import ModelTokenizers
from gateway.tokens.service import Counter, TokenService, build_token_service

from .corpus import FIXED


class RecordingGpu(CpuCounter):
    name = "gpu"
    device_name = "Fake GPU (sm_90, device 0)"

    def __init__(self, encodings: dict[str, tiktoken.Encoding], fail: bool = False) -> None:
        super().__init__(encodings)
        self.batches: list[int] = []
        self.fail = fail
        self.closed = False

    def count(self, texts: Sequence[str], encoding: str) -> list[int]:
        self.batches.append(len(texts))
        if self.fail:
            raise RuntimeError("CUDA_ERROR_LAUNCH_FAILED")
        return super().count(texts, encoding)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def models() -> ModelTokenizers:
    return ModelTokenizers.load(PROJECT_ROOT / "config" / "tokens.toml")


def settings(**overrides: object) -> TokensSettings:
    values = {"backend": "auto", "gpu_min_batch_bytes": 10_000, "gpu_batch_window_ms": 20.0,
              "inline_max_chars": 100, "threads": 2, **overrides}
    return TokensSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def gpu_service(models: ModelTokenizers,
                encodings: dict[str, tiktoken.Encoding]) -> Iterator[TokenService]:
    fake = RecordingGpu(encodings)
    service = build_token_service(settings(), models, encodings, probe=lambda device: None,
                                  gpu_factory=lambda e, d: fake)
    yield service
    service.close()
    assert fake.closed


def test_without_cuda_here_the_probe_says_why() -> None:
    reason = unavailable_reason()
    if reason is None:
        pytest.skip("this machine has a usable GPU")
    assert "cuda" in reason.lower() or "device" in reason.lower()


def test_auto_without_a_gpu_counts_on_the_cpu_and_says_so_once(
        models: ModelTokenizers, encodings: dict[str, tiktoken.Encoding]) -> None:
    with capture_logs() as logs:
        service = build_token_service(settings(), models, encodings,
                                      probe=lambda device: "no CUDA driver: not found")
    service.close()
    assert (service.backend, service.device, service.gpu) == ("cpu", None, None)
    lines = [e for e in logs if e["event"] == "tokens_backend"]
    assert len(lines) == 1 and lines[0]["gpu_unavailable"] == "no CUDA driver: not found"


def test_gpu_without_a_gpu_refuses_to_start(models: ModelTokenizers,
                                             encodings: dict[str, tiktoken.Encoding]) -> None:
    with pytest.raises(GpuUnavailable, match=r'backend is "gpu".*no CUDA device 3'):
        build_token_service(settings(backend="gpu", gpu_device=3), models, encodings,
                            probe=lambda device: f"no CUDA device {device} (1 found)")

    def broken(e: dict[str, tiktoken.Encoding], d: int) -> Counter:
        raise GpuUnavailable("cannot compile the counting kernel: nvrtc error")

    with pytest.raises(GpuUnavailable, match="nvrtc error"):
        build_token_service(settings(backend="gpu"), models, encodings,
                            probe=lambda device: None, gpu_factory=broken)
    service = build_token_service(settings(), models, encodings, probe=lambda device: None,
                                  gpu_factory=broken)
    assert service.backend == "cpu"
    service.close()


def test_cpu_backend_never_looks_for_a_gpu(models: ModelTokenizers,
                                           encodings: dict[str, tiktoken.Encoding]) -> None:
    def probe(device: int) -> str | None:
        raise AssertionError("probed")

    service = build_token_service(settings(backend="cpu"), models, encodings, probe=probe)
    assert service.backend == "cpu"
    service.close()


async def test_large_batches_go_to_the_gpu_small_ones_stay(
        gpu_service: TokenService, encodings: dict[str, tiktoken.Encoding]) -> None:
    fake = gpu_service.gpu
    assert isinstance(fake, RecordingGpu)
    assert gpu_service.backend == "gpu" and gpu_service.device == fake.device_name
    enc = encodings["o200k_base"]
    big = ["The quick brown fox. " * 50] * 12  # 12,600 chars: over the 10,000 threshold
    assert await gpu_service.count(big, "o200k_base") == [len(enc.encode_ordinary(t))
                                                          for t in big]
    assert fake.batches == [12]
    assert await gpu_service.count(["tiny"], "o200k_base") == [1]  # inline
    mid = ["lorem ipsum " * 100]  # 1,200 chars: gathered, alone, then the CPU
    assert await gpu_service.count(mid, "o200k_base") == [len(enc.encode_ordinary(mid[0]))]
    assert fake.batches == [12]
    assert gpu_service.usage["gpu"].documents == 12
    assert gpu_service.usage["cpu"].documents == 2
    assert gpu_service.usage["gpu"].bytes == sum(len(t) for t in big)


async def test_concurrent_callers_are_gathered_into_one_gpu_batch(
        gpu_service: TokenService, encodings: dict[str, tiktoken.Encoding]) -> None:
    fake = gpu_service.gpu
    assert isinstance(fake, RecordingGpu)
    calls = [[f"caller {i}: " + "word " * 300, "second text " * 20] for i in range(8)]
    results = await asyncio.gather(*(gpu_service.count(c, "cl100k_base") for c in calls))
    enc = encodings["cl100k_base"]
    assert results == [[len(enc.encode_ordinary(t)) for t in c] for c in calls]
    # 8 callers of 1,750 chars: the sixth takes the batch past 10,000 and it goes at once;
    # the last two wait out the window and, together too small, are counted on the CPU
    assert fake.batches == [12]
    assert gpu_service.usage["cpu"].documents == 4


async def test_a_failed_gpu_batch_is_counted_on_the_cpu(
        models: ModelTokenizers, encodings: dict[str, tiktoken.Encoding]) -> None:
    fake = RecordingGpu(encodings, fail=True)
    service = build_token_service(settings(), models, encodings, probe=lambda device: None,
                                  gpu_factory=lambda e, d: fake)
    try:
        texts = FIXED * 10
        assert await service.count(texts, "o200k_base") == [
            len(encodings["o200k_base"].encode_ordinary(t)) for t in texts]
        assert service.usage["gpu"].errors == 1 and fake.batches
    finally:
        service.close()


async def test_chat_counting_is_unchanged_behind_the_gpu(gpu_service: TokenService) -> None:
    body = {"messages": [{"role": "user", "content": "Hello there! " * 1000}]}
    counted = await gpu_service.count_chat(body, "gpt-4o")
    assert counted.exact and counted.tokens == 3 + 3 + 1 + 3000 + 1


def test_without_a_driver_auto_does_not_even_import_the_cuda_bindings() -> None:
    """No libcuda here: the probe says so without importing `cuda.core` (about 22 MB)."""
    import ctypes
    import subprocess
    import sys

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        pass
    else:
        pytest.skip("this machine has a CUDA driver")
    code = ("import sys; from gateway.tokens.gpu import driver_reason; r = driver_reason(); "
            "print(r); print(any(m.startswith('cuda') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.splitlines()
    assert out[0].startswith("no CUDA driver: libcuda.so.1 cannot be loaded")
    assert out[1] == "False"
