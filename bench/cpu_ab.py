"""CPU per request of the proxies under load, and of this checkout against another one.

`overhead.py` compares req/s, which on this shared two-core machine drift by 10 % from
one minute to the next; a change worth 5 us a call is lost in that. This script measures
what a change moves: the CPU time (user + system, from /proc/PID/stat) each proxy process
spends per request while wrk drives it at 32 connections, pinned as `overhead.py` pins.
With `--alt PATH` (another checkout, e.g. `git worktree add /tmp/base HEAD~1`) it also
starts that checkout's gateway and gateway + limits beside this one's, and alternates the
targets round by round, so each round's difference is taken on the same machine state:

    .venv/bin/python bench/cpu_ab.py --alt /tmp/base --rounds 10 --targets gateway,gateway_alt

The median of the per-round differences is the number to quote; a few us are noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import overhead as o

TARGETS = ("bare", "gateway", "limits", "gateway_alt", "limits_alt")


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(user, system) CPU ticks of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime


def start_gateway(name: str, repo: Path, port: int, work: Path, pin: str | None,
                  env: dict[str, str]) -> o.Server:
    cmd = [sys.executable, "-m", "gateway", "serve", "--host", o.HOST, "--port", str(port)]
    return o.start(name, cmd, port, work, pin, env, cwd=repo)


def run(args: argparse.Namespace) -> None:
    targets = args.targets.split(",")
    unknown = set(targets) - set(TARGETS)
    if unknown or (any(t.endswith("_alt") for t in targets) and args.alt is None):
        raise o.BenchError(f"--targets: choose from {', '.join(TARGETS)} (the _alt ones need "
                           f"--alt); got {args.targets}")
    pins = o.pin_plan("auto")
    db = f"gateway_cpu_ab_{os.getpid()}"
    dsn = o.with_database(args.database_url, db)
    o.create_database(args.database_url, db)
    work = Path(tempfile.mkdtemp(prefix="gateway-cpu-ab-"))
    servers: list[o.Server] = []
    hz = os.sysconf("SC_CLK_TCK")
    try:
        ports = dict(zip(("upstream", *TARGETS), o.free_ports(len(TARGETS) + 1), strict=True))
        upstream = o.start("fake upstream", [sys.executable, "-m", "gateway.testing.fake_upstream",
                                             "--host", o.HOST, "--port", str(ports["upstream"])],
                           ports["upstream"], work, pins["upstream"])
        servers.append(upstream)
        o.wait_ready(upstream, "/_fake/health", 30)
        base = f"{upstream.url}/v1"
        token = secrets.token_urlsafe(24)
        env = {**os.environ, "GATEWAY_DATABASE_URL": dsn, "OPENAI_BASE_URL": base,
               "GATEWAY_LOGGING_LEVEL": "warning", "GATEWAY_ADMIN_TOKEN": token,
               "GATEWAY_SERVER_WORKERS": "1"}
        follower = {"GATEWAY_DATABASE_MIGRATE_ON_START": "false"}
        limited = {"GATEWAY_RATELIMIT_BACKEND": "redis", "GATEWAY_REDIS_URL": args.redis_url,
                   **follower}
        procs: dict[str, o.Server] = {}
        if "bare" in targets:
            procs["bare"] = o.start("bare", [sys.executable, str(o.BENCH / "bare_proxy.py"),
                                             "--host", o.HOST, "--port", str(ports["bare"]),
                                             "--upstream", base],
                                    ports["bare"], work, pins["proxy"])
            servers.append(procs["bare"])
            o.wait_ready(procs["bare"], None, 30)
        # This checkout's gateway first: it migrates the database the others share.
        for name, repo, extra in (("gateway", o.REPO, {}), ("limits", o.REPO, limited),
                                  ("gateway_alt", args.alt, follower),
                                  ("limits_alt", args.alt, limited)):
            if repo is None or (name not in targets and name != "gateway"):
                continue
            procs[name] = start_gateway(name, repo, ports[name], work, pins["proxy"],
                                        {**env, **extra})
            servers.append(procs[name])
            o.wait_ready(procs[name], "/api/health/ready", 60)
        asyncio.run(o._admin_sql(dsn, "ALTER TABLE projects ALTER COLUMN id RESTART WITH "
                                      f"{secrets.randbelow(2**40) + 2**20}"))
        admin = procs["gateway"].url
        key = o.create_key(admin, token, {"name": f"ab-{secrets.token_hex(4)}",
                                          "plan": "enterprise"})
        limited_key = o.create_key(admin, token, {"name": f"ab-limits-{secrets.token_hex(4)}",
                                                  **json.loads(args.limits)})
        body = o.request_body(False, "chat")
        plain = o.LoadGen("wrk", work, body, key, pins["loadgen"], 2, o.PATHS["chat"])
        (work / "limits").mkdir()
        limits = o.LoadGen("wrk", work / "limits", body, limited_key, pins["loadgen"], 2,
                           o.PATHS["chat"])
        loadgen = {t: limits if t.startswith("limits") else plain for t in TARGETS}
        for t in targets:  # warm up
            loadgen[t].run(t, ports[t], args.connections, 2, -1)
        cpu: dict[str, list[float]] = {t: [] for t in targets}
        system: dict[str, list[float]] = {t: [] for t in targets}  # of which in the kernel
        rps: dict[str, list[float]] = {t: [] for t in targets}
        for r in range(args.rounds):
            for t in targets:
                time.sleep(0.5)
                pid = procs[t].proc.pid
                before = cpu_ticks(pid)
                m = loadgen[t].run(t, ports[t], args.connections, args.seconds, r)
                after = cpu_ticks(pid)
                procs[t].check_alive()
                if m.non200 or m.error_count:
                    raise o.BenchError(f"{t}: non-200 {m.statuses}, errors {m.errors}")
                used, kernel = (sum(after) - sum(before)) / hz, (after[1] - before[1]) / hz
                cpu[t].append(used / m.requests * 1e6)
                system[t].append(kernel / m.requests * 1e6)
                rps[t].append(m.rps)
                print(f"round {r + 1:>2} {t:<12} {m.rps:>7.0f} req/s {cpu[t][-1]:>7.1f} us/req "
                      f"(system {system[t][-1]:.1f})", file=sys.stderr, flush=True)
        print(f"\nCPU per request at {args.connections} connections, {args.rounds} rounds of "
              f"{args.seconds}s (pinned: {pins['proxy'] is not None})")
        for t in targets:
            print(f"  {t:<12} median {statistics.median(cpu[t]):7.1f} us "
                  f"(range {min(cpu[t]):.1f}-{max(cpu[t]):.1f}; in the kernel "
                  f"{statistics.median(system[t]):.1f})   {statistics.median(rps[t]):7.0f} req/s")
        for a, b in (("gateway", "gateway_alt"), ("limits", "limits_alt"),
                     ("limits", "gateway"), ("gateway", "bare")):
            if a in targets and b in targets:
                diffs = [x - y for x, y in zip(cpu[a], cpu[b], strict=True)]
                print(f"  {a} - {b}: median {statistics.median(diffs):+.1f} us a request; "
                      f"per round {', '.join(f'{d:+.1f}' for d in diffs)}")
    finally:
        for s in servers:
            s.stop(10)
        o.drop_database(args.database_url, db)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alt", type=Path, default=None, metavar="PATH",
                        help="another checkout, started beside this one as the _alt targets")
    parser.add_argument("--targets", default="bare,gateway,limits")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--limits", default=json.dumps(o.LIMITED_PROJECT),
                        help="the limited project (JSON, as the admin API takes it)")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    return o.exit_status(run, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
