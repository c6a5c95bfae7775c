"""Observed behaviour of each (provider, model): latency and error rate over a sliding window.

Fed by this replica's own traffic (every upstream attempt of every proxied request, in
`ProxyPipeline.finish`) and seeded at start from the ledger's recent rows (one query). A
sample is O(1) to add; expired samples leave from the front as new ones come in, and the
percentiles are computed only when the smart router asks, and cached until the next sample.

An attempt's `ms` in the usage row is the time until the upstream's response headers: for a
streamed call that is the time to the first token; for a plain one, the whole answer.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg
import orjson

_SEED = """SELECT attempts, upstream_ms, started_at FROM usage_records
           WHERE started_at >= now() - make_interval(secs => $1) AND origin = 'proxy'
             AND attempts <> '[]'::jsonb
           ORDER BY started_at DESC LIMIT $2"""


_new_tuple = tuple.__new__


class Sample(NamedTuple):
    at: float  # monotonic seconds
    first_ms: float
    total_ms: float
    ok: bool


@dataclass(frozen=True, slots=True)
class Stats:
    samples: int
    errors: int
    first_p50_ms: float | None  # None: no successful call in the window
    first_p95_ms: float | None
    total_p50_ms: float | None
    total_p95_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.samples if self.samples else 0.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..1)."""
    rank = max(math.ceil(q * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def provider_failure(status: int) -> bool:
    """A status that counts against the provider: 429, 5xx and the gateway's own 502/504
    for connect errors and timeouts. Other 4xx are the request's fault: not counted."""
    return status == 429 or status >= 500


class _Window:
    __slots__ = ("cached", "cached_version", "samples", "version")

    def __init__(self, max_samples: int) -> None:
        self.samples: deque[Sample] = deque(maxlen=max_samples)
        self.version = 0
        self.cached: Stats | None = None
        self.cached_version = -1


class Observations:
    def __init__(self, window_s: float, *, max_samples: int = 2048, max_keys: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._max = max_samples
        self._max_keys = max_keys  # model names come from clients: memory stays bounded
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._next_purge = 0.0

    def record(self, provider: str, model: str, first_ms: float, total_ms: float, ok: bool,
               at: float | None = None) -> None:
        window = self._windows.get((provider, model))
        if window is None:
            if len(self._windows) >= self._max_keys and not self._make_room():
                return  # every window is live: a new name waits until one empties
            window = self._windows[(provider, model)] = _Window(self._max)
        now = self._clock()
        samples = window.samples
        # A sample per upstream call: made as a plain tuple is (the class call costs twice
        # that), and the front expired inline, with one clock read.
        samples.append(_new_tuple(Sample, (now if at is None else at, first_ms, total_ms, ok)))
        window.version += 1
        cutoff = now - self.window_s
        while samples and samples[0].at < cutoff:
            samples.popleft()
            window.version += 1

    def record_attempts(self, attempts: Iterable[Mapping[str, Any]],
                        upstream_ms: float | None, at: float | None = None) -> None:
        """One request's attempts, as its usage row keeps them: each failed one an error,
        the one that answered a latency sample (its total: the upstream time less the
        failed attempts' time). Refusals of the request itself are not counted."""
        spent = 0.0
        for attempt in attempts:
            status, ms = attempt.get("status"), attempt.get("ms")
            if not isinstance(status, int) or not isinstance(ms, int | float):
                continue
            provider, model = str(attempt.get("provider")), str(attempt.get("model"))
            if status < 400:
                total = max((upstream_ms or ms) - spent, ms)
                self.record(provider, model, ms, total, True, at)
            elif provider_failure(status):
                self.record(provider, model, ms, ms, False, at)
            spent += ms

    def stats(self, provider: str, model: str) -> Stats | None:
        window = self._windows.get((provider, model))
        if window is None:
            return None
        self._expire(window)
        if not window.samples:
            return None
        if window.cached is None or window.cached_version != window.version:
            window.cached, window.cached_version = _stats(window.samples), window.version
        return window.cached

    def _make_room(self) -> bool:
        """Drop the windows whose samples have all expired (a scan at most once a second);
        whether any was dropped."""
        now = self._clock()
        if now < self._next_purge:
            return False
        self._next_purge = now + 1.0
        before = len(self._windows)
        for key, window in list(self._windows.items()):
            self._expire(window)
            if not window.samples:
                del self._windows[key]
        return len(self._windows) < before

    def _expire(self, window: _Window) -> None:
        cutoff = self._clock() - self.window_s
        samples = window.samples
        while samples and samples[0].at < cutoff:
            samples.popleft()
            window.version += 1

    async def seed(self, pool: asyncpg.Pool, *, limit: int = 20_000,
                   timeout_s: float = 5.0) -> int:
        """Fill the windows from the ledger's rows of the last `window_s` seconds; answers
        how many rows were read."""
        rows = await pool.fetch(_SEED, self.window_s, limit, timeout=timeout_s)
        now_wall, now = datetime.now(UTC), self._clock()
        for row in reversed(rows):  # oldest first, as live samples come
            attempts = row["attempts"]
            if isinstance(attempts, str | bytes):
                attempts = orjson.loads(attempts)
            age = (now_wall - row["started_at"]).total_seconds()
            self.record_attempts(attempts, row["upstream_ms"], at=now - max(age, 0.0))
        return len(rows)


def _stats(samples: Iterable[Sample]) -> Stats:
    count = errors = 0
    first: list[float] = []
    total: list[float] = []
    for sample in samples:
        count += 1
        if sample.ok:
            first.append(sample.first_ms)
            total.append(sample.total_ms)
        else:
            errors += 1
    first.sort()
    total.sort()
    return Stats(count, errors,
                 percentile(first, 0.5) if first else None,
                 percentile(first, 0.95) if first else None,
                 percentile(total, 0.5) if total else None,
                 percentile(total, 0.95) if total else None)
