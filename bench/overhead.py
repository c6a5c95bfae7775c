"""Gateway overhead benchmark: the gateway against a bare aiohttp proxy and the upstream itself.

One command does everything: a fresh PostgreSQL database for the gateway, the fake upstream,
the bare proxy (bench/bare_proxy.py) and the gateway as subprocesses on free ports, a project
and key, then closed-loop load with wrk (or bench/loadgen.py when wrk is missing) against
the three targets, alternating target by target over several rounds, at a throughput
concurrency (32 connections) and a latency concurrency (1 connection). Medians over rounds
are reported with the gateway/bare-proxy ratios; JSON goes to bench/results/.

    .venv/bin/python bench/overhead.py [--rounds 5] [--seconds 4] [--stream]

See bench/README.md for what the numbers mean.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
HOST = "127.0.0.1"
# What each --endpoint posts: its path, and a request body (stream: whether to stream it).
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses",
         "embeddings": "/v1/embeddings"}
TARGETS = ("upstream", "bare", "gateway", "limits")
LABELS = {"upstream": "upstream (direct)", "bare": "bare aiohttp proxy", "gateway": "gateway",
          "limits": "gateway + limits"}
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello"}]
# The acceptance targets (issue 15).
MIN_THROUGHPUT_RATIO = 0.70  # gateway req/s / bare proxy req/s at the throughput concurrency
MAX_P50_OVER_BARE_MS = 0.15  # at the latency concurrency: gateway p50 - bare proxy p50
MAX_P99_OVER_BARE_MS = 0.5  # at the latency concurrency: gateway p99 - bare proxy p99
MIN_LIMITS_RATIO = 0.85  # gateway with budgets and redis rate limits / gateway without them
MAX_RSS_MB = 120.0  # the gateway's resident memory after the run
MAX_SOAK_GROWTH_PCT = 5.0  # RSS growth over the soak (`--soak`), first slice to last
SOAK_SLICE_S = 15
# The "limits" gateway's project: a budget and every rate limit on, none ever reached.
LIMITED_PROJECT = {"plan": "team", "monthly_budget_usd": 1_000_000,
                   "requests_per_minute": 10**9, "requests_per_day": 10**9,
                   "tokens_per_minute": 10**9}
NOISY_SPREAD = 0.8  # a target whose slowest round is under 80% of its fastest: say so
COST_HEADER = "X-AI-Cost-Gateway-Cost"
RESULT_PREFIX = "BENCH_RESULT "

# wrk script: the POST, every status counted per thread, one JSON line at the end.
WRK_LUA = """
wrk.method = "POST"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"

local threads = {}
function setup(thread) table.insert(threads, thread) end

function init(args) ok = 0; bad = 0; st = ""; codes = {} end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  else
    bad = bad + 1
    codes[status] = (codes[status] or 0) + 1
    local s = ""
    for code, n in pairs(codes) do s = s .. code .. ":" .. n .. "," end
    st = s
  end
end

function done(summary, latency, requests)
  local ok_all, bad_all, st_all = 0, 0, ""
  for _, t in ipairs(threads) do
    ok_all = ok_all + t:get("ok")
    bad_all = bad_all + t:get("bad")
    st_all = st_all .. t:get("st")
  end
  local e = summary.errors
  io.write(string.format(
    '%(prefix)s{"requests":%%d,"duration_us":%%d,"ok":%%d,"non200":%%d,"statuses":"%%s",'
    .. '"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d,'
    .. '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"mean_us":%%.1f,"max_us":%%d}\\n',
    summary.requests, summary.duration, ok_all, bad_all, st_all,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


class BenchError(Exception):
    pass


def exit_status(run: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> int:
    """A bench's exit status: 0, or 1 with the error on stderr when it fails as a bench can
    (the tools beside this one share it)."""
    try:
        run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# --- small helpers -------------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None,
         timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- processes -----------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}; its log "
                             f"({self.log}):\n{tail(self.log)}")

    def stop(self, wait_s: float) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            print(f"  {self.name} did not stop in {wait_s:g}s after SIGTERM: killing it",
                  file=sys.stderr)
            self.proc.kill()
            self.proc.wait(5)


def start(name: str, cmd: list[str], port: int, logdir: Path, pin: str | None,
          env: dict[str, str] | None = None, cwd: Path = REPO) -> Server:
    """Start `cmd` in `cwd` (this checkout, unless another one is compared with it)."""
    if pin is not None:
        cmd = ["taskset", "-c", pin, *cmd]
    log = logdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return Server(name, port, proc, log)


def wait_ready(server: Server, path: str | None, deadline_s: float) -> None:
    """Poll until `path` answers 200 (or, with no path, until the port accepts)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            if path is None:
                with socket.create_connection((HOST, server.port), timeout=1):
                    return
            elif http("GET", server.url + path, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"{server.name} was not ready after {deadline_s:g}s; its log:\n"
                     f"{tail(server.log)}")


# --- database ------------------------------------------------------------------------------

async def _admin_sql(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database(dsn: str, name: str) -> None:
    asyncio.run(_admin_sql(dsn, f'CREATE DATABASE "{name}"'))


def drop_database(dsn: str, name: str) -> None:
    try:
        asyncio.run(_admin_sql(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    except Exception as exc:  # PostgreSQL < 13 has no FORCE
        if "syntax" not in str(exc).lower():
            raise
        asyncio.run(_admin_sql(dsn, f'DROP DATABASE IF EXISTS "{name}"'))


async def _ledger_counts(dsn: str) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS rows, count(*) FILTER (WHERE status = 200) AS ok "
            "FROM usage_records")
        return {"rows": row["rows"], "status_200": row["ok"]}
    finally:
        await conn.close()


# --- load ----------------------------------------------------------------------------------

@dataclass
class Measurement:
    target: str
    connections: int
    round: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    requests: int
    ok: int
    non200: int
    statuses: dict[str, int]
    errors: dict[str, int]

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class LoadGen:
    kind: str  # "wrk" or "python"
    workdir: Path
    body: bytes
    key: str
    pin: str | None
    wrk_threads: int
    path: str = PATHS["chat"]
    lua: Path = field(init=False)
    body_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.body_file = self.workdir / "body.json"
        self.body_file.write_bytes(self.body)
        self.lua = self.workdir / "post.lua"
        text = self.body.decode()
        if "]==]" in text:
            raise BenchError("request body cannot be embedded in the wrk script")
        self.lua.write_text(WRK_LUA % {"body": text, "key": self.key, "prefix": RESULT_PREFIX})

    def run(self, target: str, port: int, connections: int, seconds: int,
            round_: int) -> Measurement:
        url = f"http://{HOST}:{port}{self.path}"
        if self.kind == "wrk":
            threads = max(1, min(self.wrk_threads, connections))
            cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
                   "--timeout", "5s", "--latency", "-s", str(self.lua), url]
        else:
            cmd = [sys.executable, str(BENCH / "loadgen.py"), "--port", str(port),
                   "--path", self.path, "--connections", str(connections), "--seconds",
                   str(seconds), "--body-file", str(self.body_file),
                   "--header", "Content-Type: application/json",
                   "--header", f"Authorization: Bearer {self.key}"]
        if self.pin is not None:
            cmd = ["taskset", "-c", self.pin, *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                              check=False)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)),
                    None)
        if proc.returncode != 0 or line is None:
            raise BenchError(f"load generator failed on {target} (exit {proc.returncode}):\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        r = json.loads(line[len(RESULT_PREFIX):])
        statuses: dict[str, int] = {}
        for item in r["statuses"].split(","):
            if item:
                code, _, n = item.partition(":")
                statuses[code] = statuses.get(code, 0) + int(n)
        seconds_run = r["duration_us"] / 1e6
        return Measurement(
            target=target, connections=connections, round=round_,
            rps=r["requests"] / seconds_run if seconds_run else 0.0,
            p50_ms=r["p50_us"] / 1000, p90_ms=r["p90_us"] / 1000, p99_ms=r["p99_us"] / 1000,
            mean_ms=r["mean_us"] / 1000, max_ms=r["max_us"] / 1000, requests=r["requests"],
            ok=r["ok"], non200=r["non200"], statuses=statuses,
            errors={k: r[k] for k in ("connect", "read", "write", "timeout")})


def create_key(url: str, admin_token: str, project: dict[str, Any]) -> str:
    """A project (admin API) and a key for it."""
    admin = {"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"}
    status, _, data = http("POST", url + "/api/admin/projects", json.dumps(project).encode(),
                           admin)
    if status not in (200, 201):
        raise BenchError(f"creating the project answered {status}: {data[:300]!r}")
    project_id = json.loads(data)["id"]
    status, _, data = http("POST", f"{url}/api/admin/projects/{project_id}/keys", b"{}", admin)
    if status not in (200, 201):
        raise BenchError(f"issuing the key answered {status}: {data[:300]!r}")
    return str(json.loads(data)["key"])


def request_body(stream: bool, endpoint: str = "chat") -> bytes:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 16}
    if endpoint == "responses":
        body = {"model": "gpt-4o-mini", "instructions": MESSAGES[0]["content"],
                "input": MESSAGES[1]["content"], "max_output_tokens": 16}
        if stream:
            body["stream"] = True
        return json.dumps(body, separators=(",", ":")).encode()
    if endpoint == "embeddings":
        body = {"model": "text-embedding-3-small", "input": MESSAGES[1]["content"],
                "encoding_format": "float"}
        return json.dumps(body, separators=(",", ":")).encode()
    if stream:
        # Every target then makes the upstream do the same work: the gateway always asks
        # for the usage chunk on streams.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":")).encode()


def preflight(name: str, url: str, body: bytes, key: str, stream: bool,
              endpoint: str = "chat") -> None:
    """One request through `url`: it must be a 200 with a real answer in it."""
    status, headers, data = http("POST", url + PATHS[endpoint], body, {
        "Content-Type": "application/json", "Authorization": f"Bearer {key}"}, timeout=10)
    problem = None
    if status != 200:
        problem = f"status {status}"
    elif stream:
        last = b"response.completed" if endpoint == "responses" else b"data: [DONE]"
        if last not in data[-2000:]:
            problem = f"stream does not end with {last.decode()}"
    else:
        field_name = {"chat": "choices", "responses": "output", "embeddings": "data"}[endpoint]
        try:
            answer = json.loads(data).get(field_name)
        except ValueError:
            answer = None
        if not answer:
            problem = f"no {field_name} in the body"
    if name in ("gateway", "limits") and problem is None and not stream \
            and COST_HEADER not in headers:
        problem = f"no {COST_HEADER} header"
    if problem:
        raise BenchError(f"preflight request through {name} failed: {problem}: {data[:500]!r}")


# --- profiling -----------------------------------------------------------------------------

def profile_gateway(gateway: Server, loadgen: LoadGen, connections: int, seconds: int,
                    out: Path, pin: str | None,
                    target: str = "gateway") -> tuple[dict[str, Any], Measurement]:
    """py-spy the gateway under load (`--profile`): collapsed stacks to `out`, a summary back."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    cmd = [pyspy, "record", "--format", "raw", "--nolineno", "--rate", "250",
           "-d", str(seconds + 1), "-o", str(out), "--pid", str(gateway.proc.pid)]
    if pin is not None:
        cmd = ["taskset", "-c", pin, *cmd]
    log = out.with_suffix(".log")
    with open(log, "wb") as f:
        spy = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # let py-spy attach
        m = loadgen.run(target, gateway.port, connections, seconds, -2)
        spy.wait(seconds + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait(5)
    if spy.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed (exit {spy.returncode}):\n{tail(log)}")
    return {"file": str(out), "rps_while_profiled": m.rps, **summarize_profile(out)}, m


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", str(REPO) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n

    def ranked(d: dict[str, int]) -> list[tuple[str, float]]:
        # Frames on (nearly) every stack are the entry point and the loop: no information.
        rows = sorted(((k, n) for k, n in d.items() if n < 0.98 * total),
                      key=lambda kv: -kv[1])[:top]
        return [(name, round(100 * n / total, 1)) for name, n in rows]

    return {"samples": total, "self_pct": ranked(own), "inclusive_pct": ranked(incl)}


def print_profile(profile: dict[str, Any]) -> None:
    print(f"\nGateway profile (py-spy, {profile['samples']} busy samples, "
          f"{profile['rps_while_profiled']:.0f} req/s while sampled; {profile['file']})")
    print("  inclusive %  function")
    for name, pct in profile["inclusive_pct"]:
        print(f"  {pct:>10.1f}  {name}")
    print("  self %      function")
    for name, pct in profile["self_pct"][:15]:
        print(f"  {pct:>10.1f}  {name}")


# --- orchestration -------------------------------------------------------------------------

def pin_plan(mode: str) -> dict[str, str | None]:
    """Which CPUs each role runs on (taskset -c); None: wherever the scheduler likes."""
    unpinned: dict[str, str | None] = dict.fromkeys(("loadgen", "upstream", "proxy"))
    if mode == "off" or not hasattr(os, "sched_getaffinity") or not shutil.which("taskset"):
        return unpinned
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 3:
        return {"loadgen": str(cpus[0]), "upstream": str(cpus[1]), "proxy": str(cpus[2])}
    if len(cpus) == 2:
        # The proxy under test (bare or gateway, never both at once) owns a core; the load
        # generator and the fake upstream share the other.
        return {"loadgen": str(cpus[0]), "upstream": str(cpus[0]), "proxy": str(cpus[1])}
    return unpinned


def choose_loadgen(requested: str) -> str:
    have_wrk = shutil.which("wrk") is not None
    if requested == "wrk" and not have_wrk:
        raise BenchError("wrk is not installed (apt-get install -y wrk)")
    if requested == "auto":
        return "wrk" if have_wrk else "python"
    return requested


def summarize(ms: list[Measurement], concurrencies: list[int]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for c in concurrencies:
        per: dict[str, Any] = {}
        for t in TARGETS:
            rows = [m for m in ms if m.connections == c and m.target == t]
            rps = [m.rps for m in rows]
            per[t] = {
                "rounds": len(rows), "rps": median(rps),
                "rps_min": min(rps, default=float("nan")),
                "rps_max": max(rps, default=float("nan")),
                "p50_ms": median([m.p50_ms for m in rows]),
                "p90_ms": median([m.p90_ms for m in rows]),
                "p99_ms": median([m.p99_ms for m in rows]),
                "requests": sum(m.requests for m in rows),
                "non200": sum(m.non200 for m in rows),
                "errors": sum(m.error_count for m in rows),
            }
        rounds = sorted({m.round for m in ms})

        def paired(a: str, b: str, c: int = c, rounds: list[int] = rounds) -> list[float]:
            out = []
            for r in rounds:
                x = [m.rps for m in ms if (m.connections, m.target, m.round) == (c, a, r)]
                y = [m.rps for m in ms if (m.connections, m.target, m.round) == (c, b, r)]
                if x and y and y[0]:
                    out.append(x[0] / y[0])
            return out

        up, bare, gw, lim = per["upstream"], per["bare"], per["gateway"], per["limits"]
        summary[str(c)] = {
            "limits_vs_gateway_rps": lim["rps"] / gw["rps"] if gw["rps"] else float("nan"),
            "limits_vs_gateway_rps_per_round": paired("limits", "gateway"),
            "added_p50_ms_limits_over_gateway": lim["p50_ms"] - gw["p50_ms"],
            "targets": per,
            "gateway_vs_bare_rps": gw["rps"] / bare["rps"] if bare["rps"] else float("nan"),
            "gateway_vs_upstream_rps": gw["rps"] / up["rps"] if up["rps"] else float("nan"),
            "bare_vs_upstream_rps": bare["rps"] / up["rps"] if up["rps"] else float("nan"),
            "gateway_vs_bare_rps_per_round": paired("gateway", "bare"),
            "added_p50_ms_bare": bare["p50_ms"] - up["p50_ms"],
            "added_p50_ms_gateway": gw["p50_ms"] - up["p50_ms"],
            "added_p50_ms_gateway_over_bare": gw["p50_ms"] - bare["p50_ms"],
        }
    return summary


def print_report(result: dict[str, Any]) -> None:
    cfg, summary = result["config"], result["summary"]
    conc = cfg["concurrency"]
    mode = "streaming" if cfg["stream"] else "non-streaming"
    print()
    print(f"Gateway overhead: {mode} POST {cfg['path']}, {cfg['rounds']} rounds x "
          f"{cfg['seconds']}s "
          f"per target, load generator {cfg['loadgen']}, CPUs {cfg['pinning_text']}")
    load = result["environment"]["loadavg_before"]
    print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {result['environment']['cpus']} CPUs")
    print(f"{'conns':>5}  {'target':<20} {'req/s':>9} {'(min-max)':>17} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'non-200':>8} {'errors':>7}")
    for c in conc:
        for t in TARGETS:
            s = summary[str(c)]["targets"][t]
            spread = f"({s['rps_min']:.0f}-{s['rps_max']:.0f})"
            print(f"{c:>5}  {LABELS[t]:<20} {s['rps']:>9.0f} {spread:>17} {s['p50_ms']:>8.3f} "
                  f"{s['p99_ms']:>8.3f} {s['non200']:>8} {s['errors']:>7}")
    print()
    print("Ratios (medians over rounds; per-round gateway/bare range in brackets)")
    for c in conc:
        s = summary[str(c)]
        per_round = s["gateway_vs_bare_rps_per_round"]
        spread = (f" [{min(per_round):.2f}-{max(per_round):.2f}]" if per_round else "")
        print(f"  {c:>3} conns: gateway/bare req/s {s['gateway_vs_bare_rps']:.2f}{spread}   "
              f"gateway/upstream {s['gateway_vs_upstream_rps']:.2f}   "
              f"bare/upstream {s['bare_vs_upstream_rps']:.2f}")
    for c in conc:
        s = summary[str(c)]
        per_round = s["limits_vs_gateway_rps_per_round"]
        spread = (f" [{min(per_round):.2f}-{max(per_round):.2f}]" if per_round else "")
        print(f"  {c:>3} conns: gateway with limits / without req/s "
              f"{s['limits_vs_gateway_rps']:.2f}{spread}   added p50 "
              f"{s['added_p50_ms_limits_over_gateway']:+.3f} ms")
    for c in conc:
        s = summary[str(c)]
        print(f"  {c:>3} conns: added p50 over upstream: bare proxy "
              f"{s['added_p50_ms_bare']:+.3f} ms, gateway {s['added_p50_ms_gateway']:+.3f} ms "
              f"(gateway over bare {s['added_p50_ms_gateway_over_bare']:+.3f} ms)")
    noisy = [f"{LABELS[t]} at {c}" for c in conc for t in TARGETS
             if summary[str(c)]["targets"][t]["rps_min"]
             < NOISY_SPREAD * summary[str(c)]["targets"][t]["rps_max"]]
    if noisy:
        print(f"  note: noisy rounds (slowest < {NOISY_SPREAD:.0%} of fastest) for "
              f"{', '.join(noisy)}: the machine was busy; medians absorb some of it, more "
              "--rounds absorb more")
    print()
    for check in result["targets"]:
        verdict = "PASS" if check["pass"] else "MISS"
        print(f"  [{verdict}] {check['name']}: {check['value']:.3f} (target {check['target']})")
    ledger = result.get("ledger")
    if ledger:
        print(f"  gateway ledger: {ledger['rows']} usage rows written ({ledger['status_200']} "
              f"with status 200) for {result['gateway_requests_sent']} requests completed")


def run(args: argparse.Namespace) -> int:
    concurrency = [int(c) for c in args.concurrency.split(",")]
    if any(c < 1 for c in concurrency) or args.rounds < 1 or args.seconds < 1:
        raise BenchError("--concurrency, --rounds and --seconds must be positive")
    loadgen_kind = choose_loadgen(args.loadgen)
    if loadgen_kind == "python":
        why = "wrk not found" if args.loadgen == "auto" else "--loadgen python"
        print(f"!! {why}: using the slower Python load generator (bench/loadgen.py); "
              "wrk gives more trustworthy numbers (apt-get install -y wrk)", file=sys.stderr)
    pins = pin_plan(args.pin)
    pin_text = ("unpinned" if pins["proxy"] is None else
                f"load generator on {pins['loadgen']}, fake upstream on {pins['upstream']}, "
                f"proxy under test on {pins['proxy']}")
    if args.stream and args.endpoint == "embeddings":
        raise BenchError("embeddings do not stream")
    path = PATHS[args.endpoint]
    body = request_body(args.stream, args.endpoint)
    db_name = f"gateway_bench_{os.getpid()}"
    gateway_dsn = with_database(args.database_url, db_name)
    admin_token = secrets.token_urlsafe(24)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    servers: list[Server] = []
    db_created = False
    ok_exit = False
    loadavg_before = os.getloadavg()
    started = time.time()
    try:
        create_database(args.database_url, db_name)
        db_created = True
        p_up, p_bare, p_gw, p_lim = free_ports(4)
        py = sys.executable
        upstream = start("fake upstream", [py, "-m", "gateway.testing.fake_upstream",
                                           "--host", HOST, "--port", str(p_up)],
                         p_up, workdir, pins["upstream"])
        servers.append(upstream)
        wait_ready(upstream, "/_fake/health", 30)
        upstream_base = f"{upstream.url}/v1"
        bare = start("bare proxy", [py, str(BENCH / "bare_proxy.py"), "--host", HOST,
                                    "--port", str(p_bare), "--upstream", upstream_base],
                     p_bare, workdir, pins["proxy"])
        servers.append(bare)
        env = {**os.environ, "GATEWAY_DATABASE_URL": gateway_dsn,
               "OPENAI_BASE_URL": upstream_base, "GATEWAY_LOGGING_LEVEL": "warning",
               "GATEWAY_ADMIN_TOKEN": admin_token,
               "GATEWAY_SERVER_WORKERS": "1"}  # one process, like the bare proxy it is held to
        gateway = start("gateway", [py, "-m", "gateway", "serve", "--host", HOST,
                                    "--port", str(p_gw)], p_gw, workdir, pins["proxy"], env)
        servers.append(gateway)
        limited = start("gateway + limits", [py, "-m", "gateway", "serve", "--host", HOST,
                                             "--port", str(p_lim)], p_lim, workdir,
                        pins["proxy"], {**env, "GATEWAY_RATELIMIT_BACKEND": "redis",
                                        "GATEWAY_REDIS_URL": args.redis_url,
                                        "GATEWAY_DATABASE_MIGRATE_ON_START": "false"})
        servers.append(limited)
        wait_ready(bare, None, 30)
        wait_ready(gateway, "/api/health/ready", 60)
        wait_ready(limited, "/api/health/ready", 60)
        # Project ids of their own: the rate-limit counters in Redis are keyed by project id
        # and outlive this run's database, so reused ids would inherit earlier runs' counts.
        first_id = secrets.randbelow(2**40) + 2**20
        asyncio.run(_admin_sql(gateway_dsn,
                               f"ALTER TABLE projects ALTER COLUMN id RESTART WITH {first_id}"))

        key = create_key(gateway.url, admin_token, {"name": f"bench-{secrets.token_hex(4)}",
                                                    "plan": "enterprise"})  # no limits
        limited_key = create_key(limited.url, admin_token, {
            "name": f"bench-limits-{secrets.token_hex(4)}", **LIMITED_PROJECT})

        ports = {"upstream": p_up, "bare": p_bare, "gateway": p_gw, "limits": p_lim}
        urls = {"upstream": upstream.url, "bare": bare.url, "gateway": gateway.url,
                "limits": limited.url}
        for t in TARGETS:
            preflight(t, urls[t], body, limited_key if t == "limits" else key, args.stream,
                      args.endpoint)
        loadgen = LoadGen(loadgen_kind, workdir, body, key, pins["loadgen"], args.wrk_threads,
                          path)
        limited_dir = workdir / "limits"
        limited_dir.mkdir()
        loadgens = {t: loadgen for t in TARGETS}
        loadgens["limits"] = LoadGen(loadgen_kind, limited_dir, body, limited_key,
                                     pins["loadgen"], args.wrk_threads, path)

        def check() -> None:
            for s in servers:
                s.check_alive()

        warmup: list[Measurement] = []
        if args.warmup > 0:
            print(f"warming up: {args.warmup}s per target at {max(concurrency)} connections",
                  file=sys.stderr)
            for t in TARGETS:
                warmup.append(loadgens[t].run(t, ports[t], max(concurrency), args.warmup, -1))
                check()
        measurements: list[Measurement] = []
        total = args.rounds * len(concurrency) * len(TARGETS)
        for r in range(args.rounds):
            k = r % len(TARGETS)
            order = TARGETS[k:] + TARGETS[:k]  # rotate: no target always goes first
            for c in concurrency:
                for t in order:
                    time.sleep(args.pause)
                    m = loadgens[t].run(t, ports[t], c, args.seconds, r)
                    check()
                    measurements.append(m)
                    flag = "" if not (m.non200 or m.error_count) else (
                        f"  !! non-200 {m.non200} {m.statuses} errors {m.errors}")
                    print(f"[{len(measurements):>2}/{total}] round {r + 1} {c:>2} conns "
                          f"{t:<8} {m.rps:>8.0f} req/s  p50 {m.p50_ms:.3f} ms  "
                          f"p99 {m.p99_ms:.3f} ms{flag}", file=sys.stderr, flush=True)

        stamp = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out_dir = Path(args.results_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        profile = None
        profiled: list[Measurement] = []
        if args.profile > 0:
            print(f"profiling the gateway for {args.profile}s at {max(concurrency)} connections",
                  file=sys.stderr)
            server = limited if args.profile_target == "limits" else gateway
            profile, m = profile_gateway(server, loadgens[args.profile_target], max(concurrency),
                                         args.profile,
                                         out_dir / f"overhead-{stamp}-gateway.pyspy.txt",
                                         pins["loadgen"], args.profile_target)
            profiled.append(m)
            check()

        rss_mb = rss_of(gateway.proc.pid)
        soak = None
        if args.soak > 0:
            soak = soak_gateway(gateway, loadgens["gateway"], max(concurrency), args.soak,
                                ports["gateway"])
        workers_ratio = None
        if args.workers > 1:
            workers_ratio = compare_workers(args, env, pins, workdir, loadgen,
                                            max(concurrency), servers)
        # Stop the gateways first: their ledgers flush on SIGTERM, then rows are counted.
        gateway.stop(args.stop_timeout)
        limited.stop(args.stop_timeout)
        ledger = None
        with contextlib.suppress(Exception):
            ledger = asyncio.run(_ledger_counts(gateway_dsn))

        summary = summarize(measurements, concurrency)
        hi, lo = str(max(concurrency)), str(min(concurrency))
        low = summary[lo]["targets"]
        p50_over = low["gateway"]["p50_ms"] - low["bare"]["p50_ms"]
        p99_over = low["gateway"]["p99_ms"] - low["bare"]["p99_ms"]
        gateway_requests = sum(m.requests for m in warmup + measurements
                               if m.target == "gateway")
        targets = [
            {"name": f"gateway/bare req/s at {hi} connections",
             "value": summary[hi]["gateway_vs_bare_rps"],
             "target": f">= {MIN_THROUGHPUT_RATIO}",
             "pass": summary[hi]["gateway_vs_bare_rps"] >= MIN_THROUGHPUT_RATIO},
            {"name": f"gateway p50 over the bare proxy's at {lo} connection(s), ms",
             "value": p50_over, "target": f"<= {MAX_P50_OVER_BARE_MS}",
             "pass": p50_over <= MAX_P50_OVER_BARE_MS},
            {"name": f"gateway p99 over the bare proxy's at {lo} connection(s), ms",
             "value": p99_over, "target": f"<= {MAX_P99_OVER_BARE_MS}",
             "pass": p99_over <= MAX_P99_OVER_BARE_MS},
            {"name": f"gateway with budgets and redis rate limits / without, req/s at {hi}",
             "value": summary[hi]["limits_vs_gateway_rps"],
             "target": f">= {MIN_LIMITS_RATIO}",
             "pass": summary[hi]["limits_vs_gateway_rps"] >= MIN_LIMITS_RATIO},
        ]
        if rss_mb is not None:
            targets.append({"name": f"gateway RSS after {gateway_requests} requests, MB",
                            "value": rss_mb, "target": f"< {MAX_RSS_MB}",
                            "pass": rss_mb < MAX_RSS_MB})
        if soak is not None:
            targets.append({"name": f"gateway RSS growth over a {args.soak} s soak at {hi} "
                                    f"connections ({soak['first_mb']:.1f} -> "
                                    f"{soak['last_mb']:.1f} MB), %",
                            "value": soak["growth_pct"], "target": f"< {MAX_SOAK_GROWTH_PCT}",
                            "pass": soak["growth_pct"] < MAX_SOAK_GROWTH_PCT})
        if workers_ratio is not None:
            targets.append({"name": f"{args.workers} workers / 1 worker, req/s at {hi} "
                                    "connections (report)",
                            "value": workers_ratio, "target": "> 1", "pass": workers_ratio > 1})
        all_runs = warmup + measurements + profiled
        non200 = sum(m.non200 for m in all_runs)
        errors = sum(m.error_count for m in all_runs)
        statuses: dict[str, int] = {}
        for m in all_runs:
            for code, n in m.statuses.items():
                statuses[f"{m.target}:{code}"] = statuses.get(f"{m.target}:{code}", 0) + n
        result = {
            "started_at": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
            "duration_s": round(time.time() - started, 1),
            "config": {
                "rounds": args.rounds, "seconds": args.seconds, "warmup_s": args.warmup,
                "concurrency": concurrency, "stream": args.stream, "path": path,
                "endpoint": args.endpoint,
                "loadgen": loadgen_kind, "wrk_threads": args.wrk_threads,
                "pinning": pins, "pinning_text": pin_text, "body": body.decode(),
            },
            "environment": environment(loadavg_before),
            "summary": summary,
            "targets": targets,
            "ledger": ledger,
            "gateway_requests_sent": sum(m.requests for m in all_runs
                                         if m.target in ("gateway", "limits")) + 2,
            "non200": non200, "errors": errors, "non200_by_status": statuses,
            "profile": profile,
            "measurements": [vars(m) for m in measurements],
            "warmup": [vars(m) for m in warmup],
        }
        print_report(result)
        if profile is not None:
            print_profile(profile)
        out = out_dir / f"overhead-{stamp}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nresults: {out}")
        if non200 or errors:
            print("\n" + "!" * 78 + f"\n!! THIS RUN HAD FAILURES: {non200} non-200 responses "
                  f"{statuses or ''}, {errors} connection/read/write/timeout errors.\n"
                  "!! The numbers above are not a valid measurement.\n" + "!" * 78)
            for s in servers:
                print(f"--- {s.name} log tail ({s.log}):\n{tail(s.log, 15)}")
            return 1
        ok_exit = True
        return 0
    finally:
        for s in reversed(servers):  # gateway, bare proxy, then the upstream they call
            s.stop(args.stop_timeout if s.name.startswith("gateway") else 5)
        if db_created:
            try:
                drop_database(args.database_url, db_name)
            except Exception as exc:
                print(f"!! could not drop database {db_name}: {exc}", file=sys.stderr)
        if ok_exit:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"(server logs kept in {workdir})", file=sys.stderr)


def rss_of(pid: int) -> float | None:
    """A process's resident memory in MB (Linux), None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def soak_gateway(gateway: Server, loadgen: LoadGen, connections: int, seconds: int,
                 port: int) -> dict[str, Any]:
    """Load the gateway for `seconds` in slices of SOAK_SLICE_S, its RSS read after each:
    the growth from the first slice's reading to the last."""
    samples = []
    for n in range(max(seconds // SOAK_SLICE_S, 2)):
        loadgen.run("soak", port, connections, SOAK_SLICE_S, n)
        gateway.check_alive()
        rss = rss_of(gateway.proc.pid)
        if rss is not None:
            samples.append(rss)
        print(f"  soak {(n + 1) * SOAK_SLICE_S:>4} s: RSS {rss} MB", file=sys.stderr,
              flush=True)
    first, last = samples[0], samples[-1]
    return {"samples_mb": samples, "first_mb": first, "last_mb": last,
            "growth_pct": (last - first) / first * 100}


def compare_workers(args: argparse.Namespace, env: dict[str, str], pins: dict[str, str | None],
                    workdir: Path, loadgen: LoadGen, connections: int,
                    servers: list[Server]) -> float:
    """`serve --workers N` against `--workers 1`, alternating, `--rounds` times each at
    `connections`: the median req/s ratio. Unpinned: the point is to use every core."""
    runs: dict[int, list[float]] = {1: [], args.workers: []}
    started: dict[int, Server] = {}
    for count in runs:
        port = free_ports(1)[0]
        server = start(f"gateway x{count}", [sys.executable, "-m", "gateway", "serve",
                                             "--host", HOST, "--port", str(port),
                                             "--workers", str(count)], port, workdir, None,
                       {**env, "GATEWAY_SERVER_WORKERS": str(count),
                        "GATEWAY_RATELIMIT_PER_PROCESS_LIMITS": "true",
                        "GATEWAY_DATABASE_MIGRATE_ON_START": "false"})
        servers.append(server)
        wait_ready(server, "/api/health/ready", 60)
        started[count] = server
    for r in range(args.rounds):
        for count, server in started.items():
            time.sleep(args.pause)
            m = loadgen.run(f"workers{count}", server.port, connections, args.seconds, r)
            runs[count].append(m.rps)
            print(f"  workers {count}: {m.rps:>8.0f} req/s  p50 {m.p50_ms:.3f} ms",
                  file=sys.stderr, flush=True)
    for server in started.values():
        server.stop(args.stop_timeout)
    return median(runs[args.workers]) / median(runs[1])


def environment(loadavg_before: tuple[float, float, float]) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "loadavg_before": loadavg_before,
        "loadavg_after": os.getloadavg(),
    }
    with contextlib.suppress(Exception):
        import aiohttp

        env["aiohttp"] = aiohttp.__version__
    with contextlib.suppress(Exception):
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
        env["wrk"] = (wrk.stdout or wrk.stderr).splitlines()[0]
    with contextlib.suppress(Exception):
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, timeout=5)
        env["git"] = rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="a PostgreSQL DSN allowed to CREATE DATABASE; the gateway gets a "
                             "fresh gateway_bench_<pid> database on that server")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                        help="Redis for the rate limits of the 'gateway + limits' target")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=4,
                        help="seconds per measurement (per target, per concurrency, per round)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds per target, 0: none")
    parser.add_argument("--concurrency", default="32,1",
                        help="connection counts; the largest is the throughput level, the "
                             "smallest the latency level")
    parser.add_argument("--stream", action="store_true", help="benchmark streamed answers")
    parser.add_argument("--endpoint", choices=tuple(PATHS), default="chat",
                        help="chat completions, the Responses API, or embeddings")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--pin", choices=("auto", "off"), default="auto",
                        help="auto: pin the proxy under test to its own CPU with taskset")
    parser.add_argument("--pause", type=float, default=0.5,
                        help="seconds of quiet before each measurement")
    parser.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                        help="after the rounds, py-spy the gateway for this long under load "
                             "(needs py-spy in the venv); 0: no profile")
    parser.add_argument("--profile-target", choices=("gateway", "limits"), default="gateway")
    parser.add_argument("--stop-timeout", type=float, default=25.0)
    parser.add_argument("--soak", type=int, default=0, metavar="SECONDS",
                        help="also load the gateway this long, its RSS read every 15 s "
                             "(300: the 5-minute soak)")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="also compare `serve --workers N` with one worker (unpinned)")
    parser.add_argument("--results-dir", default=str(BENCH / "results"))
    args = parser.parse_args(argv)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # run the finally blocks: stop servers, drop the database

    signal.signal(signal.SIGTERM, on_term)
    try:
        return run(args)
    except BenchError as exc:
        print(f"\n!! benchmark failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
