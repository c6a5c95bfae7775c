"""The ledger's journal: every answered call is on local disk before its answer completes, so
a process killed with rows still in memory loses none of them; the next one replays them."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest
from conftest import FakeUpstream, chat_body
from test_serve import start_gateway_process

from gateway import db as gwdb
from gateway import projects
from gateway.domain import Usage, UsageRecord
from gateway.ledger import (
    COLUMNS,
    SEGMENT_BYTES,
    SPARE_MAX_BYTES,
    SPILL_GLOB,
    Journal,
    Ledger,
    SpillFiles,
    as_row,
    decode_row,
    encode_row,
    row_and_line,
    storable_row,
)
from gateway.settings import DatabaseSettings, LedgerSettings


def row() -> UsageRecord:
    now = datetime.now(UTC)
    return UsageRecord(request_id=uuid.uuid4(), project_id=1, api_key_id=1, provider="openai",
                       model="gpt-4o-mini", endpoint="/v1/chat/completions", status=200,
                       streamed=False, usage=Usage(10, 0, 5), cost_usd=Decimal("0.000003"),
                       priced_by_fallback=False, price_model="gpt-4o-mini", overhead_ms=0.3,
                       upstream_ms=10.0, error_code=None, metadata={}, started_at=now,
                       finished_at=now)


def test_a_journal_line_is_an_array_that_decodes_to_its_row() -> None:
    record = row()
    record.metadata = {"feature": "chat", "n": 3, "nested": {"a": [1, None]}}
    record.attempts = [{"provider": "openai", "status": 200, "ms": 1.5}]
    record.cost_usd = Decimal("0.000000000123456789012345678901")
    stored, line = row_and_line(record)
    values = orjson.loads(line)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert isinstance(values, list) and len(values) == len(COLUMNS)
    assert decode_row(line) == stored
    assert [type(v) for v in decode_row(line)] == [type(v) for v in stored]
    # A storable row is the record's own values, not a cleaned copy.
    assert stored[COLUMNS.index("metadata")] is record.metadata
    assert stored[COLUMNS.index("attempts")] is record.attempts


@pytest.mark.parametrize("field", ["model", "provider", "credential", "metadata", "attempts",
                                   "key"])
@pytest.mark.parametrize("bad", ["\x00", "\ud800"])
def test_a_row_with_unstorable_text_is_cleaned_wherever_it_is(field: str, bad: str) -> None:
    record = row()
    text = f"a{bad}b"
    if field == "metadata":
        record.metadata = {"k": text}
    elif field == "attempts":
        record.attempts = [{"provider": "openai", "error_code": text}]
    elif field == "key":
        record.metadata = {text: "v"}
    else:
        setattr(record, field, text)
    stored, line = row_and_line(record)
    texts = list(_texts(stored))
    assert not any(bad in t for t in texts) and any(t == "a\ufffdb" for t in texts)
    assert stored == storable_row(stored)  # nothing left to clean
    assert decode_row(line) == stored
    assert b"\\u0000" not in line


def _texts(value: object) -> Iterator[str]:
    """Every string in a row, dictionary keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _texts(k)
            yield from _texts(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _texts(v)


def test_a_text_holding_a_backslash_u0000_is_kept_as_it_is() -> None:
    record = row()
    record.model = "a\\u0000b"  # six characters, no NUL: the line shows \\u0000
    stored, line = row_and_line(record)
    assert stored[COLUMNS.index("model")] == "a\\u0000b"
    assert decode_row(line) == stored


def test_journal_arrays_of_older_and_newer_releases() -> None:
    stored, line = row_and_line(row())
    values = orjson.loads(line)
    older = decode_row(orjson.dumps(values[:-2]))  # before "origin" and "route_reason"
    assert older[:-2] == stored[:-2] and older[-2:] == ("proxy", None)
    with pytest.raises(ValueError, match="newer release"):
        decode_row(orjson.dumps([*values, "a column this release lacks"]))


async def _rows_at_least(db: asyncpg.Connection, count: int, within_s: float) -> int:
    """The number of usage rows once it reaches `count`, or when `within_s` has passed."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        found: int = await db.fetchval("SELECT count(*) FROM usage_records")
        if found >= count or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.02)


def _lines(directory: Path) -> list[bytes]:
    """The rows in the segments: an open segment is NUL-padded to its reserved size."""
    return [line for path in sorted(directory.glob(SPILL_GLOB))
            for line in path.read_bytes().rstrip(b"\0").splitlines()]


def _segments(directory: Path) -> int:
    return len(list(directory.glob(SPILL_GLOB)))


def test_segments_go_once_their_rows_have_left_the_queue(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for n in range(3):
        journal.append(b'{"n": %d}\n' % n)
    journal.seal()
    journal.append(b'{"n": 3}\n')
    assert journal.segments == 2 and len(_lines(tmp_path)) == 4
    journal.drop(2)
    assert journal.segments == 2  # the first segment still holds a queued row
    journal.drop(1)
    assert journal.segments == 1 and _lines(tmp_path) == [b'{"n": 3}']
    journal.drop(1)  # the open segment is emptied and kept for the next rows
    assert journal.segments == 1 and _lines(tmp_path) == []
    journal.append(b'{"n": 4}\n')
    assert _lines(tmp_path) == [b'{"n": 4}']  # the emptied rows were zeroed, not left behind
    journal.close()  # a row still queued: its segment stays for the next start
    assert _lines(tmp_path) == [b'{"n": 4}']
    (left,) = tmp_path.glob(SPILL_GLOB)
    assert left.read_bytes() == b'{"n": 4}\n'  # closed: the padding is cut off


def test_a_segment_grows_past_its_first_reservation(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    lines = [b'{"n": %d, "pad": "%s"}\n' % (n, b"x" * 300) for n in range(3 * SEGMENT_BYTES // 300)]
    for line in lines:
        journal.append(line)
    assert journal.segments == 1 and journal.failures == 0
    (segment,) = tmp_path.glob(SPILL_GLOB)
    assert segment.stat().st_size >= 4 * SEGMENT_BYTES  # reserved ahead, doubling
    journal.close()
    assert segment.read_bytes() == b"".join(lines)


def test_a_drained_segment_is_zeroed_and_taken_again_under_a_later_name(
        tmp_path: Path) -> None:
    """Removing a drained segment costs its flush about 0.3 ms (the last close frees its
    blocks), so it is kept as the spare: zeroed at once, renamed when the next seal needs a
    segment, so that names still sort its rows after the older segments'."""
    journal = Journal(tmp_path)
    journal.append(b'{"n": 0}\n')
    journal.seal()
    journal.append(b'{"n": 1}\n')
    (first,) = [p for p in tmp_path.glob(SPILL_GLOB) if b'"n": 0' in p.read_bytes()]
    inode = first.stat().st_ino
    journal.drop(1)
    assert journal.segments == 1 and _segments(tmp_path) == 2  # the open one, and the spare
    assert first.read_bytes().rstrip(b"\0") == b""  # zeroed: no row replays from it
    journal.seal()
    journal.append(b'{"n": 2}\n')
    assert not first.exists() and _segments(tmp_path) == 2  # no third file was made
    newest = sorted(tmp_path.glob(SPILL_GLOB))[-1]
    assert newest.stat().st_ino == inode and newest.read_bytes().rstrip(b"\0") == b'{"n": 2}\n'
    journal.drop(2)  # both drained: one is the spare, the other is removed
    assert journal.segments == 1 and _lines(tmp_path) == []
    journal.close()
    assert _segments(tmp_path) == 0


def test_a_grown_segment_is_not_kept_as_the_spare(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(b'{"pad": "%s"}\n' % (b"x" * (SPARE_MAX_BYTES + 1)))
    journal.seal()
    journal.append(b'{"n": 1}\n')
    journal.drop(1)
    assert _segments(tmp_path) == 1 and _lines(tmp_path) == [b'{"n": 1}']
    journal.close()


def test_a_full_disk_fails_the_reservation_not_the_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC comes from fallocate, before anything is mapped: a copy into a mapped page the
    disk has no room for would kill the process with SIGBUS instead."""
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    journal = Journal(tmp_path)
    journal.append(b'{"n": 0}\n')
    monkeypatch.setattr(os, "posix_fallocate", full)
    big = b'{"pad": "%s"}\n' % (b"x" * SEGMENT_BYTES)  # more than the segment has room for
    journal.append(big)
    journal.append(b'{"n": 2}\n')
    assert journal.failures == 1 and journal.segments == 2
    journal.seal()
    journal.append(b'{"n": 3}\n')  # a new segment cannot be reserved either
    assert journal.failures == 2 and not list(tmp_path.glob(".*.tmp"))
    journal.drop(4)
    journal.close()
    assert _lines(tmp_path) == []


def test_a_killed_process_leaves_its_rows_and_readers_stop_at_the_padding(
        tmp_path: Path) -> None:
    records = [row() for _ in range(3)]
    lines = [encode_row(as_row(r)) for r in records]
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from gateway.ledger import Journal\n"
        "journal = Journal(Path(sys.argv[1]))\n"
        "journal.append(b'{}\\n')\n"
        "journal.seal()\n"
        "for line in sys.stdin.buffer:\n"
        "    journal.append(line)\n"
        "journal.drop(1)  # the first segment drained: now the spare\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)],
                          input=b"".join(lines), check=False, timeout=60)
    assert done.returncode == -signal.SIGKILL
    segments = sorted(tmp_path.glob(SPILL_GLOB))  # the spare, then the rows' segment
    assert [s.stat().st_size for s in segments] == [SEGMENT_BYTES] * 2  # NUL-padded
    files = SpillFiles(tmp_path, max_bytes=10 * SEGMENT_BYTES)
    assert files.adopt_orphans() == 2
    spare, source = files.sources()
    assert spare.size == 0  # no row: replayed as nothing, then removed
    assert source.size == len(b"".join(lines))
    rows, end, unreadable = files.read(source, max_rows=100)
    assert [r[0] for r in rows] == [r.request_id for r in records]
    assert unreadable == [] and end == source.size
    files.finish(spare)
    assert not segments[0].exists()
    files.close()


def test_a_journal_that_cannot_write_keeps_counting(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    journal = Journal(blocked)
    journal.append(b"{}\n")
    journal.append(b"{}\n")
    assert journal.failures == 1  # one failed segment takes the rest until the next seal
    journal.drop(2)
    assert journal.segments == 1
    journal.close()


async def test_queued_rows_are_on_disk_and_leave_it_once_committed(
        database_url: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    pool = await gwdb.create_pool(database_url, DatabaseSettings(pool_min_size=1))
    ledger = Ledger(pool, LedgerSettings(flush_interval_s=60), spill_dir=tmp_path)
    records = [row() for _ in range(5)]
    for record in records:
        ledger.record(record)
    on_disk = [decode_row(line + b"\n")[0] for line in _lines(tmp_path)]
    assert on_disk == [r.request_id for r in records]
    await ledger.flush()
    assert _lines(tmp_path) == []
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 5
    await ledger.close(deadline_s=5)
    await pool.close()
    assert _lines(tmp_path) == []


async def test_a_journal_left_behind_is_replayed_once(
        database_url: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    """A dead process's segment (some rows committed, some not) is adopted and replayed."""
    committed, lost = row(), row()
    pool = await gwdb.create_pool(database_url, DatabaseSettings(pool_min_size=1))
    first = Ledger(pool, LedgerSettings(flush_interval_s=60), spill_dir=tmp_path / "a")
    first.record(committed)
    await first.flush()
    segment = tmp_path / "ledger-00000000000000000001-1-dead-journal.jsonl"
    # An older release's line (an object) and this one's (an array) replay alike.
    segment.write_bytes(encode_row(as_row(committed)) + row_and_line(lost)[1])
    second = Ledger(pool, LedgerSettings(flush_interval_s=0.05), spill_dir=tmp_path)
    await second.start()
    assert await _rows_at_least(db, 2, within_s=5) == 2
    await second.close(deadline_s=5)
    await first.close(deadline_s=5)
    await pool.close()
    stored = {r["request_id"] for r in await db.fetch("SELECT request_id FROM usage_records")}
    assert stored == {committed.request_id, lost.request_id}
    assert not segment.exists()


async def test_sigkill_loses_no_answered_call(
        database_url: str, fake_upstream: FakeUpstream, db: asyncpg.Connection,
        tmp_path: Path) -> None:
    project = await projects.create_project(db, {"name": "killed"})
    _, key = await projects.issue_key(db, project["id"])
    env = {"GATEWAY_DATABASE_URL": database_url, "OPENAI_BASE_URL": fake_upstream.url,
           "GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_LEDGER_FLUSH_INTERVAL_S": "60",
           "GATEWAY_LEDGER_BATCH_SIZE": "1000"}
    served = await start_gateway_process(env)
    answered = 0
    try:
        async with aiohttp.ClientSession() as http:
            for n in range(30):
                body = chat_body(stream=n % 2 == 1)
                async with http.post(f"{served.url}/v1/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {key}"}) as resp:
                    await resp.read()
                    answered += resp.status == 200
    finally:
        served.process.send_signal(signal.SIGKILL)
        await served.process.wait()
    assert answered == 30
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 0  # all in memory
    again = await start_gateway_process({**env, "GATEWAY_LEDGER_FLUSH_INTERVAL_S": "0.05"})
    try:
        assert await _rows_at_least(db, answered, within_s=15) == answered
    finally:
        again.process.send_signal(signal.SIGTERM)
        await again.process.wait()
    assert await db.fetchval("SELECT count(DISTINCT request_id) FROM usage_records") == 30


async def test_a_flush_writes_what_was_queued_when_it_began(
        database_url: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    """Under traffic that never stops, a flush still ends, and the journal moves on to a new
    segment: rows queued while it writes wait for the next flush. A flush that took them too
    would never end here (every batch queues one more row) and its segment would only grow."""
    pool = await gwdb.create_pool(database_url, DatabaseSettings(pool_min_size=1))
    ledger: Ledger

    async def traffic(conn: asyncpg.Connection, inserted: object) -> None:
        ledger.record(row())  # one more call answered while each batch is written

    ledger = Ledger(pool, LedgerSettings(flush_interval_s=60, batch_size=2), hooks=[traffic],
                    spill_dir=tmp_path)
    for _ in range(5):
        ledger.record(row())
    assert await asyncio.wait_for(ledger.flush(), 10) == 5  # in batches of 2, 2 and 1
    assert ledger.pending == 3
    assert _segments(tmp_path) == 2 and len(_lines(tmp_path)) == 3  # and the zeroed spare
    assert await asyncio.wait_for(ledger.flush(), 10) == 3
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 8
    assert len(_lines(tmp_path)) == ledger.pending == 2  # the segment of the 3 rows is gone
    await ledger.close(deadline_s=5)
    await pool.close()


async def test_close_writes_the_rows_queued_during_its_flushes(
        database_url: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    """A ledger closed without its writer task flushes until nothing is queued (within the
    deadline), rows queued while it wrote included."""
    pool = await gwdb.create_pool(database_url, DatabaseSettings(pool_min_size=1))
    ledger: Ledger
    late = 3

    async def traffic(conn: asyncpg.Connection, inserted: object) -> None:
        nonlocal late
        if late:
            late -= 1
            ledger.record(row())

    ledger = Ledger(pool, LedgerSettings(flush_interval_s=60, batch_size=2), hooks=[traffic],
                    spill_dir=tmp_path)
    for _ in range(4):
        ledger.record(row())
    await ledger.close(deadline_s=10)
    await pool.close()
    assert ledger.pending == 0
    assert await db.fetchval("SELECT count(*) FROM usage_records") == 7
