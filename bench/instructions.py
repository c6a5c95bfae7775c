"""Instructions the gateway process executes a request, counted by callgrind: a count, not a time.

Timings on this shared two-core machine move by tens of microseconds a request from one
round to the next (`cpu_ab.py`), more than most changes to the hot path are worth. Valgrind's
callgrind counts the instructions a process executes instead, which hardly depends on what
else the machine is doing. This script runs one gateway under callgrind (instrumentation off
until the measured requests), the fake upstream and the client outside it, and sends the
bench's own request (`overhead.request_body`) with one project key per profile:

    plain     overhead.py's "gateway" project: no budget, no rate limits
    limits    overhead.py's "gateway + limits" project: a budget and every window (Redis)
    budget    only the monthly budget
    requests  only the requests-per-minute and -per-day windows
    tokens    only the tokens-per-minute window

    .venv/bin/python bench/instructions.py [--requests 300] [--rounds 3]
        [--profiles plain,limits] [--alt PATH] [--bare] [--top 20]

Rounds alternate the profiles; each round's count is the instructions executed between
switching instrumentation on before the first of its requests and dumping after the last,
divided by the requests. `--alt PATH` serves a second gateway from another checkout (a git
worktree, say) under the same conditions, its profiles shown with an `_alt` suffix, and the
differences paired round by round. `--bare` counts `bare_proxy.py` the same way, and the
ratio of the two counts is the one behind overhead.py's gateway / bare target. `--top N`
lists the C functions whose own instructions differ most between the last round of the
first two profiles (`callgrind_annotate`).

A request is slower under valgrind (about 50 times), so what runs on a timer (the ledger's
flush, lease renewals, the budget sync) falls on fewer requests than at full speed. The
ledger flushes every `--flush-interval` s here (1 s, for batches nearer the size they have at
full speed), and each round waits 1.5 times that after its last answer before it is dumped,
so that a round's count holds the writing of its own rows and no other round's.
The same holds for every profile and both checkouts: compare counts, not absolute values.
What runs on a timer still moves a round by a few thousand instructions a request (a lease
taken from Redis, a budget sync), so quote the median of five rounds or more; and two
gateway processes of the same code differ by up to about 7,000 (their hash seeds and
memory layout), so a profile's difference from `plain` in the same process is the better
measure of a change than a count across checkouts. A count is not a time either: an
instruction of C and one of the interpreter's loop count the same, and cache misses count
nothing. Needs valgrind (`apt-get install -y valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.client
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import overhead as o

PROFILES: dict[str, dict[str, Any]] = {
    "plain": {"plan": "enterprise"},
    "limits": o.LIMITED_PROJECT,
    "budget": {"plan": "enterprise", "monthly_budget_usd": 1_000_000},
    "requests": {"plan": "enterprise", "requests_per_minute": 10**9,
                 "requests_per_day": 10**9},
    "tokens": {"plan": "enterprise", "tokens_per_minute": 10**9},
}
WARM_REQUESTS = 300  # leases taken, caches filled, code paths warm


class Callgrind:
    """A gateway under callgrind, instrumentation switched on and dumped from outside."""

    def __init__(self, server: o.Server, out: Path, settle_s: float) -> None:
        self.server, self.out, self.settle_s = server, out, settle_s
        self._dumps = 0

    def _control(self, *args: str) -> None:
        done = subprocess.run(["callgrind_control", *args, str(self.server.proc.pid)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise o.BenchError(f"callgrind_control {' '.join(args)} failed: "
                               f"{done.stdout}{done.stderr}")

    def count(self, send: Callable[[], None], tag: str) -> tuple[int, Path]:
        """Instructions executed while `send()` runs, and the dump that holds them."""
        self._control("--instr=on")
        send()
        time.sleep(self.settle_s)  # the ledger writes the round's rows within the round
        self._control(f"--dump={tag}")
        self._control("--instr=off")
        self._dumps += 1
        dump = self.out.with_name(f"{self.out.name}.{self._dumps}")
        text = dump.read_text(errors="replace")
        if f"Trigger: dump {tag}" not in text:
            raise o.BenchError(f"{dump} is not the dump of {tag}")
        return _totals(text), dump


def _totals(dump: str) -> int:
    """A callgrind dump's instruction count (its `totals:` line)."""
    found = re.search(r"^totals: (\d+)", dump, re.M)
    if found is None:
        raise o.BenchError("a callgrind dump without a totals line")
    return int(found[1])


class Client:
    """One keep-alive connection; every answer must be 200."""

    def __init__(self, port: int, body: bytes) -> None:
        self._conn = http.client.HTTPConnection(o.HOST, port, timeout=120)
        self._body = body

    def send(self, key: str, n: int) -> None:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for _ in range(n):  # bounded
            self._conn.request("POST", "/v1/chat/completions", self._body, headers)
            response = self._conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise o.BenchError(f"answered {response.status}: {data[:300]!r}")

    def close(self) -> None:
        self._conn.close()


def under_callgrind(name: str, cmd: list[str], port: int, work: Path, env: dict[str, str],
                    settle_s: float, cwd: Path = o.REPO) -> Callgrind:
    out = work / f"{name}.callgrind"
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no",
           f"--callgrind-out-file={out}", *cmd]
    return Callgrind(o.start(name, cmd, port, work, None, env, cwd=cwd), out, settle_s)


def top_differences(first: Path, second: Path, top: int) -> list[tuple[int, str]]:
    """The C functions whose own instructions differ most between two dumps."""
    def own(dump: Path) -> dict[str, int]:
        text = dump.read_text(errors="replace")
        fixed = dump.with_suffix(".fixed")  # a dump's summary line holds garbage after a zero
        fixed.write_text(re.sub(r"^summary: .*$", f"summary: {_totals(text)}", text,
                                flags=re.M))
        text = subprocess.run(["callgrind_annotate", "--threshold=100", str(fixed)],
                              capture_output=True, text=True, check=True).stdout
        counts: dict[str, int] = {}
        for line in text.splitlines():
            found = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.+?)(?: \[.*\])?$", line)
            if found and "PROGRAM TOTALS" not in line:
                name = found[2].rsplit("/", 1)[-1]
                counts[name] = counts.get(name, 0) + int(found[1].replace(",", ""))
        return counts
    a, b = own(first), own(second)
    return sorted(((b.get(k, 0) - a.get(k, 0), k) for k in a.keys() | b.keys()),
                  key=lambda d: -abs(d[0]))[:top]


def run(args: argparse.Namespace) -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise o.BenchError("valgrind is not installed (apt-get install -y valgrind)")
    profiles = args.profiles.split(",")
    unknown = set(profiles) - PROFILES.keys()
    if unknown:
        raise o.BenchError(f"--profiles: choose from {', '.join(PROFILES)}; got {args.profiles}")
    repos = {"": o.REPO} | ({"_alt": Path(args.alt).resolve()} if args.alt else {})
    db = f"gateway_instructions_{os.getpid()}"
    dsn = o.with_database(args.database_url, db)
    o.create_database(args.database_url, db)
    work = Path(tempfile.mkdtemp(prefix="gateway-instructions-"))
    servers: list[o.Server] = []
    clients: list[Client] = []
    try:
        ports = o.free_ports(2 + len(repos))
        upstream = o.start("fake upstream", [sys.executable, "-m", "gateway.testing.fake_upstream",
                                             "--host", o.HOST, "--port", str(ports[0])],
                           ports[0], work, None)
        servers.append(upstream)
        o.wait_ready(upstream, "/_fake/health", 30)
        env = {**os.environ, "GATEWAY_DATABASE_URL": dsn,
               "OPENAI_BASE_URL": f"{upstream.url}/v1", "GATEWAY_LOGGING_LEVEL": "warning",
               "GATEWAY_ADMIN_TOKEN": args.admin_token, "GATEWAY_SERVER_WORKERS": "1",
               "GATEWAY_RATELIMIT_BACKEND": "redis", "GATEWAY_REDIS_URL": args.redis_url,
               "GATEWAY_LEDGER_FLUSH_INTERVAL_S": str(args.flush_interval)}
        gateways: dict[str, Callgrind] = {}
        for (suffix, repo), port in zip(repos.items(), ports[1:-1], strict=True):
            migrated = {"GATEWAY_DATABASE_MIGRATE_ON_START": "false"} if gateways else {}
            gateways[suffix] = under_callgrind(
                f"gateway{suffix}", [sys.executable, "-m", "gateway", "serve", "--host", o.HOST,
                                     "--port", str(port)],
                port, work, {**env, **migrated}, 1.5 * args.flush_interval, repo)
            servers.append(gateways[suffix].server)
            o.wait_ready(gateways[suffix].server, "/api/health/ready", 300)
            if not migrated:  # ids of their own: Redis counters outlive the database
                asyncio.run(o._admin_sql(dsn, "ALTER TABLE projects ALTER COLUMN id RESTART "
                                              f"WITH {secrets.randbelow(2**40) + 2**20}"))
        body = o.request_body(stream=False)
        keys: dict[str, str] = {}
        targets: list[tuple[str, Callgrind, Client, str]] = []
        for suffix, gateway in gateways.items():
            client = Client(gateway.server.port, body)
            clients.append(client)
            for profile in profiles:
                if profile not in keys:  # one project for both checkouts: same database
                    keys[profile] = o.create_key(gateway.server.url, args.admin_token, {
                        "name": f"instructions-{profile}-{os.urandom(4).hex()}",
                        **PROFILES[profile]})
                client.send(keys[profile], WARM_REQUESTS)
                targets.append((profile + suffix, gateway, client, keys[profile]))
        if args.bare:  # the reference overhead.py holds the gateway to, counted the same way
            bare = under_callgrind("bare", [sys.executable, str(o.BENCH / "bare_proxy.py"),
                                            "--host", o.HOST, "--port", str(ports[-1]),
                                            "--upstream", f"{upstream.url}/v1"],
                                   ports[-1], work, dict(os.environ), 0.2)
            servers.append(bare.server)
            o.wait_ready(bare.server, None, 300)
            client = Client(bare.server.port, body)
            clients.append(client)
            client.send("sk-bare", WARM_REQUESTS)
            targets.append(("bare", bare, client, "sk-bare"))
        time.sleep(1.5 * args.flush_interval)  # the warm-up's rows written before round one
        counts: dict[str, list[float]] = {name: [] for name, *_ in targets}
        dumps: dict[str, Path] = {}
        started = time.monotonic()
        for r in range(args.rounds):
            for name, gateway, client, key in targets:
                total, dumps[name] = gateway.count(
                    functools.partial(client.send, key, args.requests), f"{name}-{r}")
                counts[name].append(total / args.requests)
            print(f"  round {r + 1}/{args.rounds} done ({time.monotonic() - started:.0f} s)",
                  file=sys.stderr)
        report(counts, args, dumps)
    finally:
        for client in clients:
            client.close()
        for server in reversed(servers):
            server.stop(30)
        o.drop_database(args.database_url, db)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"dumps and logs kept in {work}", file=sys.stderr)


def report(counts: dict[str, list[float]], args: argparse.Namespace,
           dumps: dict[str, Path]) -> None:
    print(f"instructions a request in the proxy process ({args.requests} requests a round, "
          f"{args.rounds} rounds; median, min-max):")
    first = next(iter(counts))
    base = statistics.median(counts[first])
    for name, values in counts.items():
        mid = statistics.median(values)
        added = "" if name == first else f"   {mid - base:+9,.0f} vs {first}"
        print(f"  {name:14} {mid:11,.0f}  ({min(values):,.0f}-{max(values):,.0f}){added}")
    names = list(counts)
    if "bare" in counts and "plain" in counts:
        ratio = statistics.median(counts["bare"]) / statistics.median(counts["plain"])
        print(f"  bare / plain: {ratio:.3f} (overhead.py's gateway / bare req/s target: >= 0.70)")
    if args.alt:
        for name in names:
            if not name.endswith("_alt") and f"{name}_alt" in counts:
                pairs = [b - a for a, b in zip(counts[name], counts[f"{name}_alt"], strict=True)]
                print(f"  {name}_alt - {name}: median {statistics.median(pairs):+,.0f} "
                      f"(rounds {min(pairs):+,.0f} to {max(pairs):+,.0f})")
    if args.top and len(names) > 1:
        a, b = names[0], names[1]
        print(f"\nC functions whose own instructions differ most, {b} - {a} (last round), "
              "a request:")
        for diff, where in top_differences(dumps[a], dumps[b], args.top):
            print(f"  {diff / args.requests:+9,.0f}  {where[:100]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profiles", default="plain,limits",
                        help=f"comma-separated, from {', '.join(PROFILES)}")
    parser.add_argument("--alt", help="another checkout to serve a second gateway from")
    parser.add_argument("--bare", action="store_true",
                        help="count bench/bare_proxy.py too, and the plain gateway against it")
    parser.add_argument("--top", type=int, default=0,
                        help="list the C functions that differ most between two profiles")
    parser.add_argument("--flush-interval", type=float, default=1.0,
                        help="GATEWAY_LEDGER_FLUSH_INTERVAL_S for the gateways")
    parser.add_argument("--database-url", default=os.environ.get(
        "GATEWAY_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--admin-token", default="bench-instructions-admin-token-0123456789")
    parser.add_argument("--keep", action="store_true", help="keep the dumps and logs")
    args = parser.parse_args()
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds must be positive")
    return o.exit_status(run, args)


if __name__ == "__main__":
    sys.exit(main())
