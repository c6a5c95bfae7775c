"""Stream timing: what the gateway adds to a stream's first byte and to the gap between its
chunks, against a bare aiohttp proxy, both measured against the upstream hit directly.

The fake upstream streams `--chunks` content chunks `--chunk-delay-ms` apart. One client
reads each stream at one connection, time-stamping every chunk as it arrives, `--requests`
streams per target, targets alternating. Added time to first byte = target TTFB - upstream
TTFB (medians); added gap = the target's median gap between chunks - the upstream's. A proxy
that buffered would show gaps far from the upstream's and a late first byte.

    .venv/bin/python bench/stream_timing.py [--requests 12] [--chunks 64] [--chunk-delay-ms 20]

Target (issue 15): the gateway's added TTFB and added gap each at most the bare proxy's
+ 0.2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import (  # a sibling script, not a package
    BENCH,
    HOST,
    MESSAGES,
    Server,
    create_database,
    create_key,
    drop_database,
    free_ports,
    start,
    wait_ready,
    with_database,
)

MAX_ADDED_OVER_BARE_MS = 0.2


async def one_stream(http: aiohttp.ClientSession, url: str, key: str, body: bytes
                     ) -> tuple[float, list[float], int]:
    """(time to first byte s, gaps between chunks s, chunks) of one streamed call."""
    started = time.perf_counter()
    stamps: list[float] = []
    async with http.post(url, data=body, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url} answered {resp.status}: {(await resp.read())[:200]!r}")
        async for _ in resp.content.iter_any():
            stamps.append(time.perf_counter())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return stamps[0] - started, gaps, len(stamps)


async def measure(targets: dict[str, str], key: str, body: bytes, requests: int
                  ) -> dict[str, dict[str, float]]:
    ttfb: dict[str, list[float]] = {t: [] for t in targets}
    gaps: dict[str, list[float]] = {t: [] for t in targets}
    chunks: dict[str, list[int]] = {t: [] for t in targets}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        for url in targets.values():  # warm each connection
            await one_stream(http, url, key, body)
        for _ in range(requests):
            for name, url in targets.items():
                first, between, count = await one_stream(http, url, key, body)
                ttfb[name].append(first)
                gaps[name].extend(between)
                chunks[name].append(count)
    return {name: {"ttfb_ms": statistics.median(ttfb[name]) * 1000,
                   "gap_ms": statistics.median(gaps[name]) * 1000,
                   "gap_p99_ms": sorted(gaps[name])[int(len(gaps[name]) * 0.99)] * 1000,
                   "chunks": statistics.median(chunks[name])} for name in targets}


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="gateway-stream-bench-"))
    db_name = f"gateway_stream_bench_{os.getpid()}"
    dsn = with_database(args.database_url, db_name)
    admin_token = secrets.token_urlsafe(24)
    servers: list[Server] = []
    create_database(args.database_url, db_name)
    try:
        p_up, p_bare, p_gw = free_ports(3)
        py = sys.executable
        upstream = start("fake upstream", [
            py, "-m", "gateway.testing.fake_upstream", "--host", HOST, "--port", str(p_up),
            "--chunk-delay-ms", str(args.chunk_delay_ms), "--reply-tokens", str(args.chunks)],
            p_up, workdir, None)
        servers.append(upstream)
        wait_ready(upstream, "/_fake/health", 30)
        bare = start("bare proxy", [py, str(BENCH / "bare_proxy.py"), "--host", HOST,
                                    "--port", str(p_bare), "--upstream", f"{upstream.url}/v1"],
                     p_bare, workdir, None)
        servers.append(bare)
        gateway = start("gateway", [py, "-m", "gateway", "serve", "--host", HOST, "--port",
                                    str(p_gw)], p_gw, workdir, None,
                        {**os.environ, "GATEWAY_DATABASE_URL": dsn,
                         "OPENAI_BASE_URL": f"{upstream.url}/v1",
                         "GATEWAY_LOGGING_LEVEL": "warning", "GATEWAY_ADMIN_TOKEN": admin_token,
                         "GATEWAY_SERVER_WORKERS": "1"})
        servers.append(gateway)
        wait_ready(bare, None, 30)
        wait_ready(gateway, "/api/health/ready", 60)
        key = create_key(gateway.url, admin_token, {"name": f"stream-{secrets.token_hex(4)}",
                                                    "plan": "enterprise"})
        body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
                           "max_tokens": args.chunks,
                           "stream_options": {"include_usage": True}}).encode()
        path = "/v1/chat/completions"
        targets = {"upstream": upstream.url + path, "bare": bare.url + path,
                   "gateway": gateway.url + path}
        result = asyncio.run(measure(targets, key, body, args.requests))
    finally:
        for server in reversed(servers):
            server.stop(25)
        drop_database(args.database_url, db_name)
    print(f"\nStream timing: {args.requests} streams per target of {args.chunks} chunks "
          f"{args.chunk_delay_ms:g} ms apart, one connection")
    print(f"{'target':<10} {'TTFB ms':>9} {'gap ms':>9} {'gap p99 ms':>11} {'chunks':>7}")
    for name, r in result.items():
        print(f"{name:<10} {r['ttfb_ms']:>9.3f} {r['gap_ms']:>9.3f} {r['gap_p99_ms']:>11.3f} "
              f"{r['chunks']:>7.0f}")
    up, bare_r, gw = result["upstream"], result["bare"], result["gateway"]
    checks = []
    for what, key_ in (("time to first byte", "ttfb_ms"), ("gap between chunks", "gap_ms")):
        bare_added = bare_r[key_] - up[key_]
        gw_added = gw[key_] - up[key_]
        ok = gw_added <= bare_added + MAX_ADDED_OVER_BARE_MS
        checks.append(ok)
        print(f"  [{'PASS' if ok else 'MISS'}] added {what}: gateway {gw_added:+.3f} ms, bare "
              f"proxy {bare_added:+.3f} ms (target: gateway <= bare + "
              f"{MAX_ADDED_OVER_BARE_MS} ms)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--chunk-delay-ms", type=float, default=20.0)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
