"""The imported reports, each integration's sync state, and the ledger's side of a
reconciliation, in PostgreSQL (migration 0013)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import asyncpg
import orjson

from gateway.sync.records import CostRow, Integration, UsageRow, account_project, day_start

_USAGE_COLUMNS = ("day", "source", "model", "provider_project", "input_tokens",
                  "cache_read_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens",
                  "output_tokens", "requests", "details")


async def replace_days(conn: asyncpg.Connection, integration: Integration, start: date,
                       end: date, usage: list[UsageRow], costs: list[CostRow]) -> int:
    """Replace what is stored for the days start..end with these rows and move the cursor
    to `end`, in one transaction: a day imported twice is stored once, a revised day
    replaces the old. Answers the number of rows stored."""
    account, provider = integration.account, integration.provider
    async with conn.transaction():
        for table in ("provider_usage", "provider_costs"):
            await conn.execute(f"DELETE FROM {table} WHERE account = $1 AND provider = $2 "
                               "AND day BETWEEN $3 AND $4", account, provider, start, end)
        await conn.executemany(
            f"""INSERT INTO provider_usage (account, provider, {', '.join(_USAGE_COLUMNS)})
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::text::jsonb)""",
            [(account, provider, u.day, u.source, u.model, u.provider_project, u.input_tokens,
              u.cache_read_tokens, u.cache_write_5m_tokens, u.cache_write_1h_tokens,
              u.output_tokens, u.requests, orjson.dumps(u.details).decode())
             for u in usage if start <= u.day <= end])
        await conn.executemany(
            """INSERT INTO provider_costs (account, provider, day, line_item, provider_project,
                   model, token_type, amount_usd) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            [(account, provider, c.day, c.line_item, c.provider_project, c.model, c.token_type,
              c.amount_usd) for c in costs if start <= c.day <= end])
        stored = sum(start <= u.day <= end for u in usage) + sum(
            start <= c.day <= end for c in costs)
        await conn.execute(
            "UPDATE sync_state SET cursor = $3, records = records + $4 "
            "WHERE account = $1 AND provider = $2", account, provider, end, stored)
    return stored


# -- state -----------------------------------------------------------------------------------

async def load_state(conn: asyncpg.Connection, account: str,
                     provider: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM sync_state WHERE account = $1 AND provider = $2",
                               account, provider)


async def begin_run(conn: asyncpg.Connection, integration: Integration, start: date,
                    end: date, cursor: date | None) -> None:
    await conn.execute(
        """INSERT INTO sync_state (account, provider, state, run_start, run_end, cursor,
               records, last_started_at)
           VALUES ($1, $2, 'running', $3, $4, $5, 0, now())
           ON CONFLICT (account, provider) DO UPDATE SET state = 'running',
               run_start = EXCLUDED.run_start, run_end = EXCLUDED.run_end,
               cursor = EXCLUDED.cursor, records = 0, last_started_at = now()""",
        integration.account, integration.provider, start, end, cursor)


async def finish_run(conn: asyncpg.Connection, integration: Integration,
                     error: str | None) -> None:
    if error is None:
        await conn.execute(
            """UPDATE sync_state SET state = 'ok', last_success_at = now()
               WHERE account = $1 AND provider = $2""",
            integration.account, integration.provider)
    else:
        await conn.execute(
            """UPDATE sync_state SET state = 'error', last_error = $3, last_error_at = now()
               WHERE account = $1 AND provider = $2""",
            integration.account, integration.provider, error)


async def all_states(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM sync_state ORDER BY provider, account")
    return [dict(r) for r in rows]


# -- reports and ledger ----------------------------------------------------------------------

async def provider_usage(conn: asyncpg.Connection, account: str, provider: str, start: date,
                         end: date) -> list[asyncpg.Record]:
    return list(await conn.fetch(
        """SELECT day, model, provider_project, sum(input_tokens)::bigint AS input,
                  sum(cache_read_tokens)::bigint AS cache_read,
                  sum(cache_write_5m_tokens + cache_write_1h_tokens)::bigint AS cache_write,
                  sum(output_tokens)::bigint AS output, sum(requests)::bigint AS requests
           FROM provider_usage WHERE account = $1 AND provider = $2 AND day BETWEEN $3 AND $4
           GROUP BY day, model, provider_project""", account, provider, start, end))


async def provider_costs(conn: asyncpg.Connection, account: str, provider: str, start: date,
                         end: date) -> list[asyncpg.Record]:
    return list(await conn.fetch(
        """SELECT day, model, provider_project, token_type, sum(amount_usd) AS amount
           FROM provider_costs WHERE account = $1 AND provider = $2 AND day BETWEEN $3 AND $4
           GROUP BY day, model, provider_project, token_type""", account, provider, start, end))


# Rows the proxy recorded that this account was billed for: the gateway's own credentials
# for the gateway's account, a project's own ('project:NAME') for that project's account.
_LEDGER = """
    SELECT (r.started_at AT TIME ZONE 'UTC')::date AS day, r.model, p.name AS project,
           count(*) FILTER (WHERE r.status < 400)::bigint AS requests,
           sum(r.input_tokens - least(r.cached_input_tokens, r.input_tokens)
               - least(r.cache_write_tokens,
                       r.input_tokens - least(r.cached_input_tokens, r.input_tokens)))::bigint
               AS input,
           sum(least(r.cached_input_tokens, r.input_tokens))::bigint AS cache_read,
           sum(least(r.cache_write_tokens,
                     r.input_tokens - least(r.cached_input_tokens, r.input_tokens)))::bigint
               AS cache_write,
           sum(r.output_tokens)::bigint AS output, sum(r.cost_usd) AS cost
    FROM usage_records r LEFT JOIN projects p ON p.id = r.project_id
    WHERE r.started_at >= $1 AND r.started_at < $2 AND r.provider = $3 AND r.origin = 'proxy'
      AND CASE WHEN $4::bigint IS NULL
               THEN r.credential IS NULL OR r.credential NOT LIKE 'project:%'
               ELSE r.project_id = $4 AND r.credential LIKE 'project:%' END
    GROUP BY 1, 2, 3"""


async def ledger_usage(conn: asyncpg.Connection, account: str, provider: str, start: date,
                       end: date) -> list[asyncpg.Record]:
    return list(await conn.fetch(_LEDGER, day_start(start), day_start(end + timedelta(days=1)),
                                 provider, account_project(account)))


async def accounts(conn: asyncpg.Connection, provider: str | None) -> list[tuple[str, str]]:
    """The (account, provider) pairs that have anything imported."""
    rows = await conn.fetch(
        """SELECT DISTINCT account, provider FROM sync_state
           WHERE $1::text IS NULL OR provider = $1 ORDER BY provider, account""", provider)
    return [(r["account"], r["provider"]) for r in rows]
