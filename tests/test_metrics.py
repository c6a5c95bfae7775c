"""`GET /metrics`: real requests through the gateway show up, in strictly valid Prometheus
text format 0.0.4 (checked by a parser written here, stricter than Prometheus's own)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import (
    FakeUpstream,
    SettingsFactory,
    admin_headers,
    chat_body,
    create_project,
    wait_for_rows,
)
from structlog.testing import capture_logs

from gateway import __version__
from gateway.app import build_app
from gateway.domain import Usage, UsageRecord
from gateway.http.metrics import metrics_middleware, scrape
from gateway.keys import LEDGER, METRICS, PIPELINE
from gateway.metrics import CONTENT_TYPE, OVERHEAD_BUCKETS, Metrics

# --- A strict parser for the text exposition format 0.0.4. ---

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
VALUE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]Inf|NaN")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
Labels = tuple[tuple[str, str], ...]


@dataclass
class Exposition:
    types: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, Labels], str] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> Decimal | None:
        raw = self.samples.get((name, tuple(sorted(labels.items()))))
        return None if raw is None else Decimal(raw.replace("Inf", "Infinity"))

    def value(self, name: str, **labels: str) -> Decimal:
        found = self.get(name, **labels)
        assert found is not None, f"no sample {name}{labels}"
        return found

    def series(self, name: str) -> dict[Labels, Decimal]:
        return {labels: Decimal(v) for (n, labels), v in self.samples.items() if n == name}


def _labels(text: str, line: str) -> tuple[Labels, str]:
    """Parse `{a="x",b="y"}` at the start of text: (labels, the rest)."""
    assert text.startswith("{")
    pairs: list[tuple[str, str]] = []
    i = 1
    while text[i] != "}":
        match = LABEL_NAME.match(text, i)
        assert match, f"bad label name in {line!r}"
        name = match.group()
        assert not name.startswith("__"), line
        i = match.end()
        assert text[i:i + 2] == '="', f"expected =\" in {line!r}"
        i += 2
        value = []
        while text[i] != '"':
            if text[i] == "\\":
                escaped = {"\\": "\\", '"': '"', "n": "\n"}.get(text[i + 1])
                assert escaped is not None, f"bad escape in {line!r}"
                value.append(escaped)
                i += 2
            else:
                value.append(text[i])
                i += 1
        pairs.append((name, "".join(value)))
        i += 1
        if text[i] == ",":
            i += 1
            assert text[i] != "}", f"trailing comma in {line!r}"
        else:
            assert text[i] == "}", f"expected , or }} in {line!r}"
    names = [n for n, _ in pairs]
    assert len(set(names)) == len(names), f"repeated label in {line!r}"
    return tuple(sorted(pairs)), text[i + 1:]


def _family(name: str, types: dict[str, str]) -> str:
    if name in types and types[name] != "histogram":
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and types.get(base) == "histogram":
            return base
    raise AssertionError(f"sample {name} has no TYPE line before it")


def parse(text: str) -> Exposition:
    assert text.endswith("\n"), "the exposition must end with a newline"
    out = Exposition()
    helps: set[str] = set()
    finished: set[str] = set()  # families whose samples are over: they must stay grouped
    current = ""
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert NAME.fullmatch(name) and name not in helps and name not in finished, line
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert NAME.fullmatch(name) and kind in TYPES and name not in out.types, line
            assert name in helps, f"HELP before TYPE for {name}"
            out.types[name] = kind
        else:
            assert not line.startswith("#"), f"unexpected comment {line!r}"
            match = NAME.match(line)
            assert match, f"bad sample line {line!r}"
            name, rest = match.group(), line[match.end():]
            labels: Labels = ()
            if rest.startswith("{"):
                labels, rest = _labels(rest, line)
            assert rest.startswith(" "), f"expected one space in {line!r}"
            value = rest[1:]
            assert VALUE.fullmatch(value), f"bad value in {line!r}"
            family = _family(name, out.types)
            if family != current:
                assert family not in finished, f"{family} samples are not grouped"
                if current:
                    finished.add(current)
                current = family
            assert (name, labels) not in out.samples, f"duplicate series {line!r}"
            out.samples[(name, labels)] = value
    _check_histograms(out)
    return out


def _check_histograms(out: Exposition) -> None:
    """Buckets cumulative (never decreasing) in increasing `le`, ending at +Inf = _count."""
    for family, kind in out.types.items():
        if kind != "histogram":
            continue
        series: dict[Labels, list[tuple[float, Decimal]]] = {}
        for (name, labels), raw in out.samples.items():
            if name == f"{family}_bucket":
                rest = tuple(p for p in labels if p[0] != "le")
                le = dict(labels)["le"]
                series.setdefault(rest, []).append((float(le), Decimal(raw)))
        for labels, buckets in series.items():
            bounds = [b for b, _ in buckets]
            counts = [c for _, c in buckets]
            assert bounds == sorted(bounds) and bounds[-1] == float("inf"), family
            assert counts == sorted(counts), f"{family}{labels} buckets decrease"
            assert out.get(f"{family}_count", **dict(labels)) == counts[-1]
            assert out.get(f"{family}_sum", **dict(labels)) is not None


GOOD = '# HELP x_total X.\n# TYPE x_total counter\nx_total{a="1"} 2\n'


def hist(one: int) -> str:
    return ('# HELP h H.\n# TYPE h histogram\n'
            f'h_bucket{{le="1.0"}} {one}\nh_bucket{{le="+Inf"}} 2\nh_sum 3.5\nh_count 2\n')



@pytest.mark.parametrize("text", [
    GOOD.rstrip("\n"),  # no final newline
    GOOD.replace('a="1"', 'a="\\q"'),  # an escape 0.0.4 does not have
    GOOD.replace('a="1"', 'a="1",'),  # trailing comma
    GOOD + 'x_total{a="1"} 3\n',  # the same series twice
    GOOD.replace("# TYPE x_total counter\n", ""),  # no TYPE before the samples
    GOOD.replace(" 2\n", "  2\n"),  # two spaces
    GOOD.replace(" 2\n", " 0x2\n"),  # not a Go float
    hist(3),  # buckets that decrease
    hist(1).replace("h_count 2", "h_count 5"),  # +Inf bucket != count
    GOOD + hist(1) + 'x_total{a="2"} 1\n',  # a family split in two
])
def test_the_parser_rejects_what_prometheus_would_not_take(text: str) -> None:
    parse(GOOD + hist(1))
    with pytest.raises(AssertionError):
        parse(text)


# --- The gateway under test, with /metrics wired whether or not app.py does it yet. ---


async def _watch(app: web.Application) -> AsyncIterator[None]:
    metrics, pipeline, ledger = app[METRICS], app[PIPELINE], app[LEDGER]
    if getattr(pipeline, "metrics", None) is not metrics:  # the pipeline does not observe yet
        queue = ledger.record

        def record_and_observe(row: UsageRecord) -> None:
            queue(row)
            metrics.observe(row)

        ledger.record = record_and_observe  # type: ignore[method-assign, assignment]
    metrics.watch_ledger(ledger)
    metrics.watch_breakers(pipeline.breakers)
    yield


def with_metrics(app: web.Application) -> web.Application:
    if METRICS not in app:
        app[METRICS] = Metrics()
    if not any(r.canonical == "/metrics" for r in app.router.resources()):
        app.router.add_get("/metrics", scrape)
    if not any(getattr(m, "__name__", "") == "count_responses" for m in app.middlewares):
        app.middlewares.insert(0, metrics_middleware(app[METRICS]))
    app.cleanup_ctx.append(_watch)
    return app


MetricsGateway = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def make_metrics_gateway(aiohttp_client: Any, make_settings: SettingsFactory,
                               db: asyncpg.Connection) -> MetricsGateway:
    async def make(**sections: dict[str, Any]) -> TestClient:
        client: TestClient = await aiohttp_client(with_metrics(build_app(
            make_settings(**sections))))
        return client

    return make


async def scrape_metrics(client: TestClient) -> Exposition:
    resp = await client.get("/metrics")  # no credentials: the route is open
    assert resp.status == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE
    return parse(await resp.text())


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


MODEL = "gpt-4o-mini"


async def test_requests_tokens_cost_latency_attempts_and_breakers(
        make_metrics_gateway: MetricsGateway, fake_upstream: FakeUpstream) -> None:
    client = await make_metrics_gateway(providers={"openai": {"breaker_failures": 3}})
    _, key = await create_project(client)
    _, limited = await create_project(client, requests_per_minute=1)
    resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
    assert resp.status == 200
    resp = await client.post("/v1/chat/completions", json=chat_body(stream=True),
                             headers=_auth(key))
    assert resp.status == 200 and "[DONE]" in await resp.text()
    statuses = [(await client.post("/v1/chat/completions", json=chat_body(),
                                   headers=_auth(limited))).status for _ in range(2)]
    assert statuses == [200, 429]
    resp = await client.post("/v1/chat/completions", json=chat_body())  # no key: no row
    assert resp.status == 401
    fake_upstream.script({"status": 500}, {"status": 500}, {"status": 500})
    resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
    assert resp.status == 500
    rows = await wait_for_rows(client, 5)
    assert len(rows) == 5

    m = await scrape_metrics(client)
    requests = "gateway_requests_total"
    assert m.value(requests, provider="openai", model=MODEL, status="200") == 3
    assert m.value(requests, provider="openai", model=MODEL, status="429") == 1
    assert m.value(requests, provider="openai", model=MODEL, status="500") == 1
    assert sum(m.series(requests).values()) == 5  # the 401 has no project, so no row

    http = "gateway_http_responses_total"
    route = "/v1/chat/completions"
    assert m.value(http, method="POST", route=route, status="200") == 3
    assert m.value(http, method="POST", route=route, status="401") == 1
    assert m.value(http, method="POST", route=route, status="429") == 1
    assert m.value(http, method="POST", route=route, status="500") == 1

    for kind, column in (("input", "input_tokens"), ("output", "output_tokens")):
        total = sum(r[column] for r in rows)
        assert total > 0
        assert m.value("gateway_tokens_total", provider="openai", model=MODEL,
                       kind=kind) == total
    cached = sum(r["cached_input_tokens"] for r in rows)
    assert m.get("gateway_tokens_total", provider="openai", model=MODEL,
                 kind="cached_input") == (cached or None)
    cost = sum((r["cost_usd"] for r in rows), Decimal(0))
    assert cost > 0
    assert m.value("gateway_cost_usd_total", provider="openai", model=MODEL) == cost  # exact

    assert m.value("gateway_overhead_seconds_count", provider="openai") == 5
    forwarded = [r for r in rows if r["upstream_ms"] is not None]
    assert len(forwarded) == 4  # all but the rate-limited one
    assert m.value("gateway_upstream_seconds_count", provider="openai", model=MODEL) == 4
    upstream_s = sum(r["upstream_ms"] for r in forwarded) / 1000
    measured = m.value("gateway_upstream_seconds_sum", provider="openai", model=MODEL)
    assert abs(float(measured) - upstream_s) < 1e-6

    attempts = "gateway_upstream_attempts_total"
    assert m.value(attempts, provider="openai", status="200", code="") == 3
    assert m.value(attempts, provider="openai", status="500", code="upstream_error") == 3
    assert m.value("gateway_upstream_retries_total", provider="openai") == 2
    assert m.series("gateway_upstream_fallbacks_total") == {}
    assert m.series("gateway_rejections_total") == {
        (("code", "rate_limit_exceeded"), ("status", "429")): 1}

    state = "gateway_circuit_breaker_state"
    assert m.value(state, provider="openai", state="open") == 1  # three failures opened it
    assert m.value(state, provider="openai", state="closed") == 0
    assert m.value(state, provider="anthropic", state="closed") == 1

    assert m.value("gateway_ledger_written_rows_total") >= 5
    assert m.value("gateway_ledger_pending_rows") >= 0
    assert m.value("gateway_ledger_flush_failures_total") == 0
    assert m.value("gateway_ledger_flush_lag_seconds") >= 0
    assert m.value("gateway_ledger_spill_bytes") >= 0
    assert m.value("gateway_build_info", version=__version__,
                   python=dict(next(iter(m.series("gateway_build_info"))))["python"]) == 1
    assert m.value("gateway_uptime_seconds") >= 0
    text = (await (await client.get("/metrics")).text())
    assert key not in text and "project-" not in text  # no keys, no project names


FALLBACKS = {"fallbacks": {"gpt-4o": ["claude-sonnet-4-5"]}}


async def test_a_call_is_counted_after_its_answer_and_before_the_next_request(
        make_metrics_gateway: MetricsGateway, fake_upstream: FakeUpstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Metrics are counted once the answer is on its way (`call_soon`), yet a scrape sent
    right after the answer already sees them; a failure counting them costs neither the
    answer nor the usage row."""
    client = await make_metrics_gateway()
    _, key = await create_project(client)
    for n in range(1, 4):
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
        assert resp.status == 200
        m = await scrape_metrics(client)  # no wait for the ledger, no sleep
        assert m.value("gateway_requests_total", provider="openai", model=MODEL,
                       status="200") == n

    def broken(row: UsageRecord) -> None:
        raise RuntimeError("metrics are broken")

    monkeypatch.setattr(client.app[METRICS], "observe", broken)
    with capture_logs() as logs:
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=_auth(key))
        assert resp.status == 200
        await scrape_metrics(client)
    assert [e["request_id"] for e in logs if e["event"] == "request_accounting_failed"] == [
        resp.headers["X-AI-Cost-Gateway-Request-Id"]]
    assert len(await wait_for_rows(client, 4)) == 4


async def test_budget_rejections_and_fallbacks(make_metrics_gateway: MetricsGateway,
                                               fake_upstream: FakeUpstream) -> None:
    client = await make_metrics_gateway(routing=FALLBACKS)
    _, poor = await create_project(client, monthly_budget_usd="0.0000001")
    resp = await client.post("/v1/chat/completions", json=chat_body(max_tokens=1000),
                             headers=_auth(poor))
    assert resp.status == 402
    _, key = await create_project(client)
    fake_upstream.script({"status": 500}, {"status": 500}, {"status": 500})
    resp = await client.post("/v1/chat/completions", json=chat_body(model="gpt-4o"),
                             headers=_auth(key))
    assert resp.status == 200, await resp.text()
    await wait_for_rows(client, 2)

    m = await scrape_metrics(client)
    assert m.series("gateway_rejections_total") == {
        (("code", "budget_exceeded"), ("status", "402")): 1}
    assert m.value("gateway_requests_total", provider="anthropic", model="claude-sonnet-4-5",
                   status="200") == 1
    assert m.series("gateway_upstream_fallbacks_total") == {
        (("from_provider", "openai"), ("to_provider", "anthropic")): 1}
    assert m.value("gateway_upstream_retries_total", provider="openai") == 2
    assert m.value("gateway_upstream_attempts_total", provider="anthropic", status="200",
                   code="") == 1


# --- The registry alone: escaping, buckets, the cardinality cap. ---


def usage_row(model: str = MODEL, *, provider: str = "openai", status: int = 200,
              overhead_ms: float = 1.0, upstream_ms: float | None = 100.0,
              attempts: list[dict[str, Any]] | None = None,
              error_code: str | None = None) -> UsageRecord:
    now = datetime.now(UTC)
    return UsageRecord(
        request_id=uuid.uuid4(), project_id=1, api_key_id=1, provider=provider, model=model,
        endpoint="/v1/chat/completions", status=status, streamed=False,
        usage=Usage(input_tokens=10, cached_input_tokens=4, output_tokens=5,
                    cache_write_tokens=2),
        cost_usd=Decimal("0.0000015"), priced_by_fallback=False, price_model=model,
        overhead_ms=overhead_ms, upstream_ms=upstream_ms, error_code=error_code, metadata={},
        started_at=now, finished_at=now, attempts=attempts or [])


def test_label_values_are_escaped_and_parse_back() -> None:
    metrics = Metrics()
    model = 'a"b\\c\nd}{,=x'
    metrics.observe(usage_row(model))
    text = metrics.render().decode()
    assert 'model="a\\"b\\\\c\\nd}{,=x"' in text
    m = parse(text)
    assert m.value("gateway_requests_total", provider="openai", model=model, status="200") == 1
    assert m.value("gateway_tokens_total", provider="openai", model=model,
                   kind="cache_write") == 2
    assert m.value("gateway_cost_usd_total", provider="openai", model=model) == Decimal(
        "0.0000015")


def test_histogram_buckets_are_inclusive_cumulative_and_end_at_inf() -> None:
    metrics = Metrics()
    for overhead_ms in (0.5, 0.2, 3.0, 2_000.0):  # 0.5 ms is exactly the first bound
        metrics.observe(usage_row(overhead_ms=overhead_ms))
    m = parse(metrics.render().decode())
    name = "gateway_overhead_seconds"
    first = repr(OVERHEAD_BUCKETS[0])
    assert m.value(f"{name}_bucket", provider="openai", le=first) == 2
    assert m.value(f"{name}_bucket", provider="openai", le="0.005") == 3
    assert m.value(f"{name}_bucket", provider="openai", le="1.0") == 3
    assert m.value(f"{name}_bucket", provider="openai", le="+Inf") == 4
    assert m.value(f"{name}_count", provider="openai") == 4
    assert abs(m.value(f"{name}_sum", provider="openai") - Decimal("2.0037")) < Decimal("1e-9")


def test_label_sets_past_the_cap_fold_into_model_other() -> None:
    metrics = Metrics(max_label_sets=3)
    for n in range(10):
        metrics.observe(usage_row(f"client-model-{n}"))
    m = parse(metrics.render().decode())
    requests = m.series("gateway_requests_total")
    assert len(requests) == 4 and sum(requests.values()) == 10
    assert m.value("gateway_requests_total", provider="openai", model="other",
                   status="200") == 7
    assert m.value("gateway_upstream_seconds_count", provider="openai", model="other") == 7
    assert len(m.series("gateway_tokens_total")) <= 3 + 4  # the cap, then the folds by kind


def test_a_series_adds_up_and_shows_only_what_it_counted() -> None:
    """`observe` keeps the cells of each (provider, model, status) it has seen: the cells of
    the upstream time, tokens and cost only once a row needs them, and past the cap (where
    it keeps no more) rows are folded and counted all the same."""
    metrics = Metrics(max_label_sets=3)
    refused = usage_row("m", status=429, upstream_ms=None, error_code="rate_limit_exceeded")
    refused.usage, refused.cost_usd = Usage(0, 0, 0), Decimal(0)
    for _ in range(3):
        metrics.observe(refused)
    m = parse(metrics.render().decode())
    assert m.value("gateway_requests_total", provider="openai", model="m", status="429") == 3
    assert m.get("gateway_upstream_seconds_count", provider="openai", model="m") is None
    assert m.series("gateway_tokens_total") == {} and m.series("gateway_cost_usd_total") == {}
    assert m.value("gateway_overhead_seconds_count", provider="openai") == 3
    served = usage_row("m", status=429)  # the same series, now with a call, tokens and cost
    for _ in range(2):
        metrics.observe(served)
    for n in range(6):  # two new label sets reach the cap; the other four fold
        for _ in range(2):
            metrics.observe(usage_row(f"late-{n}"))
    m = parse(metrics.render().decode())
    assert m.value("gateway_requests_total", provider="openai", model="m", status="429") == 5
    assert m.value("gateway_upstream_seconds_count", provider="openai", model="m") == 2
    assert m.value("gateway_tokens_total", provider="openai", model="m", kind="input") == 20
    # The cap holds three label sets of tokens too ("m"'s first three kinds): the rest fold.
    assert sum(m.series("gateway_tokens_total").values()) == 14 * (10 + 4 + 2 + 5)
    assert m.value("gateway_cost_usd_total", provider="openai", model="m") == Decimal("0.000003")
    assert m.value("gateway_requests_total", provider="openai", model="late-1",
                   status="200") == 2
    assert m.value("gateway_requests_total", provider="openai", model="other",
                   status="200") == 8
    assert sum(m.series("gateway_requests_total").values()) == 17
    assert m.value("gateway_overhead_seconds_count", provider="openai") == 17


def test_retries_and_fallbacks_come_from_the_attempts() -> None:
    metrics = Metrics()
    attempts = [
        {"provider": "openai", "model": "gpt-4o", "credential": "a", "status": 429,
         "error_code": "upstream_error", "ms": 3.0},
        {"provider": "openai", "model": "gpt-4o", "credential": "b", "status": 503,
         "error_code": "circuit_open", "ms": 0.0},
        {"provider": "anthropic", "model": "claude-sonnet-4-5", "credential": "default",
         "status": 200, "error_code": None, "ms": 9.0}]
    metrics.observe(usage_row("claude-sonnet-4-5", provider="anthropic", attempts=attempts))
    relayed = [{"provider": "openai", "model": MODEL, "credential": "a", "status": 429,
                "error_code": "upstream_error", "ms": 2.0}]
    metrics.observe(usage_row(status=429, attempts=relayed, error_code="upstream_error"))
    metrics.observe(usage_row(status=429, upstream_ms=None, error_code="rate_limit_exceeded"))
    m = parse(metrics.render().decode())
    assert m.value("gateway_upstream_retries_total", provider="openai") == 1
    assert m.value("gateway_upstream_fallbacks_total", from_provider="openai",
                   to_provider="anthropic") == 1
    assert m.value("gateway_upstream_attempts_total", provider="openai", status="503",
                   code="circuit_open") == 1
    # A 429 the gateway relays after reaching the upstream is not a rate-limit rejection;
    # one with no attempts at all was refused by the gateway itself.
    assert m.series("gateway_rejections_total") == {
        (("code", "rate_limit_exceeded"), ("status", "429")): 1}


def test_scrape_gauges_before_anything_is_watched() -> None:
    metrics = Metrics(version="9.9.9", clock=lambda: 1_000.0)
    m = parse(metrics.render().decode())
    assert m.value("gateway_build_info", version="9.9.9",
                   python=dict(next(iter(m.series("gateway_build_info"))))["python"]) == 1
    assert m.value("gateway_process_start_time_seconds") == 1000
    assert m.series("gateway_ledger_pending_rows") == {}
    assert m.series("gateway_circuit_breaker_state") == {}
    assert m.types["gateway_overhead_seconds"] == "histogram"
    assert m.types["gateway_ledger_written_rows_total"] == "counter"


async def test_tokenizer_counts_by_backend_are_scraped(make_gateway: Any) -> None:
    gateway = await make_gateway()
    resp = await gateway.post("/api/tokens/count", headers=admin_headers(),
                              json={"model": "gpt-4o-mini", "texts": ["hello world", "héllo"]})
    assert resp.status == 200, await resp.text()
    text = await (await gateway.get("/metrics")).text()
    lines = {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in text.splitlines()
             if line.startswith("gateway_tokenizer_")}
    assert int(lines['gateway_tokenizer_documents_total{backend="cpu"}']) >= 2
    assert int(lines['gateway_tokenizer_bytes_total{backend="cpu"}']) >= len("hello world")
    assert "# TYPE gateway_tokenizer_fallbacks_total counter" in text
