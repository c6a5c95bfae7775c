"""The latest raw ledger rows, filtered and paged by keyset: the dashboard's requests page.

Pages walk `(started_at, request_id)` downwards, so each page is one index range read
(`usage_records_time_idx`, or `usage_records_project_time_idx` with a project), whatever
the ledger's size; no OFFSET, no count of the whole table.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from gateway.errors import BadRequest

PAGE_SIZE = 50
_COLUMNS = """request_id, project_id, api_key_id, provider, model, requested_model, endpoint,
    status, streamed, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens,
    usage_source, cost_usd, priced_by_fallback, price_model, overhead_ms, upstream_ms,
    error_code, credential, attempts, metadata, started_at, finished_at"""
_SUMMARY = """request_id, project_id, provider, model, endpoint, status, input_tokens,
    output_tokens, cost_usd, overhead_ms, upstream_ms, started_at"""
STATUSES = ("ok", "error")


@dataclass(frozen=True, slots=True)
class RowFilter:
    """Which rows a page shows; every field optional (None: any)."""

    project_id: int | None = None
    provider: str | None = None
    model: str | None = None
    status: str | None = None  # "ok" (< 400), "error" (>= 400) or one status code
    since: datetime | None = None
    until: datetime | None = None

    def conditions(self, args: list[Any]) -> list[str]:
        parts = []
        for column in ("project_id", "provider", "model"):
            value = getattr(self, column)
            if value is not None:
                args.append(value)
                parts.append(f"{column} = ${len(args)}")
        if self.status == "ok":
            parts.append("status < 400")
        elif self.status == "error":
            parts.append("status >= 400")
        elif self.status is not None:
            args.append(int(self.status))
            parts.append(f"status = ${len(args)}")
        if self.since is not None:
            args.append(self.since)
            parts.append(f"started_at >= ${len(args)}")
        if self.until is not None:
            args.append(self.until)
            parts.append(f"started_at < ${len(args)}")
        return parts


def encode_cursor(row: Any) -> str:
    """The keyset position after `row`, opaque to the page."""
    text = f"{row['started_at'].isoformat()}|{row['request_id']}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, request_id = text.split("|", 1)
        return datetime.fromisoformat(moment), uuid.UUID(request_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("before is not a cursor this page gave",
                         details={"field": "before"}) from None


async def latest(conn: asyncpg.Connection, filters: RowFilter, before: str | None = None,
                 limit: int = PAGE_SIZE) -> tuple[list[Any], str | None]:
    """Up to `limit` rows, newest first, older than the cursor `before`; and the next cursor
    (None on the last page)."""
    args: list[Any] = []
    parts = filters.conditions(args)
    if before is not None:
        moment, request_id = decode_cursor(before)
        args.extend([moment, request_id])
        parts.append(f"(started_at, request_id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    where = f"WHERE {' AND '.join(parts)}" if parts else ""
    rows = list(await conn.fetch(
        f"SELECT {_SUMMARY} FROM usage_records {where} "
        f"ORDER BY started_at DESC, request_id DESC LIMIT ${len(args)}", *args))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more else None


async def one(conn: asyncpg.Connection, request_id: uuid.UUID,
              project_id: int | None = None) -> Any:
    """One row by request id (None when missing or, given `project_id`, another project's)."""
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM usage_records WHERE request_id = $1 "
        "AND ($2::bigint IS NULL OR project_id = $2)", request_id, project_id)
