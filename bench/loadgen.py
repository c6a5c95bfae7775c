"""Fallback load generator for bench/overhead.py, used only when `wrk` is not installed.

Closed-loop HTTP/1.1 keep-alive clients on raw asyncio streams (uvloop when available):
each of `--connections` connections sends one request, reads the whole response
(Content-Length or chunked), records the latency and sends the next, until `--seconds` pass.
It prints one line, `BENCH_RESULT {json}`, in the same shape as the wrk Lua script's.
It costs more CPU per request than wrk, which on a small machine it takes from the upstream
it shares a core with (direct-upstream numbers come out about a quarter lower): prefer wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    non200: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0


class ProtocolError(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; answer its status and whether the server keeps the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD or not head.startswith(b"HTTP/1."):
        raise ProtocolError(head[:80])
    lines = head.split(b"\r\n")
    status = int(lines[0][9:12])
    length: int | None = None
    chunked = False
    keep_alive = lines[0].startswith(b"HTTP/1.1")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            keep_alive = b"close" not in value.lower()
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the end
                    pass
                break
            await reader.readexactly(size + 2)
    elif length is not None:
        await reader.readexactly(length)
    else:  # body delimited by the connection's end
        await reader.read()
        keep_alive = False
    return status, keep_alive


async def client(host: str, port: int, request: bytes, deadline: float, timeout_s: float,
                 stats: Stats) -> None:
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    while time.perf_counter() < deadline:
        if writer is None:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), timeout_s)
            except (OSError, TimeoutError):
                stats.connect += 1
                await asyncio.sleep(0.01)
                continue
        assert reader is not None and writer is not None
        started = time.perf_counter()
        try:
            writer.write(request)
        except OSError:
            stats.write += 1
            writer.close()
            writer = None
            continue
        try:
            async with asyncio.timeout(timeout_s):
                status, keep_alive = await read_response(reader)
        except TimeoutError:
            stats.timeout += 1
            keep_alive, status = False, 0
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                ProtocolError):
            stats.read += 1
            keep_alive, status = False, 0
        if status:
            stats.latencies.append(time.perf_counter() - started)
            if status == 200:
                stats.ok += 1
            else:
                stats.non200 += 1
                stats.statuses[status] = stats.statuses.get(status, 0) + 1
        if not keep_alive:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def run(args: argparse.Namespace, body: bytes) -> dict[str, object]:
    headers = [f"POST {args.path} HTTP/1.1", f"Host: {args.host}:{args.port}",
               f"Content-Length: {len(body)}", *args.header]
    request = ("\r\n".join(headers) + "\r\n\r\n").encode() + body
    stats = Stats()
    started = time.perf_counter()
    deadline = started + args.seconds
    await asyncio.gather(*(client(args.host, args.port, request, deadline, args.timeout, stats)
                           for _ in range(args.connections)))
    elapsed = time.perf_counter() - started
    lat = sorted(stats.latencies)
    return {
        "requests": len(lat), "duration_us": round(elapsed * 1e6), "ok": stats.ok,
        "non200": stats.non200,
        "statuses": "".join(f"{code}:{n}," for code, n in sorted(stats.statuses.items())),
        "connect": stats.connect, "read": stats.read, "write": stats.write, "status": 0,
        "timeout": stats.timeout,
        "p50_us": percentile(lat, 50) * 1e6, "p90_us": percentile(lat, 90) * 1e6,
        "p99_us": percentile(lat, 99) * 1e6,
        "mean_us": sum(lat) / len(lat) * 1e6 if lat else 0.0,
        "max_us": lat[-1] * 1e6 if lat else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    args = parser.parse_args(argv)
    with open(args.body_file, "rb") as f:
        body = f.read()
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(run(args, body))
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
