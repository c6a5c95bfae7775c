"""`TokenService`: the one counting interface of the pipeline, the ledger and the endpoint.

`count(texts, encoding)` and `count_chat(request, model)` are all callers use, so the GPU
counter stands behind them without touching callers. Small inputs are counted inline; large
ones go to a thread pool so no request stalls the event loop. With a GPU counter, a batch of
at least `gpu_min_batch_bytes` goes to the GPU; smaller ones that arrive together within
`gpu_batch_window_ms` are gathered and go to the GPU if together they are large enough.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import structlog
import tiktoken

from gateway.settings import TokensSettings
from gateway.tokens.chat import chat_pieces
from gateway.tokens.cpu import CpuCounter
from gateway.tokens.models import ModelTokenizers, Tokenizer
from gateway.tokens.probe import GpuUnavailable, driver_reason

log = structlog.get_logger(__name__)


class Counter(Protocol):
    name: str

    @property
    def encodings(self) -> tuple[str, ...]: ...

    def count(self, texts: Sequence[str], encoding: str) -> list[int]:
        """Exact token counts; blocking, thread-safe."""
        ...


@dataclass(frozen=True, slots=True)
class Count:
    tokens: int
    encoding: str
    exact: bool
    factor: Decimal | None = None


def upper_bound(texts: Sequence[str]) -> int:
    """A safe ceiling without tokenizing: a BPE token is never shorter than one byte."""
    return utf8_size(texts)


def scale(tokens: int, factor: Decimal | None) -> int:
    return tokens if factor is None else math.ceil(tokens * factor)


@dataclass
class BackendUsage:
    """What one backend counted; `long_pieces` and `fallback_docs` are the GPU's hand-backs
    to the CPU (pieces too long for the kernel, documents whose long-piece list overflowed),
    `errors` the GPU batches that failed and were counted on the CPU instead."""

    documents: int = 0
    bytes: int = 0
    long_pieces: int = 0
    fallback_docs: int = 0
    errors: int = 0


@dataclass
class _Gathered:
    texts: list[str] = field(default_factory=list)
    waiters: list[tuple[int, int, asyncio.Future[list[int]]]] = field(default_factory=list)
    chars: int = 0
    timer: asyncio.TimerHandle | None = None


def utf8_size(texts: Sequence[str]) -> int:
    if all(map(str.isascii, texts)):  # the usual case, with no Python frame per text
        return sum(map(len, texts))
    return sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)


class TokenService:
    def __init__(self, counter: Counter, models: ModelTokenizers, *,
                 inline_max_chars: int = 8192, threads: int = 4, gpu: Counter | None = None,
                 gpu_min_batch_bytes: int = 1 << 20, gpu_batch_window_ms: float = 2.0,
                 device: str | None = None) -> None:
        self.counter = counter
        self.models = models
        self.inline_max_chars = inline_max_chars
        self.threads = max(1, threads)
        self.gpu = gpu
        self.gpu_min_batch_bytes = gpu_min_batch_bytes
        self.gpu_batch_window_s = gpu_batch_window_ms / 1000
        self.device = device
        self.usage: dict[str, BackendUsage] = {"cpu": BackendUsage()}
        if gpu is not None:
            self.usage["gpu"] = BackendUsage()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tokens")
        self._gpu_pool = ThreadPoolExecutor(1, thread_name_prefix="tokens-gpu")
        self._gathered: dict[str, _Gathered] = {}
        self._settling: set[asyncio.Task[None]] = set()
        self._loading: dict[str, asyncio.Future[None]] = {}

    @property
    def backend(self) -> str:
        """"gpu" when large batches go to a GPU, else the CPU counter's name."""
        return "gpu" if self.gpu is not None else self.counter.name

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._gpu_pool.shutdown(wait=True, cancel_futures=True)
        closer = getattr(self.gpu, "close", None)
        if closer is not None:
            closer()

    def tokenizer(self, model: str) -> Tokenizer:
        return self.models.resolve(model)

    async def count(self, texts: Sequence[str], encoding: str) -> list[int]:
        """Exact counts of each text in `encoding`, in order."""
        if encoding not in self.counter.encodings:
            raise KeyError(encoding)
        ready = getattr(self.counter, "ready", None)  # a counter that loads on first use
        if ready is not None and not ready(encoding):
            await self._load(encoding)
        chars = sum(map(len, texts))
        if chars <= self.inline_max_chars:
            return self._count_cpu(texts, encoding)
        if self.gpu is not None:
            if self._gpu_sized(texts, chars):
                return await self._run_gpu(texts, encoding)
            if self.gpu_batch_window_s > 0:
                return await self._gather(texts, chars, encoding)
        return await self._run_cpu(texts, encoding)

    async def _load(self, encoding: str) -> None:
        """Load an encoding in a worker thread, once however many callers wait for it; a
        failed load is tried again by the next caller."""
        future = self._loading.get(encoding)
        if future is None:
            loop = asyncio.get_running_loop()
            load = self.counter.load  # type: ignore[attr-defined]
            future = loop.run_in_executor(self._pool, load, encoding)
            self._loading[encoding] = future
            future.add_done_callback(lambda f: self._loading.pop(encoding, None))
            log.info("tokens_encoding_loading", encoding=encoding)
        await asyncio.shield(future)  # one caller cut short does not cancel the others' load

    def _gpu_sized(self, texts: Sequence[str], chars: int) -> bool:
        limit = self.gpu_min_batch_bytes
        return chars >= limit or (4 * chars >= limit and utf8_size(texts) >= limit)

    def _count_cpu(self, texts: Sequence[str], encoding: str) -> list[int]:
        counts = self.counter.count(texts, encoding)
        usage = self.usage["cpu"]
        usage.documents += len(texts)
        usage.bytes += utf8_size(texts)
        return counts

    async def _run_cpu(self, texts: Sequence[str], encoding: str) -> list[int]:
        loop = asyncio.get_running_loop()
        groups = _balanced_groups(texts, self.threads)
        results = await asyncio.gather(*(
            loop.run_in_executor(self._pool, self.counter.count, [texts[i] for i in group],
                                 encoding) for group in groups))
        counts = [0] * len(texts)
        for group, result in zip(groups, results, strict=True):
            for i, n in zip(group, result, strict=True):
                counts[i] = n
        usage = self.usage["cpu"]
        usage.documents += len(texts)
        usage.bytes += utf8_size(texts)
        return counts

    async def _run_gpu(self, texts: Sequence[str], encoding: str) -> list[int]:
        assert self.gpu is not None
        loop = asyncio.get_running_loop()
        usage = self.usage["gpu"]
        try:
            counts = await loop.run_in_executor(self._gpu_pool, self.gpu.count, texts, encoding)
        except Exception as exc:  # exact counts either way: the CPU recounts the batch
            usage.errors += 1
            log.error("tokens_gpu_batch_failed", error=f"{type(exc).__name__}: {exc}",
                      documents=len(texts))
            return await self._run_cpu(texts, encoding)
        usage.documents += len(texts)
        usage.bytes += utf8_size(texts)
        stats = getattr(self.gpu, "stats", None)
        if stats is not None:
            usage.long_pieces = stats.long_pieces
            usage.fallback_docs = stats.fallback_docs
        return counts

    async def _gather(self, texts: Sequence[str], chars: int, encoding: str) -> list[int]:
        """Wait up to the window for other callers; the batch then goes where it fits."""
        loop = asyncio.get_running_loop()
        batch = self._gathered.get(encoding)
        if batch is None:
            batch = self._gathered[encoding] = _Gathered()
            batch.timer = loop.call_later(self.gpu_batch_window_s, self._flush, encoding)
        future: asyncio.Future[list[int]] = loop.create_future()
        batch.waiters.append((len(batch.texts), len(texts), future))
        batch.texts.extend(texts)
        batch.chars += chars
        if batch.chars >= self.gpu_min_batch_bytes:
            self._flush(encoding)  # large enough already: no point in waiting
        return await future

    def _flush(self, encoding: str) -> None:
        batch = self._gathered.pop(encoding, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._settle(batch, encoding))
        self._settling.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._settling.discard)

    async def _settle(self, batch: _Gathered, encoding: str) -> None:
        try:
            if self._gpu_sized(batch.texts, batch.chars):
                counts = await self._run_gpu(batch.texts, encoding)
            else:
                counts = await self._run_cpu(batch.texts, encoding)
        except BaseException as exc:
            for _, _, future in batch.waiters:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for begin, size, future in batch.waiters:
            if not future.done():
                future.set_result(counts[begin:begin + size])

    async def count_for_model(self, texts: Sequence[str],
                              model: str) -> tuple[list[int], Tokenizer]:
        """Counts for a model: exact for OpenAI encodings, else an estimate (rounded up)."""
        tokenizer = self.tokenizer(model)
        counts = await self.count(texts, tokenizer.encoding)
        return [scale(n, tokenizer.factor) for n in counts], tokenizer

    async def count_chat(self, request: dict[str, Any], model: str, *,
                         tokenizer: Tokenizer | None = None) -> Count:
        """The input tokens of a whole chat request, as the provider bills them."""
        tokenizer = tokenizer or self.tokenizer(model)
        pieces = chat_pieces(request, tokenizer.encoding)
        counted = sum(await self.count(pieces.texts, tokenizer.encoding)) + pieces.constant
        return Count(scale(counted, tokenizer.factor), tokenizer.encoding,
                     tokenizer.exact and pieces.exact, tokenizer.factor)

    def chat_upper_bound(self, request: dict[str, Any], model: str) -> int:
        """A ceiling on `count_chat` that needs no tokenizing (for far-from-limit budgets)."""
        tokenizer = self.tokenizer(model)
        pieces = chat_pieces(request, tokenizer.encoding)
        return scale(upper_bound(pieces.texts) + max(pieces.constant, 0), tokenizer.factor)


def build_token_service(
        settings: TokensSettings, models: ModelTokenizers,
        encodings: dict[str, tiktoken.Encoding], *,
        probe: Callable[[int], str | None] = driver_reason,
        gpu_factory: Callable[[dict[str, tiktoken.Encoding], int], Counter] | None = None,
        cache_dir: Path | None = None,
        load: Callable[[str], tiktoken.Encoding] | None = None,
        lazy: Sequence[str] = (),
) -> TokenService:
    """The service for `tokens.backend`: blocking (compiles the GPU kernel), call it off the
    event loop. "gpu" raises `GpuUnavailable` when no GPU counter can start; "auto" then
    logs one line saying why and counts on the CPU. With `load`, the encodings in `lazy`
    are loaded when first counted in (the GPU counter, which needs every table, loads them
    all at once)."""
    threads = settings.threads or min(os.cpu_count() or 1, 8)
    if gpu_factory is None:
        def gpu_factory(encodings: dict[str, tiktoken.Encoding], device: int) -> Counter:
            from gateway.tokens.gpu import GpuCounter  # numpy and the CUDA code: only here

            return GpuCounter(encodings, device_id=device, cache_dir=cache_dir)
    gpu: Counter | None = None
    device: str | None = None
    if settings.backend != "cpu":
        reason = probe(settings.gpu_device)
        if reason is None:
            if load is not None:
                encodings = {**encodings, **{n: load(n) for n in lazy if n not in encodings}}
            try:
                gpu = gpu_factory(encodings, settings.gpu_device)
            except GpuUnavailable as exc:
                reason = str(exc)
        if reason is not None:
            if settings.backend == "gpu":
                raise GpuUnavailable(f'tokens.backend is "gpu" but the GPU counter cannot '
                                     f"start: {reason}")
            log.info("tokens_backend", backend="cpu", gpu_unavailable=reason)
        else:
            device = getattr(gpu, "device_name", f"device {settings.gpu_device}")
            log.info("tokens_backend", backend="gpu", device=device,
                     min_batch_bytes=settings.gpu_min_batch_bytes,
                     batch_window_ms=settings.gpu_batch_window_ms)
    else:
        log.info("tokens_backend", backend="cpu", reason="tokens.backend is \"cpu\"")
    return TokenService(CpuCounter(encodings, load=load, lazy=lazy), models,
                        inline_max_chars=settings.inline_max_chars, threads=threads, gpu=gpu,
                        gpu_min_batch_bytes=settings.gpu_min_batch_bytes,
                        gpu_batch_window_ms=settings.gpu_batch_window_ms, device=device)


def _balanced_groups(texts: Sequence[str], n: int) -> list[list[int]]:
    """Indices split into at most n groups of similar total length (largest first)."""
    n = min(n, len(texts))
    groups: list[list[int]] = [[] for _ in range(n)]
    sizes = [0] * n
    for i in sorted(range(len(texts)), key=lambda i: -len(texts[i])):
        j = sizes.index(min(sizes))
        groups[j].append(i)
        sizes[j] += len(texts[i])
    return [g for g in groups if g]
