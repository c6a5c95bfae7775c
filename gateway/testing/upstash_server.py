"""A small Upstash-REST-compatible server over a real Redis, for tests and demos.

It speaks what `upstash_redis` sends (see its `http.py`):
- `POST /` with a JSON array command (`["EVALSHA", sha, 1, "key", "arg"]`), answered
  `{"result": ...}`, or `{"error": "NOSCRIPT ..."}` (status 400) when Redis refuses it;
- `POST /pipeline` and `POST /multi-exec` with an array of commands, answered with an array
  of those objects (multi-exec inside MULTI/EXEC);
- `Authorization: Bearer <token>`, else 401 `{"error": "Unauthorized"}`;
- `Upstash-Encoding: base64`: every string in a result is base64, except a bare "OK" status.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import signal
from collections.abc import AsyncIterator
from typing import Any

import orjson
import redis.asyncio
import redis.exceptions
from aiohttp import web

REDIS = web.AppKey("redis", redis.asyncio.Redis)
TOKEN = web.AppKey("token", str)

Json = Any


def _encode(value: Any, base64_strings: bool) -> Json:
    if isinstance(value, bytes):
        if not base64_strings:
            return value.decode("utf-8", errors="replace")
        # The client turns a bare "OK" back into "OK" and base64-decodes every other string.
        return "OK" if value == b"OK" else base64.b64encode(value).decode()
    if isinstance(value, list | tuple):
        return [_encode(v, base64_strings) for v in value]
    if isinstance(value, redis.exceptions.ResponseError):
        return {"error": _error_text(value)}
    return value  # int, None


def _error_text(exc: redis.exceptions.RedisError) -> str:
    # redis-py strips the error code ("NOSCRIPT", "ERR") off the message; put it back.
    return f"{exc.status_code} {exc}" if exc.status_code else str(exc)


def _parse_command(item: Json) -> list[str | int | float] | None:
    if not isinstance(item, list) or not item:
        return None
    if not all(isinstance(a, str | int | float) and not isinstance(a, bool) for a in item):
        return None
    return item


def _reply(payload: Json, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload),
                        content_type="application/json")


def _authorized(request: web.Request) -> bool:
    expected = f"Bearer {request.app[TOKEN]}"
    return hmac.compare_digest(request.headers.get("Authorization", "").encode(),
                               expected.encode())


async def _body(request: web.Request) -> Json:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None


async def single(request: web.Request) -> web.Response:
    """`POST /`: one command."""
    if not _authorized(request):
        return _reply({"error": "Unauthorized"}, 401)
    command = _parse_command(await _body(request))
    if command is None:
        return _reply({"error": "ERR failed to parse command"}, 400)
    base64_strings = request.headers.get("Upstash-Encoding") == "base64"
    try:
        result = await request.app[REDIS].execute_command(*command)
    except redis.exceptions.ResponseError as exc:
        return _reply({"error": _error_text(exc)}, 400)
    return _reply({"result": _encode(result, base64_strings)})


async def batch(request: web.Request) -> web.Response:
    """`POST /pipeline` and `POST /multi-exec`: many commands, one answer each."""
    if not _authorized(request):
        return _reply({"error": "Unauthorized"}, 401)
    body = await _body(request)
    commands = [_parse_command(c) for c in body] if isinstance(body, list) and body else None
    if commands is None or any(c is None for c in commands):
        return _reply({"error": "ERR failed to parse pipeline request"}, 400)
    base64_strings = request.headers.get("Upstash-Encoding") == "base64"
    transaction = request.path == "/multi-exec"
    async with request.app[REDIS].pipeline(transaction=transaction) as pipe:
        for command in commands:
            assert command is not None
            pipe.execute_command(*command)
        try:
            results = await pipe.execute(raise_on_error=False)
        except redis.exceptions.ResponseError as exc:  # e.g. EXECABORT
            return _reply({"error": _error_text(exc)}, 400)
    answers = [r if isinstance(r, dict) else {"result": r}
               for r in _encode(results, base64_strings)]
    return _reply(answers)


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[REDIS].aclose()


def build_app(redis_url: str, token: str) -> web.Application:
    client = redis.asyncio.Redis.from_url(redis_url)
    # Relay Redis's own replies: no redis-py conversions (SET -> True and the like).
    client.response_callbacks.clear()
    app = web.Application()
    app[REDIS] = client
    app[TOKEN] = token
    app.cleanup_ctx.append(_redis_ctx)
    app.router.add_post("/", single)
    app.router.add_post("/pipeline", batch)
    app.router.add_post("/multi-exec", batch)
    return app


async def start_upstash_server(redis_url: str, token: str, host: str = "127.0.0.1",
                               port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve in the running loop; returns the runner and the base URL (no trailing slash)."""
    runner = web.AppRunner(build_app(redis_url, token), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, f"http://{host}:{runner.addresses[0][1]}"


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    runner, url = await start_upstash_server(args.redis_url, args.token, args.host, args.port)
    print(f"upstash server listening on {url}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Upstash REST API over a local Redis.")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--token", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
