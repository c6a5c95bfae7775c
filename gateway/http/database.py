"""The database as handlers reach it: one pooled connection whose every wait (acquire,
queries, release) ends within `database.query_timeout_s`; past it, or with PostgreSQL
unreachable, the error middleware answers 503 `database_unavailable`."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import asyncpg
from aiohttp import web

from gateway.db import bounded_connection
from gateway.keys import POOL, SETTINGS


def connection(request: web.Request) -> AbstractAsyncContextManager[asyncpg.Connection]:
    """`async with connection(request) as conn:` a connection for this handler's queries."""
    return bounded_connection(request.app[POOL], request.app[SETTINGS].database.query_timeout_s)
