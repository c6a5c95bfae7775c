"""The reference "bare aiohttp pass-through proxy" that the gateway's overhead is measured against.

It does what any minimal aiohttp reverse proxy must do and nothing more: one shared keep-alive
`aiohttp.ClientSession` (256 connections, the gateway's `max_connections`, and the same
timeouts), `POST /v1/chat/completions` forwarded with its body and the relevant headers, and
the upstream's status, content type and body sent back. Non-streaming bodies are read whole;
event streams are relayed chunk by chunk as they arrive. No authentication, validation,
pricing, metering or ledger: the difference to the gateway is the cost of those.

    python bench/bare_proxy.py --port 8081 --upstream http://127.0.0.1:8090/v1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

# Request headers worth passing on; hop-by-hop headers and Host are left to aiohttp.
FORWARD_HEADERS = ("Content-Type", "Accept", "Authorization", "OpenAI-Organization",
                   "OpenAI-Project", "User-Agent")
SESSION = web.AppKey("bare_proxy_session", aiohttp.ClientSession)
TARGET = web.AppKey("bare_proxy_target", str)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {name: request.headers[name] for name in FORWARD_HEADERS if name in request.headers}
    session = request.app[SESSION]
    target = request.app[TARGET] + request.path.removeprefix("/v1")
    async with session.post(target, data=body, headers=headers,
                            allow_redirects=False) as upstream:
        content_type = upstream.headers.get("Content-Type", "application/octet-stream")
        if not content_type.startswith("text/event-stream"):
            return web.Response(status=upstream.status, body=await upstream.read(),
                                headers={"Content-Type": content_type})
        response = web.StreamResponse(status=upstream.status,
                                      headers={"Content-Type": content_type,
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def build_app(upstream: str, max_connections: int = 256) -> web.Application:
    app = web.Application()
    app[TARGET] = upstream.rstrip("/")  # + the path after /v1

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        # The gateway's connector and timeouts (config/gateway.toml [providers.openai]).
        connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30,
                                         ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=600, sock_connect=5, sock_read=60)
        app[SESSION] = aiohttp.ClientSession(connector=connector, timeout=timeout)
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    for path in ("/v1/chat/completions", "/v1/responses", "/v1/embeddings"):
        app.router.add_post(path, chat_completions)
    return app


async def serve(host: str, port: int, upstream: str, max_connections: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    # Same server options as `gateway serve`: no access log, handler cancellation on.
    runner = web.AppRunner(build_app(upstream, max_connections), access_log=None,
                           handler_cancellation=True, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1] if runner.addresses else port
        print(f"bare proxy listening on http://{host}:{bound} -> {upstream}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="upstream base URL including /v1")
    parser.add_argument("--max-connections", type=int, default=256)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        print("bare_proxy: uvloop is not installed; using asyncio's loop", file=sys.stderr)
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.host, args.port, args.upstream, args.max_connections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
