"""The database as handlers reach it: one pooled connection whose every wait (acquire,
queries, release) ends within `database.query_timeout_s`; past it, or with PostgreSQL
unreachable, the error middleware answers 503 `database_unavailable`.

A block that writes what the key and credential caches hold (a revoked key, a project's
allow-lists or budget, its team, a stored provider key) says so (`writes_cached=True`): when
it ends without error, this process's caches catch up with the write (`dbcache.caught_up`)
before the handler answers, so whoever made the change sees it on their next request. Other
replicas hear it by NOTIFY, within a second."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from aiohttp import web

from gateway.db import bounded_connection
from gateway.dbcache import caught_up
from gateway.keys import CREDENTIALS, KEYSTORE, POOL, SETTINGS


@asynccontextmanager
async def connection(request: web.Request, *, writes_cached: bool = False
                     ) -> AsyncIterator[asyncpg.Connection]:
    """`async with connection(request) as conn:` a connection for this handler's queries."""
    app = request.app
    async with bounded_connection(app[POOL], app[SETTINGS].database.query_timeout_s) as conn:
        yield conn
    if writes_cached:
        await caught_up(app[POOL], (app[KEYSTORE].cache, app[CREDENTIALS].cache))
