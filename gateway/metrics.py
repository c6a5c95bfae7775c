"""Prometheus metrics: a small in-process registry and the gateway's own metrics.

The request path pays one `Metrics.observe(row)` per usage row: a few dict updates, no locks
(everything runs on one event loop). Gauges that describe state (the ledger's queue, the
circuit breakers, uptime) are read by callbacks when `/metrics` is scraped.

Label cardinality is bounded: a family keeps at most `max_label_sets` label sets; a new one
past that is folded into `model="other"` (or every label "other" in a family without a model
label). Project ids, keys, prompts and metadata never become labels.
"""

from __future__ import annotations

import math
import platform
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from gateway import __version__

if TYPE_CHECKING:
    from gateway.domain import UsageRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_LABEL_SETS = 2_000
OTHER = "other"
# Gateway overhead is sub-millisecond when healthy; upstream calls take seconds to minutes.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
# Requests the gateway refused itself, before any upstream attempt.
REJECTION_STATUSES = frozenset({402, 429})
REJECTION_CODES = frozenset({"ledger_backlog"})
BREAKER_STATES = ("closed", "open", "half_open")

LabelKey = tuple[str, ...]
Sample = tuple[LabelKey, float | int | Decimal]


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


def escape_label(value: str) -> str:
    """The exposition format escapes backslash, newline and quote; other control characters
    (NUL above all) and lone surrogates are replaced, so a scrape is always valid UTF-8 text."""
    value = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return _CONTROL.sub("\ufffd", value) if not value.isprintable() else value


def format_value(value: float | int | Decimal) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class Family:
    """One metric name: HELP, TYPE and its samples by label set."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...],
                 max_label_sets: int = MAX_LABEL_SETS) -> None:
        self.name = name
        self.help = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self.labels = labels
        self.max_label_sets = max_label_sets
        self._fold = labels.index("model") if "model" in labels else None
        self._rendered: dict[LabelKey, str] = {}  # label set -> '{a="x",b="y"}', built once

    def _admit(self, key: LabelKey) -> LabelKey:
        """A label set seen for the first time: itself, or its fold once the family is full."""
        if len(self._rendered) >= self.max_label_sets and key not in self._rendered:
            i = self._fold
            key = (OTHER,) * len(key) if i is None else (*key[:i], OTHER, *key[i + 1:])
        if key not in self._rendered:
            self._rendered[key] = self._labels_text(self.labels, key)
        return key

    @staticmethod
    def _labels_text(names: tuple[str, ...], key: LabelKey) -> str:
        if not names:
            return ""
        pairs = ",".join(f'{n}="{escape_label(v)}"' for n, v in zip(names, key, strict=True))
        return "{" + pairs + "}"

    def samples(self) -> Iterable[str]:
        return ()

    def render(self) -> str:
        head = f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(self.samples())


class Counter(Family):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...],
                 max_label_sets: int = MAX_LABEL_SETS) -> None:
        super().__init__(name, help_text, labels, max_label_sets)
        # Each value in a one-element list: a cell that `Metrics.observe` keeps and adds to.
        self.values: dict[LabelKey, list[int | Decimal]] = {}

    def inc(self, key: LabelKey, amount: int | Decimal = 1) -> None:
        try:
            self.values[key][0] += amount
        except KeyError:
            self.cell(key)[0] += amount

    def cell(self, key: LabelKey) -> list[int | Decimal]:
        """The cell of a label set (of its fold, once the family is full)."""
        key = self._admit(key)
        cell = self.values.get(key)
        if cell is None:
            cell = self.values[key] = [0]
        return cell

    def samples(self) -> Iterable[str]:
        for key, (value,) in self.values.items():
            yield f"{self.name}{self._rendered[key]} {format_value(value)}\n"


class Histogram(Family):
    """Fixed buckets; per label set: a count per bucket (+Inf last), then the sum."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...],
                 buckets: tuple[float, ...], max_label_sets: int = MAX_LABEL_SETS) -> None:
        super().__init__(name, help_text, labels, max_label_sets)
        if list(buckets) != sorted(set(buckets)):
            raise ValueError(f"{name}: buckets must increase strictly")
        self.bounds = buckets
        self.values: dict[LabelKey, list[float]] = {}
        self._les = [format_value(float(b)) for b in buckets] + ["+Inf"]

    def observe(self, key: LabelKey, value: float) -> None:
        try:
            cells = self.values[key]
        except KeyError:
            cells = self.cells(key)
        cells[bisect_left(self.bounds, value)] += 1  # the first bucket with value <= le
        cells[-1] += value

    def cells(self, key: LabelKey) -> list[float]:
        """The cells of a label set (of its fold, once the family is full): a count per
        bucket, then the sum."""
        key = self._admit(key)
        return self.values.setdefault(key, [0.0] * (len(self.bounds) + 2))

    def samples(self) -> Iterable[str]:
        for key, cells in self.values.items():
            labels = self._rendered[key]
            prefix = labels[:-1] + "," if labels else "{"
            total = 0
            for le, count in zip(self._les, cells, strict=False):
                total += int(count)
                yield f'{self.name}_bucket{prefix}le="{le}"}} {total}\n'
            yield f"{self.name}_sum{labels} {format_value(cells[-1])}\n"
            yield f"{self.name}_count{labels} {total}\n"


class Collected(Family):
    """A gauge or counter read from a callback at scrape time."""

    def __init__(self, name: str, help_text: str, kind: str, labels: tuple[str, ...],
                 collect: Callable[[], Iterable[Sample]]) -> None:
        super().__init__(name, help_text, labels)
        self.kind = kind
        self._collect = collect

    def samples(self) -> Iterable[str]:
        for key, value in self._collect():
            yield f"{self.name}{self._labels_text(self.labels, key)} {format_value(value)}\n"


class HasState(Protocol):
    @property
    def state(self) -> str: ...


class _Series:
    """The cells a usage row of one (provider, model, status) adds to. Those of the upstream
    time, the token kinds and the cost are taken when first needed: a label set shows once
    it has counted something."""

    __slots__ = ("cache_write", "cached_input", "cost", "input", "metrics", "model", "output",
                 "overhead", "provider", "requests", "upstream")

    def __init__(self, metrics: Metrics, provider: str, model: str, status: int) -> None:
        self.metrics, self.provider, self.model = metrics, provider, model
        self.requests = metrics.requests.cell((provider, model, str(status)))
        self.overhead = metrics.overhead.cells((provider,))
        self.upstream: list[float] | None = None
        self.input: list[int | Decimal] | None = None
        self.cached_input: list[int | Decimal] | None = None
        self.cache_write: list[int | Decimal] | None = None
        self.output: list[int | Decimal] | None = None
        self.cost: list[int | Decimal] | None = None

    def tokens(self, kind: str) -> list[int | Decimal]:
        cell = self.metrics.tokens.cell((self.provider, self.model, kind))
        setattr(self, kind, cell)
        return cell

    def add_upstream(self) -> list[float]:
        self.upstream = self.metrics.upstream.cells((self.provider, self.model))
        return self.upstream

    def add_cost(self) -> list[int | Decimal]:
        self.cost = self.metrics.cost.cell((self.provider, self.model))
        return self.cost


class Metrics:
    """The gateway's metrics; `observe` per usage row, `render` per scrape."""

    def __init__(self, *, version: str = __version__, max_label_sets: int = MAX_LABEL_SETS,
                 clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.started = clock()
        self._ledger: object | None = None
        self._breakers: Mapping[str, HasState] = {}
        self._token_usage: Mapping[str, object] = {}
        # What a row of a (provider, model, status) adds to, and an attempt's counter by
        # (provider, status, error code): found once (at most `max_label_sets` of each kept).
        self._series: dict[tuple[str, str, int], _Series] = {}
        self._attempt_cells: dict[tuple[object, object, object], list[int | Decimal]] = {}
        cap = max_label_sets
        by_model = ("provider", "model")
        self.requests = Counter("gateway_requests_total", "Proxied requests of known projects, "
                                "by provider, model and HTTP status.", (*by_model, "status"), cap)
        self.overhead = Histogram("gateway_overhead_seconds", "Time the gateway itself added "
                                  "to a request (total minus upstream time).", ("provider",),
                                  OVERHEAD_BUCKETS, cap)
        self.upstream = Histogram("gateway_upstream_seconds", "Time spent waiting on the "
                                  "upstream per request, all attempts, whole stream included.",
                                  by_model, UPSTREAM_BUCKETS, cap)
        self.tokens = Counter("gateway_tokens_total", "Tokens by kind: input (which includes "
                              "cached_input and cache_write), cached_input, cache_write, output.",
                              (*by_model, "kind"), cap)
        self.cost = Counter("gateway_cost_usd_total", "Cost in US dollars (summed exactly; "
                            "the ledger is the source of truth for billing).", by_model, cap)
        self.rejections = Counter("gateway_rejections_total", "Requests the gateway refused "
                                  "before any upstream attempt: 429 rate limit, 402 budget, "
                                  "503 ledger back-pressure.", ("status", "code"), cap)
        self.attempts = Counter("gateway_upstream_attempts_total", "Upstream attempts by "
                                "provider, status and error code (empty on success).",
                                ("provider", "status", "code"), cap)
        self.retries = Counter("gateway_upstream_retries_total", "Attempts that repeated the "
                               "previous attempt's provider and model.", ("provider",), cap)
        self.fallbacks = Counter("gateway_upstream_fallbacks_total", "Moves to the next route "
                                 "of a fallback chain.", ("from_provider", "to_provider"), cap)
        self.http = Counter("gateway_http_responses_total", "HTTP responses by method, route "
                            "template and status (every route, unauthenticated calls included).",
                            ("method", "route", "status"), cap)
        self.families: list[Family] = [
            self.requests, self.overhead, self.upstream, self.tokens, self.cost,
            self.rejections, self.attempts, self.retries, self.fallbacks, self.http,
            Collected("gateway_circuit_breaker_state", "1 for each provider's current circuit "
                      "breaker state, 0 for the others.", "gauge", ("provider", "state"),
                      self._breaker_samples),
            *self._ledger_families(),
            *self._tokenizer_families(),
            Collected("gateway_build_info", "Build version, value 1.", "gauge",
                      ("version", "python"),
                      lambda: [((version, platform.python_version()), 1)]),
            Collected("gateway_process_start_time_seconds", "When this gateway's metrics "
                      "were created (at start-up), Unix seconds.", "gauge", (),
                      lambda: [((), self.started)]),
            Collected("gateway_uptime_seconds", "Seconds since the process started.", "gauge",
                      (), lambda: [((), max(self._clock() - self.started, 0.0))]),
        ]

    def watch_ledger(self, ledger: object) -> None:
        """Read the ledger's queue at scrape time (`pending`, `written`, `failures`,
        `last_flush`, and `spill_bytes` where the ledger has it)."""
        self._ledger = ledger

    def watch_breakers(self, breakers: Mapping[str, HasState]) -> None:
        self._breakers = breakers

    def watch_tokens(self, usage: Mapping[str, object]) -> None:
        """Read the token service's per-backend counts at scrape time (`TokenService.usage`:
        backend -> documents, bytes, long_pieces, fallback_docs, errors)."""
        self._token_usage = usage

    def observe(self, row: UsageRecord) -> None:
        """Count one usage row (called once per row, after it is queued to the ledger)."""
        series = self._series.get((row.provider, row.model, row.status))
        if series is None:
            series = self._series_of(row.provider, row.model, row.status)
        series.requests[0] += 1
        cells, value = series.overhead, row.overhead_ms / 1000
        cells[bisect_left(self.overhead.bounds, value)] += 1  # as `Histogram.observe`
        cells[-1] += value
        if row.upstream_ms is not None:
            cells, value = series.upstream or series.add_upstream(), row.upstream_ms / 1000
            cells[bisect_left(self.upstream.bounds, value)] += 1
            cells[-1] += value
        usage = row.usage
        if usage.input_tokens:
            (series.input or series.tokens("input"))[0] += usage.input_tokens
        if usage.cached_input_tokens:
            (series.cached_input or series.tokens("cached_input"))[0] += (
                usage.cached_input_tokens)
        if usage.cache_write_tokens:
            (series.cache_write or series.tokens("cache_write"))[0] += usage.cache_write_tokens
        if usage.output_tokens:
            (series.output or series.tokens("output"))[0] += usage.output_tokens
        if row.cost_usd:
            (series.cost or series.add_cost())[0] += row.cost_usd
        if row.attempts:
            self._observe_attempts(row.attempts)
        elif row.status in REJECTION_STATUSES or row.error_code in REJECTION_CODES:
            self.rejections.inc((str(row.status), row.error_code or ""))

    def _series_of(self, provider: str, model: str, status: int) -> _Series:
        series = _Series(self, provider or "none", model or "none", status)
        if len(self._series) < self.requests.max_label_sets:  # model names come from clients
            self._series[(provider, model, status)] = series
        return series

    def _observe_attempts(self, attempts: list[dict[str, object]]) -> None:
        previous: tuple[object, object] | None = None
        for attempt in attempts:
            provider = attempt.get("provider") or "none"
            key = (provider, attempt.get("status"), attempt.get("error_code"))
            cell = self._attempt_cells.get(key)
            if cell is None:
                cell = self.attempts.cell((str(provider), str(key[1]), str(key[2] or "")))
                if len(self._attempt_cells) < self.attempts.max_label_sets:
                    self._attempt_cells[key] = cell
            cell[0] += 1
            route = (provider, attempt.get("model"))
            if previous is not None:
                if route == previous:
                    self.retries.inc((str(provider),))
                else:
                    self.fallbacks.inc((str(previous[0]), str(provider)))
            previous = route

    def render(self) -> bytes:
        """The text exposition format 0.0.4."""
        return "".join(family.render() for family in self.families).encode()

    def _breaker_samples(self) -> Iterable[Sample]:
        for provider, breaker in sorted(self._breakers.items()):
            current = breaker.state
            for state in BREAKER_STATES:
                yield (provider, state), int(current == state)

    def _tokenizer_families(self) -> list[Family]:
        def read(*attrs: str) -> Callable[[], Iterable[Sample]]:
            def collect() -> Iterable[Sample]:
                samples: list[Sample] = []
                for backend, usage in sorted(self._token_usage.items()):
                    for attr in attrs:
                        value = getattr(usage, attr, None)
                        if isinstance(value, int):
                            reason = {"long_pieces": ("long_piece",),
                                      "fallback_docs": ("document",),
                                      "errors": ("batch_error",)}.get(attr, ())
                            samples.append(((backend, *reason), value))
                return samples
            return collect

        return [
            Collected("gateway_tokenizer_documents_total", "Texts counted, by backend.",
                      "counter", ("backend",), read("documents")),
            Collected("gateway_tokenizer_bytes_total", "UTF-8 bytes counted, by backend.",
                      "counter", ("backend",), read("bytes")),
            Collected("gateway_tokenizer_fallbacks_total", "Work the GPU handed back to the "
                      "CPU: pieces too long for the kernel, documents whose long-piece list "
                      "overflowed, failed batches.", "counter", ("backend", "reason"),
                      read("long_pieces", "fallback_docs", "errors")),
        ]

    def _ledger_families(self) -> list[Family]:
        def read(attr: str) -> Callable[[], Iterable[Sample]]:
            def collect() -> Iterable[Sample]:
                value = getattr(self._ledger, attr, None) if self._ledger is not None else None
                return [((), value)] if isinstance(value, int | float) else []
            return collect

        def lag() -> Iterable[Sample]:
            last = getattr(self._ledger, "last_flush", None)
            if not isinstance(last, int | float):
                return []
            return [((), max(self._clock() - last, 0.0))]

        def spill() -> Iterable[Sample]:
            if self._ledger is None:
                return []
            return [((), getattr(self._ledger, "spill_bytes", 0))]

        return [
            Collected("gateway_ledger_pending_rows", "Usage rows queued in memory, not yet "
                      "written to PostgreSQL.", "gauge", (), read("pending")),
            Collected("gateway_ledger_written_rows_total", "Usage rows written to PostgreSQL.",
                      "counter", (), read("written")),
            Collected("gateway_ledger_flush_failures_total", "Ledger flushes that failed and "
                      "were retried.", "counter", (), read("failures")),
            Collected("gateway_ledger_last_flush_timestamp_seconds", "When the ledger last "
                      "flushed successfully, Unix seconds.", "gauge", (), read("last_flush")),
            Collected("gateway_ledger_flush_lag_seconds", "Seconds since the ledger last "
                      "flushed successfully (grows while PostgreSQL is unreachable).", "gauge",
                      (), lag),
            Collected("gateway_ledger_dead_letters", "Usage rows PostgreSQL refused, kept in "
                      "ledger_dead_letters and not replayed yet (as last counted).", "gauge", (),
                      read("dead_letters_waiting")),
            Collected("gateway_ledger_dead_lettered_rows_total", "Usage rows this process "
                      "could not write and moved to ledger_dead_letters.", "counter", (),
                      read("rejected")),
            Collected("gateway_ledger_spill_bytes", "Size of the local spill file of rows "
                      "waiting for PostgreSQL (0 without one).", "gauge", (), spill),
        ]
