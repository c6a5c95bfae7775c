"""Project keys, cached in-process (`DbCache`) and invalidated across replicas by NOTIFY.

Every change to a key, project or team notifies the `gateway_auth` channel from a trigger.
A cached key is trusted for `ttl` seconds while this process listens, one second while it
does not; a revoked key stops working on every replica within a second either way. While the
database cannot be read, known keys keep working (for `stale_serve_s` at most) and a key
never seen answers 503 `auth_unavailable` at once: no call waits on the database.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import asyncpg

from gateway import projects
from gateway.dbcache import DbCache, Freshness
from gateway.domain import Principal, Project
from gateway.errors import ServiceUnavailable, Unauthorized

CHANNEL = "gateway_auth"
MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class _Key:
    key_id: int
    key_hash: bytes
    revoked: bool
    project: Project
    principal: Principal  # what authenticating with it answers: made once, shared (frozen)


async def _read(conn: asyncpg.Connection, prefix: str) -> _Key | None:
    found = await projects.find_key(conn, prefix)
    if found is None:
        return None
    key_id, key_hash, revoked, project = found
    return _Key(key_id, key_hash, revoked, project, Principal(key_id, prefix, project))


def _unavailable(_prefix: str) -> ServiceUnavailable:
    return ServiceUnavailable("API keys cannot be checked now: the database does not answer; "
                              "retry shortly", code="auth_unavailable",
                              headers={"Retry-After": "1"})


class KeyStore:
    def __init__(self, pool: asyncpg.Pool, dsn: str, *, ttl_s: float,
                 connect_timeout_s: float = 5.0, refresh_timeout_s: float = 0.5,
                 stale_serve_s: float = 300.0) -> None:
        self._pool = pool
        self._dsn = dsn
        self._connect_timeout = connect_timeout_s
        self._cache: DbCache[str, _Key] = DbCache(
            _read, name="keystore", unavailable=_unavailable, max_entries=MAX_ENTRIES,
            freshness=Freshness(ttl_s, refresh_timeout_s, stale_serve_s))

    @property
    def listening(self) -> bool:
        return self._cache.listening

    @property
    def cache(self) -> DbCache[str, _Key]:
        """For `dbcache.caught_up`."""
        return self._cache

    async def start(self) -> None:
        self._cache.start(self._pool, self._dsn, CHANNEL, on_notify=self.invalidate,
                          connect_timeout_s=self._connect_timeout)

    async def close(self) -> None:
        await self._cache.close()

    async def authenticate(self, key: str) -> Principal:
        prefix = projects.split_key(key)
        if prefix is None:
            raise Unauthorized("malformed API key: expected gw_<prefix>_<secret>")
        entry = await self._cache.get(prefix)
        if entry is None or not hmac.compare_digest(projects.hash_key(key), entry.key_hash):
            raise Unauthorized("invalid API key")
        if entry.revoked:
            raise Unauthorized("this API key has been revoked", code="revoked_api_key")
        return entry.principal

    def invalidate(self, payload: str) -> None:
        """`key:<prefix>` or `project:<id>` drop those entries; anything else (a team, a
        truncate) has every entry read again before it is trusted."""
        kind, _, ident = payload.partition(":")
        if kind == "key":
            self._cache.drop(ident)
        elif kind == "project" and ident.isdigit():
            project_id = int(ident)
            self._cache.drop_where(lambda entry: entry.project.id == project_id)
        else:
            self._cache.expire_all()
