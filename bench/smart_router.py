"""Smart-router simulation: a day of mixed traffic against three fake providers.

One command: a fresh PostgreSQL database (unique name, dropped at the end), three fake
upstreams (`python -m gateway.testing.fake_upstream`, each its own process, so their work does
not queue behind the gateway's on one event loop) standing for providers with different prices,
latencies and failure rates, and the gateway in-process, replaying the same day of traffic
(fixed seed) three times:

- `fixed`: each task class sent to the model an engineer would hard-code (the premium model
  for code and reasoning, the standard one for the rest), with fixed fallback chains;
- `router:cheapest` and `router:balanced`: each request names a `[routing.routes]` route of
  its task class and least quality tier, and the smart router picks.

The day is 24 "hours" of 60 requests (8 at a time). Each hour every fake gets a fresh script
of behaviours drawn from its profile (latency with jitter, a failure rate); from hour 12 to
15 the cheap provider degrades (8x slower, 40% failures), as providers do. The router's
observation window is a few simulated hours, so it has to notice and recover.

    .venv/bin/python bench/smart_router.py [--seed 16] [--per-hour 60] [--dsn DSN]

Prints, per mode: requests, failures (every attempt and fallback failed), total cost (the
sum of the X-AI-Cost-Gateway-Cost headers, checked against the ledger), p50 and p95 latency
as the client saw it, and the share of traffic each model served.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient, TestServer

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from gateway import migrate, projects  # noqa: E402
from gateway.app import build_app  # noqa: E402
from gateway.settings import TASK_CLASSES, settings_from_mapping  # noqa: E402


@dataclass(frozen=True)
class Provider:
    name: str
    model: str
    input_usd: str  # per million tokens
    output_usd: str
    delay_ms: float  # typical time to answer
    failure_rate: float
    quality: dict[str, str]


HIGH = dict.fromkeys(TASK_CLASSES, "high")
PROVIDERS = (
    Provider("alpha", "alpha-pro", "5.00", "20.00", 40, 0.01, HIGH),
    Provider("beta", "beta-std", "1.00", "4.00", 150, 0.02, {
        **dict.fromkeys(TASK_CLASSES, "high"), "code_generation": "medium", "chat": "medium",
        "reasoning": "low"}),
    Provider("gamma", "gamma-lite", "0.20", "0.80", 90, 0.05, {
        **dict.fromkeys(TASK_CLASSES, "medium"), "code_generation": "low",
        "reasoning": "low"}),
)
DEGRADED = ("gamma", range(12, 16), 8.0, 0.40)  # provider, hours, slowdown, failure rate
# task: (share of traffic, least quality, prompt words, max output tokens)
TRAFFIC = {
    "chat": (0.35, "medium", (20, 300), (50, 300)),
    "summarization": (0.15, "medium", (800, 2500), (100, 400)),
    "extraction": (0.10, "medium", (200, 1200), (30, 200)),
    "classification": (0.10, "medium", (30, 300), (5, 20)),
    "translation": (0.10, "medium", (50, 500), (50, 500)),
    "code_generation": (0.12, "high", (50, 600), (100, 800)),
    "reasoning": (0.08, "high", (50, 400), (200, 1000)),
}
FIXED = {task: "alpha-pro" if task in ("code_generation", "reasoning") else "beta-std"
         for task in TASK_CLASSES}
MODES = ("fixed", "router:cheapest", "router:balanced")
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge".split()


@dataclass(frozen=True)
class Call:
    hour: int
    task: str
    prompt: str
    max_tokens: int


@dataclass
class Outcome:
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0
    cost: Decimal = Decimal(0)
    models: Counter[str] = field(default_factory=Counter)


def day_of_traffic(rng: random.Random, per_hour: int) -> list[Call]:
    tasks = list(TRAFFIC)
    weights = [TRAFFIC[t][0] for t in tasks]
    calls = []
    for hour in range(24):
        for task in rng.choices(tasks, weights, k=per_hour):
            _, _, words, output = TRAFFIC[task]
            prompt = " ".join(rng.choices(WORDS, k=rng.randint(*words)))
            calls.append(Call(hour, task, prompt, rng.randint(*output)))
    return calls


def hour_script(provider: Provider, hour: int, rng: random.Random,
                count: int) -> list[dict[str, Any]]:
    """`count` behaviours for one provider's hour: a jittered delay, failures at its rate."""
    slowdown, failure_rate = 1.0, provider.failure_rate
    name, hours, slower, failing = DEGRADED
    if provider.name == name and hour in hours:
        slowdown, failure_rate = slower, failing
    script = []
    for _ in range(count):
        delay = round(provider.delay_ms * slowdown * rng.uniform(0.6, 1.6), 1)
        if rng.random() < failure_rate:
            script.append({"status": 503, "delay_ms": delay / 4})
        else:
            script.append({"delay_ms": delay})
    return script


def write_tables(directory: Path) -> tuple[Path, Path]:
    prices = ["[meta]", 'currency = "USD"', 'unit = "per_million_tokens"', ""]
    models = []
    for p in PROVIDERS:
        prices += [f'[models."{p.model}"]', f'provider = "{p.name}"', f"input = {p.input_usd}",
                   f"output = {p.output_usd}", ""]
        quality = ", ".join(f'{t} = "{q}"' for t, q in p.quality.items())
        models += [f'[models."{p.model}"]', f'provider = "{p.name}"',
                   "context_window = 128000", "max_output_tokens = 16000",
                   'modalities = ["text"]', "tools = true", "json_mode = true",
                   'source = "bench/smart_router.py"', "source_date = 2026-12-04",
                   f"latency = {{ first_token_ms = {p.delay_ms * 2}, output_tokens_per_s = 1000,"
                   ' source = "bench", source_date = 2026-12-04 }',
                   f"quality = {{ {quality} }}", 'quality_source = "bench"',
                   "quality_date = 2026-12-04", ""]
    (directory / "prices.toml").write_text("\n".join(prices))
    (directory / "models.toml").write_text("\n".join(models))
    return directory / "prices.toml", directory / "models.toml"


def gateway_settings(dsn: str, urls: dict[str, str], tables: tuple[Path, Path],
                     spill: Path) -> Any:
    routes = {f"{strategy}-{task}": {"strategy": strategy, "task": task,
                                     "quality": TRAFFIC[task][1]}
              for strategy in ("cheapest", "balanced") for task in TASK_CLASSES}
    providers = {p.name: {"kind": "openai_compatible", "base_url": urls[p.name],
                          "max_retries": 1, "retry_backoff_s": 0.005,
                          "retry_backoff_max_s": 0.02, "breaker_failures": 5,
                          "breaker_cooldown_s": 2.0, "models": [p.model]}
                 for p in PROVIDERS}
    return settings_from_mapping({
        "database": {"url": dsn, "migrate_on_start": False},
        "logging": {"level": "warning"},
        "ledger": {"spill_dir": str(spill)},
        "pricing": {"file": str(tables[0])},
        "routing": {"catalogue_file": str(tables[1]), "routes": routes,
                    "default_provider": "alpha", "observe_window_s": 6.0, "min_samples": 5,
                    "observe_seed": False,
                    "fallbacks": {"alpha-pro": ["beta-std"], "beta-std": ["alpha-pro"]}},
        "providers": providers}, {})


def model_for(mode: str, call: Call) -> str:
    if mode == "fixed":
        return FIXED[call.task]
    return f"{mode.removeprefix('router:')}-{call.task}"


def start_fake() -> tuple[subprocess.Popen[str], str]:
    """A fake upstream process; answers it and its host URL (its base URL adds /v1)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.testing.fake_upstream", "--reply-tokens", "100000"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise RuntimeError(f"the fake upstream did not start: {line!r}")
    return process, line.rsplit(" ", 1)[1].strip()


async def replay(mode: str, calls: list[Call], seed: int, client: TestClient, key: str,
                 fakes: dict[str, str], concurrency: int) -> Outcome:
    outcome = Outcome()
    rng = random.Random(seed)  # the same provider behaviour for every mode
    headers = {"Authorization": f"Bearer {key}"}

    async def send(call: Call) -> None:
        body = {"model": model_for(mode, call), "max_tokens": call.max_tokens,
                "messages": [{"role": "user", "content": call.prompt}]}
        started = time.perf_counter()
        resp = await client.post("/v1/chat/completions", json=body, headers=headers)
        answer = await resp.json()
        outcome.latencies_ms.append((time.perf_counter() - started) * 1000)
        if resp.status != 200:
            outcome.failures += 1
            return
        outcome.cost += Decimal(resp.headers["X-AI-Cost-Gateway-Cost"])
        outcome.models[answer["model"]] += 1

    control = aiohttp.ClientSession()
    for hour in range(24):
        todo = [c for c in calls if c.hour == hour]
        for p in PROVIDERS:  # up to two attempts per call reach one provider
            async with control.delete(f"{fakes[p.name]}/_fake/script") as resp:
                assert resp.status == 200
            async with control.post(f"{fakes[p.name]}/_fake/script",
                                    json=hour_script(p, hour, rng, 2 * len(todo))) as resp:
                assert resp.status == 200, await resp.text()
        queue = asyncio.Queue[Call]()
        for call in todo:
            queue.put_nowait(call)

        async def worker(queue: asyncio.Queue[Call] = queue) -> None:
            while not queue.empty():
                await send(queue.get_nowait())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    await control.close()
    return outcome


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(int(q * len(ordered) + 0.999999) - 1, 0)]


async def run(args: argparse.Namespace) -> None:
    name = f"gw_bench_router_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = urlunsplit(urlsplit(args.dsn)._replace(path=f"/{name}"))
    processes = []
    try:
        conn = await asyncpg.connect(dsn)
        await migrate.migrate(conn, REPO / "migrations")
        fakes, urls = {}, {}
        for provider in PROVIDERS:
            process, host = start_fake()
            processes.append(process)
            fakes[provider.name], urls[provider.name] = host, f"{host}/v1"
        calls = day_of_traffic(random.Random(args.seed), args.per_hour)
        results: dict[str, tuple[Outcome, Decimal, float]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            tables = write_tables(Path(tmp))
            for mode in MODES:
                project_id = await conn.fetchval(
                    "INSERT INTO projects (name, plan) VALUES ($1, 'enterprise') RETURNING id",
                    f"bench-{mode}")
                key, prefix = projects.new_key()
                await conn.execute("INSERT INTO api_keys (project_id, prefix, key_hash) "
                                   "VALUES ($1, $2, $3)", project_id, prefix,
                                   projects.hash_key(key))
                settings = gateway_settings(dsn, urls, tables, Path(tmp) / "spill")
                started = time.perf_counter()
                async with TestClient(TestServer(build_app(settings))) as client:
                    outcome = await replay(mode, calls, args.seed, client, key, fakes,
                                           args.concurrency)
                elapsed = time.perf_counter() - started
                ledger = await conn.fetchval("SELECT coalesce(sum(cost_usd), 0) FROM "
                                             "usage_records WHERE project_id = $1", project_id)
                results[mode] = (outcome, ledger, elapsed)
                print(f"{mode}: {len(calls)} calls in {elapsed:.1f} s", flush=True)
        await conn.close()
        report(results, args)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        admin = await asyncpg.connect(args.dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def report(results: dict[str, tuple[Outcome, Decimal, float]], args: argparse.Namespace) -> None:
    print(f"\nseed {args.seed}, {args.per_hour * 24} requests, {args.concurrency} at a time; "
          f"{DEGRADED[0]} degraded in hours {DEGRADED[1].start}-{DEGRADED[1].stop - 1}\n")
    print("| routing | requests | failed | cost (USD) | ledger = headers | p50 ms | p95 ms "
          "| served by |")
    print("|---|---:|---:|---:|:---:|---:|---:|---|")
    for mode, (o, ledger, _) in results.items():
        served = ", ".join(f"{m} {n / sum(o.models.values()):.0%}"
                           for m, n in sorted(o.models.items()))
        print(f"| {mode} | {len(o.latencies_ms)} | {o.failures} | {o.cost:.6f} "
              f"| {'yes' if ledger == o.cost else f'no ({ledger})'} "
              f"| {statistics.median(o.latencies_ms):.0f} | {p(o.latencies_ms, 0.95):.0f} "
              f"| {served} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--per-hour", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--dsn", default=os.environ.get(
        "GATEWAY_DATABASE_URL", "postgresql://127.0.0.1:5432/test"))
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
