"""Redis and Upstash clients set up for the hot path, each behind one `ScriptRunner`.

Shared by the rate limiters and the idempotency claim stores. Time limits are enforced by
the caller (`errors.store_call`); the clients only get socket timeouts and no slow retries,
so a dead store costs one `timeout_s`, not seconds of backoff.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import httpx
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from upstash_redis.asyncio import Redis as UpstashRedis
from upstash_redis.errors import UpstashError

from gateway.ratelimit.errors import BackendAuthError, BackendUnavailable, unreachable_too
from gateway.ratelimit.lua import LuaScript

unreachable_too(
    redis.exceptions.ConnectionError,  # includes redis AuthenticationError
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,  # a replica mid-failover
    httpx.TransportError,
)

Arg = str | int | float


class ScriptRunner(Protocol):
    """Runs a `LuaScript` atomically on one Redis-compatible store."""

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any: ...

    async def close(self) -> None: ...


class RedisScripts:
    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client

    @classmethod
    def from_url(cls, url: str, timeout_s: float, max_connections: int = 64) -> RedisScripts:
        """A pooled client; connections open lazily, so this never blocks."""
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_s,
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            # One immediate retry replaces a pooled connection the server has closed.
            retry=Retry(NoBackoff(), 1))
        return cls(redis.asyncio.Redis(connection_pool=pool))

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """EVALSHA; after a NOSCRIPT (a restarted or flushed server), SCRIPT LOAD and again."""
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await self.client.script_load(script.text)
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)

    async def close(self) -> None:
        await self.client.aclose(close_connection_pool=True)


class UpstashScripts:
    def __init__(self, client: UpstashRedis) -> None:
        self.client = client

    @classmethod
    def from_url(cls, url: str, token: str) -> UpstashScripts:
        # The client's default retry sleeps 3 s first: far too slow for the hot path.
        return cls(UpstashRedis(url, token, rest_retries=0, allow_telemetry=False))

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """EVALSHA; after a NOSCRIPT, EVAL (which also caches the script on the server)."""
        str_args = [str(a) for a in args]
        try:
            try:
                return await self.client.evalsha(script.sha, list(keys), str_args)
            except UpstashError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                return await self.client.eval(script.text, list(keys), str_args)
        except UpstashError as exc:
            message = str(exc)
            if message in ("Unauthorized", "Forbidden") or message.startswith(
                    ("WRONGPASS", "NOAUTH")):
                raise BackendAuthError(
                    "upstash", f"the REST API refused the token ({message}); "
                    "check UPSTASH_REDIS_REST_TOKEN") from exc
            raise
        except json.JSONDecodeError as exc:  # e.g. a proxy's error page
            raise BackendUnavailable("upstash", "the REST API answered with non-JSON") from exc

    async def close(self) -> None:
        await self.client.close()
