"""The usage ledger writer: rows are queued in memory and written to PostgreSQL in batches.

`record()` never waits and never drops a row: the request path appends and moves on. A
background task writes a batch when it is full or when the flush interval passes: `COPY`
straight into usage_records, or, for a batch holding rows already stored (a replay), one
`INSERT ... SELECT ... ON CONFLICT (request_id) DO NOTHING`, so a replayed row never counts
twice. The batch hooks run in that same transaction with the rows really inserted.

Text a client supplied is made storable first (`gateway.storable`: NUL and lone surrogates
replaced). A row PostgreSQL still refuses is not dropped: it goes to `ledger_dead_letters` in
the same transaction as the rest of its batch, is counted in /metrics and readiness, and is
replayed on demand (`replay_dead_letters`).

Each queued row is also written at once to a local journal segment (no fsync: the page cache
outlives a killed process); a segment goes once its rows are committed or spilled, and the
segments of a process that died are replayed by the next one, like its spill files.

When PostgreSQL cannot take a batch, the queued rows go to a spill file (one JSON line per
row, fsync'd per batch) and are replayed once it answers again; the file is emptied only after
the replay commits. Files left by a process that died are replayed by the next ledger to start
on the same directory. Past `spill_max_bytes` rows wait in memory, and past `max_pending`
`check_capacity()` turns requests away with 503 rather than grow without limit. `close()`
writes what is left, or spills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import mmap
import operator
import os
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, NamedTuple, overload

import asyncpg
import orjson
import structlog

from gateway.db import bounded_connection
from gateway.domain import UsageRecord
from gateway.errors import BadRequest, ServiceUnavailable
from gateway.settings import LedgerSettings
from gateway.storable import storable_json, storable_text

log = structlog.get_logger(__name__)

# New columns go at the end: a journal line (`journal_line`) holds its values by position.
COLUMNS = (
    "request_id", "project_id", "api_key_id", "provider", "model", "endpoint", "status",
    "streamed", "input_tokens", "cached_input_tokens", "output_tokens", "usage_source",
    "input_source", "output_source",
    "cost_usd", "priced_by_fallback", "price_model", "overhead_ms", "upstream_ms",
    "error_code", "metadata", "started_at", "finished_at",
    "cache_write_tokens", "requested_model", "credential", "attempts", "origin",
    "route_reason",
)
_COST = COLUMNS.index("cost_usd")


class InsertedRow(NamedTuple):
    """A usage row as the batch hooks see it: one that this transaction really inserted."""

    request_id: uuid.UUID
    project_id: int
    provider: str
    model: str
    endpoint: str
    status: int
    error_code: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    started_at: datetime
    metadata: dict[str, Any]
    origin: str  # "proxy", or "track" (POST /api/track)


# Called with each batch's inserted rows, in the batch's transaction, each in a savepoint of
# its own. A hook may also have `wants(rows) -> bool`: False skips it for that batch (and its
# savepoint, two round trips); and `committed()`, called once the transaction is in.
BatchHook = Callable[[asyncpg.Connection, Sequence[InsertedRow]], Awaitable[None]]

_COLS = ", ".join(COLUMNS)
_RETURNING = ", ".join(InsertedRow._fields)
# Each column's PostgreSQL type: a batch goes in as one array per column, unnested.
_TYPES = {
    "request_id": "uuid", "project_id": "bigint", "api_key_id": "bigint", "provider": "text",
    "model": "text", "endpoint": "text", "status": "smallint", "streamed": "boolean",
    "input_tokens": "integer", "cached_input_tokens": "integer", "output_tokens": "integer",
    "usage_source": "text", "input_source": "text", "output_source": "text",
    "cost_usd": "numeric", "priced_by_fallback": "boolean", "price_model": "text",
    "overhead_ms": "real", "upstream_ms": "real", "error_code": "text", "metadata": "jsonb",
    "started_at": "timestamptz", "finished_at": "timestamptz", "cache_write_tokens": "bigint",
    "requested_model": "text", "credential": "text", "attempts": "jsonb", "origin": "text",
    "route_reason": "text",
}
# jsonb goes as text (a JSON list would read as one more array dimension), cast back here.
_JSON = frozenset(c for c in COLUMNS if _TYPES[c] == "jsonb")
_UNNEST = ", ".join(f"${i + 1}::{'text' if c in _JSON else _TYPES[c]}[]"
                    for i, c in enumerate(COLUMNS))
_SELECT = ", ".join(f"{c}::jsonb" if c in _JSON else c for c in COLUMNS)
_JSON_AT = tuple(i for i, c in enumerate(COLUMNS) if c in _JSON)
# One prepared statement, no DDL: the batch's columns unnested, sorted so that two writers
# holding the same replayed ids lock them in the same order, duplicates skipped.
_MOVE = (f"INSERT INTO usage_records ({_COLS}) SELECT {_SELECT} FROM unnest({_UNNEST}) "
         f"AS batch ({_COLS}) ORDER BY request_id ON CONFLICT (request_id) DO NOTHING "
         f"RETURNING {_RETURNING}")

_INSERTED_FIELDS = operator.itemgetter(*(COLUMNS.index(name) for name in InsertedRow._fields))


def _inserted(row: tuple[Any, ...]) -> InsertedRow:
    return tuple.__new__(InsertedRow, _INSERTED_FIELDS(row))  # `_make` is a classmethod call more


# Rows COPY encodes between two turns of the event loop. asyncpg encodes a batch given as a
# list in one go, about 30,000 instructions a row (0.15 ms for 16 rows here): a batch of a
# hundred rows then held every call that was due for a millisecond, and at one connection
# that was the gateway's p99 (bench/README.md, issue 15).
PACE_ROWS = 16


async def _paced(rows: list[tuple[Any, ...]]) -> AsyncIterator[tuple[Any, ...]]:
    """The rows, with a turn of the event loop after each `PACE_ROWS`."""
    for n, row in enumerate(rows):
        if n and not n % PACE_ROWS:
            await asyncio.sleep(0)
        yield row


def _first_of_each(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The batch with a request_id queued twice kept once, as first queued (COPY would refuse
    the batch, and INSERT ... ON CONFLICT DO NOTHING would keep either)."""
    try:  # by the ids' ints: `UUID.__hash__` is Python code, run for each row of each batch
        if len({row[0].int for row in rows}) == len(rows):
            return rows
    except AttributeError:  # not a UUID (a damaged spill line): PostgreSQL will say
        pass
    seen: set[uuid.UUID] = set()
    unique = []
    for row in rows:
        if row[0] not in seen:
            seen.add(row[0])
            unique.append(row)
    return unique


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """A batch as one list per column, JSON columns as JSON text."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    for i in _JSON_AT:
        columns[i] = [orjson.dumps(value).decode() for value in columns[i]]
    return columns


_DEAD_LETTER = ("INSERT INTO ledger_dead_letters (request_id, project_id, row_json, error) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO UPDATE "
                "SET failures = ledger_dead_letters.failures + 1, error = EXCLUDED.error, "
                "row_json = EXCLUDED.row_json, failed_at = now(), replayed_at = NULL")
_INSERT_ONE = (f"INSERT INTO usage_records ({_COLS}) "
               f"VALUES ({', '.join(f'${i + 1}' for i in range(len(COLUMNS)))}) "
               f"ON CONFLICT (request_id) DO NOTHING RETURNING {_RETURNING}")

# PostgreSQL could not take the batch: it goes to the spill file (or waits in memory).
FLUSH_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
# The rows themselves are wrong: written one by one, the bad ones logged and left out.
ROW_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
# COPY encodes on the client and raises these bare (one-by-one, they come back as DataError).
_COPY_ROW_ERRORS = (*ROW_ERRORS, TypeError, ValueError, OverflowError)
# The connection is gone: a hook's failure then fails the whole batch.
_CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.InterfaceError,
                      asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError)
MAX_BACKOFF_S = 5.0
REPLAY_BATCHES_PER_FLUSH = 20  # then queued rows get their turn, so memory keeps draining
RETRY_AFTER_S = "1"


def as_row(r: UsageRecord) -> tuple[Any, ...]:
    """The record as a row PostgreSQL can store: client-supplied text (model, endpoint,
    metadata, ...) has NUL and lone surrogates replaced (`gateway.storable`)."""
    return row_and_line(r)[0]


def row_and_line(r: UsageRecord) -> tuple[tuple[Any, ...], bytes]:
    """The record's storable row and its journal line, the row encoded once.

    Checking each text value and JSON value of a row for what PostgreSQL refuses (NUL, lone
    surrogates) cost more than encoding the whole row, so the line is the check: orjson
    refuses lone surrogates and writes a NUL as `\\u0000`, so a row whose line it wrote
    without one is storable as it is. Only any other row is cleaned (`storable_row`) and
    encoded again (a text holding a backslash before `u0000` is cleaned needlessly: rare,
    and harmless)."""
    u = r.usage
    row = (r.request_id, r.project_id, r.api_key_id, r.provider, r.model, r.endpoint,
           r.status, r.streamed, u.input_tokens, u.cached_input_tokens, u.output_tokens,
           u.source, u.input_source, u.output_source, r.cost_usd, r.priced_by_fallback,
           r.price_model, r.overhead_ms, r.upstream_ms, r.error_code, r.metadata,
           r.started_at, r.finished_at, u.cache_write_tokens, r.requested_model,
           r.credential, r.attempts, r.origin, r.route_reason)
    line = journal_line(row)
    if line is None:
        row = storable_row(row)
        line = journal_line(row, strict=False)
    return row, line


def storable_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row (from a spill file or the dead letters) with every text value made storable."""
    return tuple(storable_text(v) if isinstance(v, str) else
                 storable_json(v) if isinstance(v, dict | list) else v for v in row)


class Ledger:
    def __init__(self, pool: asyncpg.Pool, settings: LedgerSettings,
                 hooks: Iterable[BatchHook] = (), *, spill_dir: Path | None = None) -> None:
        """`spill_dir` (else `settings.spill_dir`; neither: no spilling) holds the spill files."""
        self._pool = pool
        self._settings = settings
        self._hooks = tuple(hooks)
        self._pending: deque[tuple[Any, ...]] = deque()
        self._batch_size = settings.batch_size
        self._max_pending = settings.max_pending
        directory = spill_dir if spill_dir is not None else (
            None if settings.spill_dir == Path("") else settings.spill_dir)
        self._spill = (SpillFiles(directory, settings.spill_max_bytes)
                       if directory is not None and settings.spill_max_bytes > 0 else None)
        self._journal = (Journal(directory) if self._spill is not None and settings.journal
                         and directory is not None else None)
        self._lock = asyncio.Lock()  # one writer at a time: flush, replay, spill
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self.written = 0  # rows inserted by this ledger
        self.duplicates = 0  # rows skipped because their request_id was already stored
        self.rejected = 0  # rows PostgreSQL refused as invalid: each one a dead letter
        self.dead_letters_waiting = 0  # dead letters not replayed yet, as last counted
        self.dead_letters_replayed = 0  # dead letters this ledger replayed
        self.spilled = 0  # rows moved to the spill file
        self.replayed = 0  # rows read back from spill files and committed
        self.failures = 0  # flushes that failed
        self.last_flush = time.time()  # when the queue was last written out entirely

    @property
    def pending(self) -> int:
        """Rows queued in memory."""
        return len(self._pending)

    @property
    def spill_bytes(self) -> int:
        """Bytes in spill files that are still to be replayed."""
        return self._spill.backlog if self._spill is not None else 0

    @property
    def flush_lag_s(self) -> float:
        """Seconds since everything queued was last written; 0 when nothing is waiting."""
        if not self._pending and not self.spill_bytes:
            return 0.0
        return max(time.time() - self.last_flush, 0.0)

    def record(self, record: UsageRecord) -> None:
        """Queue one row; never blocks, never raises, never drops it."""
        row, line = row_and_line(record)
        if self._closed:
            self._record_after_close(row)
            return
        if self._journal is not None:  # on disk before the answer completes
            self._journal.append(line)
        self._pending.append(row)
        queued = len(self._pending)
        if queued % self._batch_size == 0:
            self._wake.set()
        if queued == self._max_pending:
            log.error("ledger_backlog", pending=queued, spill_bytes=self.spill_bytes)

    def check_capacity(self) -> None:
        """At admission: refuse new work (503, Retry-After) while the queue is full."""
        if len(self._pending) >= self._max_pending:
            raise ServiceUnavailable(
                "the usage ledger is behind; retry shortly", code="ledger_backlog",
                headers={"Retry-After": RETRY_AFTER_S})

    async def write_now(self, record: UsageRecord) -> bool:
        """Write one row at once, hooks included; False if its request_id was already stored.

        PostgreSQL unreachable: the row is queued like any other (spilled, replayed) and the
        answer is True. A row PostgreSQL refuses raises BadRequest."""
        row = as_row(record)
        try:
            async with self._connection() as conn, conn.transaction():
                found = await conn.fetchrow(_INSERT_ONE, *row)
                inserted = [InsertedRow(*found)] if found is not None else []
                await self._run_hooks(conn, inserted)
        except ROW_ERRORS as exc:
            raise BadRequest("the ledger refused the usage row: a value is out of range") from exc
        except FLUSH_ERRORS as exc:
            log.warning("ledger_write_deferred", request_id=str(record.request_id),
                        error=_describe(exc))
            self.record(record)
            return True
        self._committed()
        self.written += len(inserted)
        self.duplicates += 1 - len(inserted)
        return bool(inserted)

    def _committed(self) -> None:
        """Tell the hooks that want to know (`committed()`) that their transaction is in."""
        for hook in self._hooks:
            committed = getattr(hook, "committed", None)
            if committed is not None:
                committed()

    async def start(self) -> None:
        if self._spill is not None:
            found = await asyncio.to_thread(self._spill.adopt_orphans)
            if found:
                log.info("ledger_spill_found", files=found, bytes=self._spill.backlog)
                self._wake.set()
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def close(self, deadline_s: float) -> None:
        """Stop the writer and write what is queued within `deadline_s`; spill what is not."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, deadline_s)
            except TimeoutError:
                log.error("ledger_flush_timed_out_on_close", pending=len(self._pending))
            self._task = None
        elif self._pending:
            with contextlib.suppress(*FLUSH_ERRORS):
                async with asyncio.timeout(deadline_s):
                    while self._pending:  # the rows queued during a flush too
                        await self.flush()
        if self._pending and self._spill is not None:
            async with self._lock:
                await self._spill_pending(force=True)
        if self._pending:
            log.error("ledger_unflushed_on_close", pending=len(self._pending))
        if self._journal is not None:
            self._journal.close()  # what is still queued stays there for the next start
        if self._spill is not None:
            left = self._spill.backlog
            await asyncio.to_thread(self._spill.close)
            if left:
                log.warning("ledger_spill_left_for_next_start", bytes=left)
        self._closed = True

    async def flush(self) -> int:
        """Replay spilled rows (a bounded share), then write every row queued when it began;
        answer how many queued rows were written. On failure the queue is spilled and the
        error raised.

        Rows queued while it writes wait for the next flush (the batch size wakes it at
        once): under steady traffic a flush that took them too would never end, writing
        ever smaller batches, and the journal segment it sealed would never be replaced."""
        async with self._lock:
            if self._journal is not None:
                self._journal.seal()  # rows queued from now on go to a fresh segment
            try:
                replay_done = await self._replay(REPLAY_BATCHES_PER_FLUSH)
                done = 0
                left = len(self._pending)
                while left > 0 and self._pending:
                    batch = [self._pending.popleft()
                             for _ in range(min(self._batch_size, left, len(self._pending)))]
                    left -= len(batch)
                    try:
                        await self._write_batch(batch)
                    except BaseException:
                        self._pending.extendleft(reversed(batch))  # keep order, lose nothing
                        raise
                    if self._journal is not None:
                        self._journal.drop(len(batch))
                    done += len(batch)
            except FLUSH_ERRORS as exc:
                self.failures += 1
                log.warning("ledger_flush_failed", error=_describe(exc),
                            pending=len(self._pending), spill_bytes=self.spill_bytes)
                await self._spill_pending(force=self._closing)
                raise
        if not replay_done or len(self._pending) >= self._batch_size:
            self._wake.set()  # more to replay, or a batch queued meanwhile: come back at once
        self.last_flush = time.time()
        return done

    async def _run(self) -> None:
        interval = self._settings.flush_interval_s
        backoff = interval
        loop = asyncio.get_running_loop()
        probe_at = 0.0  # while PostgreSQL is down: when to try it again
        while True:
            if not self._closing:
                # A timeout scope: `wait_for` would wrap each wait in a task (Python 3.11).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await self._wake.wait()
            self._wake.clear()
            if not self._closing and loop.time() < probe_at:
                if self._pending and self._spill is not None and self._spill.has_room():
                    async with self._lock:  # keep memory short while it is down
                        await self._spill_pending(force=False)
                continue
            try:
                await self.flush()
            except Exception as exc:
                if not isinstance(exc, FLUSH_ERRORS):  # a bug: keep the writer alive
                    log.exception("ledger_writer_error", pending=len(self._pending))
                if not self._closing:
                    probe_at = loop.time() + backoff
                elif self._spill is not None or not self._pending:
                    return  # flush() spilled what was left (close() spills the rest)
                else:
                    await asyncio.sleep(backoff)  # nowhere to spill: retry until the deadline
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            backoff, probe_at = interval, 0.0
            if self._closing and not self._pending:
                return

    async def _write_batch(self, rows: list[tuple[Any, ...]]) -> None:
        """One transaction: COPY straight into usage_records (the fast path: one round trip,
        the hooks see the batch's own tuples); a batch holding rows already stored (a replay,
        or a retry of a batch whose commit went unanswered) is written instead with
        INSERT ... ON CONFLICT DO NOTHING, the hooks seeing only the rows it inserted."""
        batch, rows = rows, _first_of_each(rows)
        async with self._connection() as conn:
            rejected = 0
            try:
                try:
                    async with conn.transaction():
                        await conn.copy_records_to_table("usage_records",
                                                         records=_paced(rows),
                                                         columns=COLUMNS)
                        inserted = [_inserted(row) for row in rows]
                        await self._run_hooks(conn, inserted)
                except asyncpg.UniqueViolationError:
                    async with conn.transaction():
                        found = await conn.fetch(_MOVE, *_columns(rows))
                        inserted = [InsertedRow(*r) for r in found]
                        await self._run_hooks(conn, inserted)
            except _COPY_ROW_ERRORS:
                inserted, rejected = await self._insert_one_by_one(conn, rows)
            count = len(inserted)
        self._committed()
        self.written += count
        self.rejected += rejected
        self.duplicates += len(batch) - count - rejected

    def _connection(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        return bounded_connection(self._pool, self._settings.flush_timeout_s)

    async def _insert_one_by_one(self, conn: asyncpg.Connection, rows: list[tuple[Any, ...]]
                                 ) -> tuple[list[InsertedRow], int]:
        """A batch PostgreSQL refused: keep every row it accepts; each one it refuses goes to
        the dead letters in the same transaction (never dropped), and is logged."""
        inserted: list[InsertedRow] = []
        refused: list[tuple[tuple[Any, ...], Exception]] = []
        async with conn.transaction():
            for row in rows:
                try:
                    async with conn.transaction():  # a savepoint per row
                        found = await conn.fetchrow(_INSERT_ONE, *row)
                except ROW_ERRORS as exc:
                    refused.append((row, exc))
                    continue
                if found is not None:
                    inserted.append(InsertedRow(*found))
            if refused:
                await conn.executemany(_DEAD_LETTER, [
                    (row[0], row[1], encode_row(row).decode(), storable_text(_describe(error)))
                    for row, error in refused])
            await self._run_hooks(conn, inserted)
        for row, error in refused:  # logged once committed, so a retried batch logs once
            _log_rejected(row, error)
        self.dead_letters_waiting += len(refused)
        return inserted, len(refused)

    async def dead_letters(self, limit: int = 100) -> list[asyncpg.Record]:
        """The dead letters not yet replayed, oldest first."""
        async with self._connection() as conn:
            return list(await conn.fetch(
                """SELECT request_id, project_id, error, failures, failed_at, row_json
                   FROM ledger_dead_letters WHERE replayed_at IS NULL
                   ORDER BY failed_at, request_id LIMIT $1""", limit))

    async def count_dead_letters(self) -> int:
        """How many dead letters wait for a replay (also kept for /metrics and readiness)."""
        async with self._connection() as conn:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM ledger_dead_letters WHERE replayed_at IS NULL")
        self.dead_letters_waiting = count
        return count

    async def replay_dead_letters(self, limit: int = 1000) -> dict[str, int]:
        """Try the waiting dead letters again, made storable with today's rules: a row now
        accepted (or already stored) is marked replayed, hooks included; a row refused
        again stays, its error and failure count updated. Answers the counts."""
        replayed = duplicates = failed = 0
        async with self._lock, self._connection() as conn, conn.transaction():
            letters = await conn.fetch(
                """SELECT request_id, row_json FROM ledger_dead_letters
                   WHERE replayed_at IS NULL ORDER BY failed_at, request_id LIMIT $1
                   FOR UPDATE SKIP LOCKED""", limit)
            inserted: list[InsertedRow] = []
            for letter in letters:
                try:
                    row = storable_row(decode_row(letter["row_json"].encode()))
                    async with conn.transaction():
                        found = await conn.fetchrow(_INSERT_ONE, *row)
                except (*ROW_ERRORS, ValueError, KeyError, TypeError) as exc:
                    failed += 1
                    await conn.execute(
                        """UPDATE ledger_dead_letters SET failures = failures + 1, error = $2,
                           failed_at = now() WHERE request_id = $1""",
                        letter["request_id"], storable_text(_describe(exc)))
                    continue
                if found is None:
                    duplicates += 1
                else:
                    inserted.append(InsertedRow(*found))
                    replayed += 1
                await conn.execute("UPDATE ledger_dead_letters SET replayed_at = now() "
                                   "WHERE request_id = $1", letter["request_id"])
            await self._run_hooks(conn, inserted)
        self._committed()
        self.written += replayed
        self.dead_letters_replayed += replayed + duplicates
        await self.count_dead_letters()
        return {"replayed": replayed, "already_stored": duplicates, "still_refused": failed,
                "waiting": self.dead_letters_waiting}

    async def _run_hooks(self, conn: asyncpg.Connection, inserted: list[InsertedRow]) -> None:
        if not inserted:
            return
        for hook in self._hooks:
            wants = getattr(hook, "wants", None)  # a hook with nothing to do costs no savepoint
            if wants is not None and not wants(inserted):
                continue
            try:
                async with conn.transaction():  # a savepoint: a failing hook never costs rows
                    await hook(conn, inserted)
            except _CONNECTION_ERRORS:
                raise
            except Exception:
                if conn.is_closed():
                    raise
                log.exception("ledger_hook_failed", hook=getattr(hook, "__qualname__", repr(hook)),
                              rows=len(inserted))

    async def _replay(self, max_batches: int) -> bool:
        """Write up to `max_batches` spilled batches, oldest file first; each file is emptied
        only once all of it is committed. Answer whether nothing is left to replay."""
        spill = self._spill
        if spill is None:
            return True
        for source in spill.sources():
            if source.own and source.size == 0:
                continue
            while True:
                if max_batches == 0:
                    return False
                rows, end, unreadable = await asyncio.to_thread(
                    spill.read, source, self._batch_size)
                for offset, error in unreadable:
                    log.error("ledger_spill_line_unreadable", file=str(source.path),
                              offset=offset, error=error)
                if end == source.replayed:
                    break
                if rows:  # files of older releases may hold text PostgreSQL refuses
                    await self._write_batch([storable_row(row) for row in rows])
                    max_batches -= 1
                source.replayed = end  # committed: never sent again by this process
                self.replayed += len(rows)
            log.info("ledger_spill_replayed", file=str(source.path), bytes=source.replayed)
            await asyncio.to_thread(spill.finish, source)
        return True

    async def _spill_pending(self, *, force: bool) -> None:
        """Move queued rows to the spill file, a batch (one fsync) at a time, while it has
        room (`force`: regardless, at close). Caller holds the lock."""
        spill = self._spill
        while spill is not None and self._pending:
            batch = list(itertools.islice(self._pending, self._batch_size))
            try:
                stored = await asyncio.to_thread(spill.append, batch, force)
            except OSError as exc:
                log.error("ledger_spill_failed", error=_describe(exc), pending=len(self._pending))
                return
            if not stored:
                log.warning("ledger_spill_full", spill_bytes=spill.backlog,
                            pending=len(self._pending))
                return
            for _ in batch:  # only record() touches the queue meanwhile, and only its end
                self._pending.popleft()
            if self._journal is not None:
                self._journal.drop(len(batch))
            self.spilled += len(batch)

    def _record_after_close(self, row: tuple[Any, ...]) -> None:
        """A row after close() (should not happen): spilled at once, blocking, or kept."""
        if self._spill is not None:
            with contextlib.suppress(OSError):
                stored = self._spill.append([row], True)
                if stored:
                    log.warning("ledger_row_after_close_spilled", request_id=str(row[0]))
                    return
        self._pending.append(row)
        log.error("ledger_row_after_close", request_id=str(row[0]))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip(": ")


def _log_rejected(row: tuple[Any, ...], exc: Exception) -> None:
    log.error("ledger_row_dead_lettered", request_id=str(row[0]), error=_describe(exc),
              row=encode_row(row).decode().rstrip("\n"))


# -- spill files ---------------------------------------------------------------------------

SPILL_GLOB = "ledger-*.jsonl"
_DECODERS: dict[str, Callable[[Any], Any]] = {
    "request_id": uuid.UUID, "cost_usd": Decimal,
    "started_at": datetime.fromisoformat, "finished_at": datetime.fromisoformat,
}


_DEFAULTS: dict[str, Any] = {"origin": "proxy"}  # columns that lines of older releases lack


def encode_row(row: tuple[Any, ...]) -> bytes:
    """One JSON line; decode_row gives back an equal tuple (Decimal, UUID, datetime too).
    Never fails: text JSON cannot carry is made storable, an unknown type written as text."""
    data = dict(zip(COLUMNS, row, strict=True))
    data["cost_usd"] = str(data["cost_usd"])
    try:
        return orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        clean = dict(zip(COLUMNS, storable_row(tuple(data.values())), strict=True))
        return orjson.dumps(clean, default=str, option=orjson.OPT_APPEND_NEWLINE)


@overload
def journal_line(row: tuple[Any, ...]) -> bytes | None: ...
@overload
def journal_line(row: tuple[Any, ...], strict: Literal[False]) -> bytes: ...
def journal_line(row: tuple[Any, ...], strict: bool = True) -> bytes | None:
    """The row as one JSON array in `COLUMNS` order: a journal line, cheaper to write than
    `encode_row`'s object (no key, no dict to build). `strict`: None when the row is not
    storable as it is (see `row_and_line`); else written in any case, what JSON cannot carry
    as text."""
    values = list(row)
    values[_COST] = str(values[_COST])
    try:
        line = orjson.dumps(values, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        if strict:
            return None
        return orjson.dumps(values, default=str, option=orjson.OPT_APPEND_NEWLINE)
    return None if strict and b"\\u0000" in line else line


def decode_row(line: bytes) -> tuple[Any, ...]:
    data = orjson.loads(line)
    if isinstance(data, list):  # a journal line (`journal_line`): the values by position
        if len(data) > len(COLUMNS):
            raise ValueError(f"a journal line holds {len(data)} values; the ledger has "
                             f"{len(COLUMNS)} columns (written by a newer release?)")
        data = dict(zip(COLUMNS, data, strict=False))  # fewer: an older release's line
    if not isinstance(data, dict):
        raise ValueError("a spill line must be a JSON object or a journal line's array")
    return tuple(_DECODERS[c](data[c]) if c in _DECODERS and data.get(c) is not None
                 else data.get(c, _DEFAULTS.get(c)) for c in COLUMNS)


@dataclass(eq=False)
class SpillSource:
    path: Path
    fd: int
    size: int
    own: bool
    replayed: int = 0  # bytes from the start of the file already committed


class SpillFiles:
    """The spill files of one directory: this ledger's own (created when first needed, locked
    with flock while it lives) and orphans, whose lock could be taken because their process
    is gone. Blocking I/O: call through asyncio.to_thread."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._own: SpillSource | None = None
        self._orphans: list[SpillSource] = []
        self._io = threading.Lock()

    @property
    def backlog(self) -> int:
        return sum(s.size - s.replayed for s in self.sources())

    def has_room(self) -> bool:
        return self.backlog < self.max_bytes

    def sources(self) -> list[SpillSource]:
        """Oldest first: orphans by name (names start with their creation time), then ours."""
        return [*self._orphans, *([self._own] if self._own is not None else [])]

    def adopt_orphans(self) -> int:
        """Lock every spill file no live process holds; answer how many were found."""
        if not self.directory.is_dir():
            return 0
        known = {s.path for s in self.sources()}
        found = 0
        with self._io:
            for path in sorted(self.directory.glob(SPILL_GLOB)):
                if path in known:
                    continue
                source = self._lock_orphan(path)
                if source is not None:
                    self._orphans.append(source)
                    found += 1
        return found

    def append(self, rows: list[tuple[Any, ...]], force: bool) -> bool:
        """Append rows and fsync; False when they do not fit (unless `force`)."""
        data = b"".join(encode_row(row) for row in rows)
        with self._io:
            if not force and self.backlog + len(data) > self.max_bytes:
                return False
            own = self._own_file()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(own.fd, view):]
                os.fsync(own.fd)
            except OSError:
                with contextlib.suppress(OSError):  # no torn line left behind
                    os.ftruncate(own.fd, own.size)
                raise
            own.size += len(data)
        return True

    def read(self, source: SpillSource, max_rows: int
             ) -> tuple[list[tuple[Any, ...]], int, list[tuple[int, str]]]:
        """Up to `max_rows` rows from `source.replayed` on: (rows, end offset, unreadable)."""
        rows: list[tuple[Any, ...]] = []
        unreadable: list[tuple[int, str]] = []
        with self._io, open(source.path, "rb") as file:
            offset = source.replayed
            file.seek(offset)
            while len(rows) < max_rows and offset < source.size:
                line = file.readline(source.size - offset)
                if not line:
                    break
                if not line.endswith(b"\n"):  # cut short by a crash mid-append
                    unreadable.append((offset, "incomplete last line"))
                    offset += len(line)
                    break
                try:
                    rows.append(decode_row(line))
                except (ValueError, KeyError, TypeError) as exc:
                    unreadable.append((offset, _describe(exc)))
                offset += len(line)
        return rows, offset, unreadable

    def finish(self, source: SpillSource) -> None:
        """Everything in `source` is committed: empty ours, remove an orphan."""
        with self._io:
            if source.own:
                os.ftruncate(source.fd, 0)
                os.fsync(source.fd)
                source.size = source.replayed = 0
                return
            source.path.unlink(missing_ok=True)
            self._fsync_directory()
            os.close(source.fd)
            self._orphans.remove(source)

    def close(self) -> None:
        """Release every lock; our file is removed when empty, else left for the next start."""
        with self._io:
            own, self._own = self._own, None
            if own is not None:
                if own.size == own.replayed:
                    own.path.unlink(missing_ok=True)
                os.close(own.fd)
            for orphan in self._orphans:
                os.close(orphan.fd)
            self._orphans.clear()

    def _own_file(self) -> SpillSource:
        if self._own is not None:
            return self._own
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"ledger-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"
        temporary = self.directory / f".{name}.tmp"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # locked before its name can be globbed
        path = self.directory / f"{name}.jsonl"
        os.rename(temporary, path)
        self._fsync_directory()
        self._own = SpillSource(path, fd, 0, own=True)
        return self._own

    def _lock_orphan(self, path: Path) -> SpillSource | None:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Still the file under that name, not one another ledger replayed and removed?
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except (BlockingIOError, FileNotFoundError):
            same = False
        if not same:
            os.close(fd)
            return None
        return SpillSource(path, fd, data_end(fd, os.fstat(fd).st_size), own=False)

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Journal:
    """Every queued row, copied to a local segment file as it is queued (through a shared
    memory map, no fsync: the page cache outlives a killed process), so rows a process could
    not commit or spill before it died stay on disk. Segments are named like spill files and
    locked the same way, so the next ledger to start on the directory replays them as orphans
    (rows already committed are skipped as duplicates). The queue is first in, first out, and
    so are the segments: `drop(n)` says n more rows left the queue's front, committed or
    spilled, and a segment all of whose rows have left is removed. `seal()` starts a new
    segment, so that under steady traffic the old one drains and goes. Blocking I/O, but a
    row is a memory copy; only a new or a full segment makes system calls.

    A drained segment is not removed at once but zeroed and kept as the spare, which the next
    `seal()` takes under a fresh name: the last close of a removed file frees its blocks,
    about 0.3 ms of the flush that drained it, and making a new one costs about 0.1 ms of
    the call that queues its first row. A spare left by a killed process holds no row; it is
    adopted and removed like any orphan.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._segments: deque[_Segment] = deque()  # oldest first; the last takes appends
        self._spare: _Segment | None = None  # drained and zeroed, for the next seal()
        self._open_for_append = False
        self.failures = 0  # writes that failed (each row still queued in memory)

    @property
    def segments(self) -> int:
        return len(self._segments)

    def append(self, line: bytes) -> None:
        segment = self._segments[-1] if self._open_for_append else None
        if segment is None or segment.path is not None:
            try:
                if segment is None:
                    segment = self._fresh_segment()
                    self._segments.append(segment)
                    self._open_for_append = True
                segment.write(line)
            except OSError as exc:
                self.failures += 1
                if self.failures == 1 or self.failures % 10_000 == 0:
                    log.error("ledger_journal_write_failed", error=_describe(exc),
                              failures=self.failures)
                # Rows that reached no file are still counted, so drop() stays in step; the
                # next seal() tries a file again.
                segment = _Segment(None, -1)
                self._segments.append(segment)
                self._open_for_append = True
        segment.rows += 1

    def seal(self) -> None:
        """The next row starts a new segment."""
        self._open_for_append = False

    def drop(self, count: int) -> None:
        """`count` rows left the front of the queue (committed, or spilled and fsync'd)."""
        while count > 0 and self._segments:
            segment = self._segments[0]
            taken = min(count, segment.rows - segment.dropped)
            segment.dropped += taken
            count -= taken
            if segment.dropped < segment.rows:
                break
            if len(self._segments) == 1 and self._open_for_append:
                segment.empty()  # still taking appends: emptied, kept
            else:
                self._retire(self._segments.popleft())

    def _retire(self, segment: _Segment) -> None:
        if (self._spare is None and segment.memory is not None
                and len(segment.memory) <= SPARE_MAX_BYTES):
            segment.empty()
            self._spare = segment
        else:
            segment.remove()

    def _fresh_segment(self) -> _Segment:
        spare, self._spare = self._spare, None
        if spare is not None:
            try:
                spare.rename()
                return spare
            except OSError:
                spare.remove()
        return _Segment.create(self.directory)

    def close(self) -> None:
        """Release the locks; segments with rows not yet committed or spilled stay."""
        if self._spare is not None:
            self._spare.remove()
            self._spare = None
        while self._segments:
            segment = self._segments.popleft()
            if segment.dropped >= segment.rows:
                segment.remove()
            else:
                segment.release()
        self._open_for_append = False


# A journal segment's first size on disk; it doubles whenever it is full.
SEGMENT_BYTES = 1 << 20
SPARE_MAX_BYTES = 4 * SEGMENT_BYTES  # a segment grown past this is removed, not kept


def _segment_name() -> str:
    """Names sort by creation time, so that orphans replay oldest first."""
    return f"ledger-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}-journal"


@dataclass(eq=False)
class _Segment:
    """A journal file, mapped into memory: appending a row is a copy into the page cache.
    One `write` a row cost about 11 us of a proxied call's CPU under load (bench/README.md,
    issue 15); the copy costs under 1. Its size is reserved on disk (fallocate) before it is
    mapped, so a full disk fails the reservation with ENOSPC, handled like a failed write,
    instead of killing the process with SIGBUS at a copy. Until it is closed the file ends
    in NUL padding, which readers of a dead process's segment stop at (`data_end`)."""

    path: Path | None  # None: a stand-in for rows that reached no file
    fd: int
    rows: int = 0
    dropped: int = 0
    used: int = 0  # bytes of rows from the start of the file
    memory: mmap.mmap | None = None

    @classmethod
    def create(cls, directory: Path) -> _Segment:
        directory.mkdir(parents=True, exist_ok=True)
        name = _segment_name()
        temporary = directory / f".{name}.tmp"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        segment = cls(None, fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # locked before its name can be globbed
            segment.reserve(SEGMENT_BYTES)
            path = directory / f"{name}.jsonl"
            os.rename(temporary, path)
        except BaseException:
            segment.close_map()
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        segment.path = path
        return segment

    def write(self, line: bytes) -> None:
        assert self.memory is not None  # mapped by create(); stand-ins are never written
        end = self.used + len(line)
        if end > len(self.memory):
            size = len(self.memory)
            while size < end:
                size *= 2
            self.reserve(size)
        self.memory[self.used:end] = line
        self.used = end

    def reserve(self, size: int) -> None:
        """The file's blocks up to `size` allocated, and mapped."""
        os.posix_fallocate(self.fd, 0, size)
        if self.memory is None:
            self.memory = mmap.mmap(self.fd, size)
        else:
            self.memory.resize(size)

    def rename(self) -> None:
        """A fresh name, for a spare taken again: its next rows are the newest."""
        assert self.path is not None
        path = self.path.with_name(f"{_segment_name()}.jsonl")
        os.rename(self.path, path)
        self.path = path

    def empty(self) -> None:
        if self.memory is not None:  # zeroed in place: the blocks stay reserved
            self.memory[:self.used] = bytes(self.used)
        self.rows = self.dropped = self.used = 0

    def close_map(self) -> None:
        if self.memory is not None:
            self.memory.close()
            self.memory = None

    def remove(self) -> None:
        if self.path is not None:
            self.close_map()
            self.path.unlink(missing_ok=True)
            os.close(self.fd)

    def release(self) -> None:
        """Unlocked and closed with its rows, and only them, left for the next start."""
        if self.path is not None:
            self.close_map()
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.used)
            os.close(self.fd)


def data_end(fd: int, size: int) -> int:
    """Where the rows of a file `size` bytes long end: a journal segment left behind by a
    killed process is padded with NULs to its reserved size, and JSON lines hold none."""
    end = size
    while end > 0:
        start = max(0, end - 65536)
        kept = len(os.pread(fd, end - start, start).rstrip(b"\x00"))
        if kept:
            return start + kept
        end = start
    return 0
