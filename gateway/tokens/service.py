"""`TokenService`: the one counting interface of the pipeline, the ledger and the endpoint.

`count(texts, encoding)` and `count_chat(request, model)` are all callers use, so another
counter (the GPU one) can stand behind them without touching callers. Small inputs are
counted inline; large ones go to a thread pool so no request stalls the event loop.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from gateway.tokens.chat import chat_pieces
from gateway.tokens.models import ModelTokenizers, Tokenizer


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
    return sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)


def scale(tokens: int, factor: Decimal | None) -> int:
    return tokens if factor is None else math.ceil(tokens * factor)


class TokenService:
    def __init__(self, counter: Counter, models: ModelTokenizers, *,
                 inline_max_chars: int = 8192, threads: int = 4) -> None:
        self.counter = counter
        self.models = models
        self.inline_max_chars = inline_max_chars
        self.threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tokens")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def tokenizer(self, model: str) -> Tokenizer:
        return self.models.resolve(model)

    async def count(self, texts: Sequence[str], encoding: str) -> list[int]:
        """Exact counts of each text in `encoding`, in order."""
        if encoding not in self.counter.encodings:
            raise KeyError(encoding)
        if sum(len(t) for t in texts) <= self.inline_max_chars:
            return self.counter.count(texts, encoding)
        loop = asyncio.get_running_loop()
        groups = _balanced_groups(texts, self.threads)
        results = await asyncio.gather(*(
            loop.run_in_executor(self._pool, self.counter.count, [texts[i] for i in group],
                                 encoding) for group in groups))
        counts = [0] * len(texts)
        for group, result in zip(groups, results, strict=True):
            for i, n in zip(group, result, strict=True):
                counts[i] = n
        return counts

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
