"""The smart router's pure parts: the catalogue's checks, the observation window, the
balancing strategies, the settings of `[routing.routes]`, and the ledger's new column in old
spill lines."""

from __future__ import annotations

import copy
import random
import tomllib
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from gateway.catalogue import Catalogue, CatalogueError
from gateway.domain import Project, Usage, UsageRecord
from gateway.ledger import COLUMNS, as_row, decode_row, encode_row
from gateway.observed import Observations, percentile
from gateway.pricing import PriceTable
from gateway.providers.balancer import Balancer
from gateway.providers.base import Credential
from gateway.providers.resilience import OPEN
from gateway.settings import (
    PROJECT_ROOT,
    PricingSettings,
    ProviderSettings,
    RoutingSettings,
    SettingsError,
    settings_from_mapping,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _raw_catalogue() -> dict[str, Any]:
    return tomllib.loads((PROJECT_ROOT / "config" / "models.toml").read_text())


# -- catalogue ------------------------------------------------------------------------------

def test_the_shipped_catalogue_loads_and_every_model_has_a_price() -> None:
    catalogue = Catalogue.from_mapping(_raw_catalogue())
    catalogue.check_prices(PriceTable.load(PricingSettings()))
    assert len(catalogue) >= 20
    info = catalogue.get("claude-3-5-haiku")
    assert info is not None and info.provider == "anthropic"
    assert "image" not in info.modalities and info.quality["chat"] == 2


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.pop("context_window"), r"models\.'gpt-4o' lacks 'context_window'"),
    (lambda m: m.update(colour="red"), r"models\.'gpt-4o': unknown key 'colour'"),
    (lambda m: m["quality"].update(chat="great"), r"models\.'gpt-4o'\.quality\.chat: 'great'"),
    (lambda m: m["quality"].pop("reasoning"), r"models\.'gpt-4o'\.quality must give a tier"),
    (lambda m: m.update(modalities=["image"]), r"models\.'gpt-4o'\.modalities"),
    (lambda m: m.update(max_output_tokens=0), r"models\.'gpt-4o'\.max_output_tokens must be"),
    (lambda m: m.update(source_date="2026"), r"models\.'gpt-4o'\.source_date must be a date"),
    (lambda m: m["latency"].pop("source"), r"models\.'gpt-4o'\.latency must be a table"),
    (lambda m: m.update(tools="yes"), r"models\.'gpt-4o'\.tools must be true or false"),
])
def test_a_wrong_catalogue_entry_fails_naming_the_key(change: Any, message: str) -> None:
    raw = copy.deepcopy(_raw_catalogue())
    change(raw["models"]["gpt-4o"])
    with pytest.raises(CatalogueError, match=message):
        Catalogue.from_mapping(raw)


def test_a_catalogued_model_without_a_price_or_with_another_provider_fails() -> None:
    prices = PriceTable.load(PricingSettings())
    raw = copy.deepcopy(_raw_catalogue())
    raw["models"]["gpt-99"] = raw["models"]["gpt-4o"]
    with pytest.raises(CatalogueError, match=r"models\.'gpt-99' has no price"):
        Catalogue.from_mapping(raw).check_prices(prices)
    raw = copy.deepcopy(_raw_catalogue())
    raw["models"]["gpt-4o"]["provider"] = "mistral"
    with pytest.raises(CatalogueError, match=r"price table says 'openai'"):
        Catalogue.from_mapping(raw).check_prices(prices)


# -- observations ---------------------------------------------------------------------------

def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.95) == 95
    assert percentile([7.0], 0.95) == 7


def test_samples_leave_the_window_and_the_stats_follow() -> None:
    clock = Clock()
    observed = Observations(60, clock=clock)
    for ms in (100, 200, 300):
        observed.record("openai", "m", ms / 2, ms, True)
    observed.record("openai", "m", 50, 50, False)
    stats = observed.stats("openai", "m")
    assert stats is not None
    assert (stats.samples, stats.errors, stats.error_rate) == (4, 1, 0.25)
    assert (stats.total_p50_ms, stats.total_p95_ms, stats.first_p50_ms) == (200, 300, 100)
    clock.now += 30
    observed.record("openai", "m", 5, 10, True)
    clock.now += 31  # the first four are now older than the window
    stats = observed.stats("openai", "m")
    assert stats is not None and (stats.samples, stats.errors, stats.total_p50_ms) == (1, 0, 10)
    clock.now += 31
    assert observed.stats("openai", "m") is None


def test_a_request_s_attempts_become_errors_and_one_latency_sample() -> None:
    observed = Observations(60, clock=Clock())
    observed.record_attempts([
        {"provider": "openai", "model": "a", "status": 500, "ms": 40.0},
        {"provider": "openai", "model": "a", "status": 400, "ms": 5.0},  # the request's fault
        {"provider": "anthropic", "model": "b", "status": 200, "ms": 80.0}], upstream_ms=300.0)
    a, b = observed.stats("openai", "a"), observed.stats("anthropic", "b")
    assert a is not None and (a.samples, a.errors, a.total_p50_ms) == (1, 1, None)
    assert b is not None and (b.first_p50_ms, b.total_p50_ms) == (80.0, 255.0)  # 300 - 45


# -- balancing ------------------------------------------------------------------------------

CREDENTIALS = [Credential("a", "k", "http://a"), Credential("b", "k", "http://b"),
               Credential("c", "k", "http://c")]


def _balancer(strategy: str, clock: Clock | None = None, seed: int = 1) -> Balancer:
    settings = RoutingSettings(balancing={"m": strategy}, latency_decay_s=10)
    providers = {"p": ProviderSettings(breaker_failures=2, breaker_cooldown_s=30)}
    return Balancer(settings, providers, rng=random.Random(seed), clock=clock or Clock())


def test_least_outstanding_picks_the_least_busy_credential() -> None:
    balancer = _balancer("least_outstanding")
    for name, busy in (("a", 3), ("b", 1), ("c", 2)):
        for _ in range(busy):
            balancer.started("p", name)
    assert [c.name for c in balancer.order("p", "m", CREDENTIALS)] == ["b", "c", "a"]
    balancer.ended("p", "a")
    balancer.ended("p", "a")
    balancer.ended("p", "a")
    assert balancer.order("p", "m", CREDENTIALS)[0].name == "a"


def test_latency_aware_prefers_the_lower_ewma_of_two_random_choices() -> None:
    clock = Clock()
    balancer = _balancer("latency", clock)
    for name, ms in (("a", 300.0), ("b", 20.0), ("c", 150.0)):
        balancer.answered("p", name, ms)
    firsts = [balancer.order("p", "m", CREDENTIALS)[0].name for _ in range(300)]
    assert "a" not in firsts  # never the lower of two, whichever two are drawn
    assert firsts.count("b") > firsts.count("c") > 0  # b wins every draw it is in: 2 of 3
    clock.now += 10
    balancer.answered("p", "b", 1000.0)  # b slows down: its EWMA moves by 1 - e^-1
    state = balancer.target("p", "b")
    assert state.ewma_ms == pytest.approx(20 + (1000 - 20) * (1 - 2.718281828 ** -1), rel=1e-6)
    assert balancer.order("p", "m", CREDENTIALS)[-1].name == "b"


def test_an_unhealthy_credential_is_skipped_until_its_breaker_closes() -> None:
    clock = Clock()
    balancer = _balancer("weighted", clock)
    for _ in range(2):
        balancer.started("p", "b")
        balancer.ended("p", "b", failed=True)
    assert balancer.target("p", "b").breaker.state == OPEN
    for _ in range(50):
        assert "b" not in {c.name for c in balancer.order("p", "m", CREDENTIALS)}
    clock.now += 30  # cooldown over: half-open, b may take the probe again
    assert any("b" in {c.name for c in balancer.order("p", "m", CREDENTIALS)}
               for _ in range(5))


def test_the_default_strategy_is_weighted_and_a_lone_credential_is_returned_as_is() -> None:
    balancer = _balancer("least_outstanding")
    assert balancer.strategy("other") == "weighted"
    assert balancer.order("p", "m", CREDENTIALS[:1]) == CREDENTIALS[:1]
    weights = [Credential("a", "k", "http://a", weight=0), Credential("b", "k", "http://b")]
    assert [c.name for c in balancer.order("p", "other", weights)] == ["b", "a"]


# -- settings -------------------------------------------------------------------------------

def test_routes_and_balancing_are_read_and_checked() -> None:
    settings = settings_from_mapping({"routing": {
        "routes": {"cheap-code": {"strategy": "cheapest", "task": "code_generation",
                                  "quality": "high", "max_cost_usd": Decimal("0.01"),
                                  "requires": ["tools"]}},
        "balancing": {"gpt-4o": "latency"}}}, {})
    route = settings.routing.routes["cheap-code"]
    assert (route.strategy, route.task, route.max_cost_usd, route.requires) == (
        "cheapest", "code_generation", Decimal("0.01"), ("tools",))
    assert settings.routing.balancing == {"gpt-4o": "latency"}
    for raw, message in (
            ({"routes": {"x": {"task": "poetry"}}}, r"routing\.routes\.x\.task: 'poetry'"),
            ({"routes": {"x": {"requires": ["wings"]}}}, r"routing\.routes\.x\.requires"),
            ({"routes": {"router:x": {}}}, r"routing\.routes\.router:x"),
            ({"routes": {"x": {"colour": 1}}}, r"unknown setting routing\.routes\.x\.colour"),
            ({"balancing": {"gpt-4o": "random"}}, r"routing\.balancing\.gpt-4o: 'random'"),
            ({"default_balancing": "random"}, r"routing\.default_balancing")):
        with pytest.raises(SettingsError, match=message):
            settings_from_mapping({"routing": raw}, {})


# -- ledger ---------------------------------------------------------------------------------

def test_route_reason_travels_through_spill_lines_and_old_lines_still_decode() -> None:
    now = datetime.now(UTC)
    record = UsageRecord(
        request_id=uuid.uuid4(), project_id=1, api_key_id=2, provider="openai",
        model="gpt-5-nano", endpoint="/v1/chat/completions", status=200, streamed=False,
        usage=Usage(input_tokens=10, output_tokens=5), cost_usd=Decimal("0.0000025"),
        priced_by_fallback=False, price_model="gpt-5-nano", overhead_ms=1.0, upstream_ms=2.0,
        error_code=None, metadata={}, started_at=now, finished_at=now,
        requested_model="router:cheapest", route_reason="cheapest: openai/gpt-5-nano")
    row = as_row(record)
    assert decode_row(encode_row(row)) == row
    old = orjson.loads(encode_row(row))
    del old["route_reason"]  # a line spilled by a release before the column
    decoded = decode_row(orjson.dumps(old))
    assert decoded[COLUMNS.index("route_reason")] is None
    assert decoded[:-1] == row[:-1]


def test_the_number_of_windows_is_bounded_and_expired_ones_make_room() -> None:
    clock = Clock()
    observed = Observations(60, max_keys=2, clock=clock)
    observed.record("p", "a", 1, 1, True)
    observed.record("p", "b", 1, 1, True)
    observed.record("p", "c", 1, 1, True)  # full, nothing expired: not kept
    assert observed.stats("p", "c") is None and observed.stats("p", "a") is not None
    clock.now += 61
    observed.record("p", "c", 1, 1, True)  # a and b expired: room again
    assert observed.stats("p", "c") is not None


# -- the choice -----------------------------------------------------------------------------

def _tiny_router(observed: Observations, open_providers: frozenset[str] = frozenset()) -> Any:
    from gateway.smart_router import SmartRouter

    def model(provider: str, tier: str, first_ms: int) -> dict[str, Any]:
        raw = copy.deepcopy(_raw_catalogue()["models"]["gpt-4o"])
        raw["provider"] = provider
        raw["quality"] = dict.fromkeys(raw["quality"], tier)
        raw["latency"] = {**raw["latency"], "first_token_ms": first_ms,
                          "output_tokens_per_s": 1000}
        return raw

    catalogue = Catalogue.from_mapping({"models": {
        "a": model("p1", "high", 100), "b": model("p2", "medium", 1000),
        "c": model("p3", "high", 10)}})
    prices = PriceTable.from_mapping({"models": {
        "a": {"provider": "p1", "input": Decimal(1), "output": Decimal(1)},
        "b": {"provider": "p2", "input": Decimal("0.1"), "output": Decimal("0.1")},
        "c": {"provider": "p3", "input": Decimal(10), "output": Decimal(10)}}},
        PricingSettings())
    return SmartRouter(catalogue, prices, observed, RoutingSettings(min_samples=5),
                       lambda provider: provider in open_providers)


async def _decide(router: Any, strategy: str, quality: str = "medium",
                  refuse: frozenset[str] = frozenset(), **need: Any) -> Any:
    from gateway.smart_router import Need

    async def tokens(info: Any) -> tuple[int, int]:
        return 1000, 0

    async def admissible(info: Any) -> str | None:
        return "not allowed" if info.name in refuse else None

    return await router.decide(Need(strategy, "chat", quality, **need), tokens, admissible)


async def test_each_strategy_ranks_by_its_own_measure() -> None:
    router = _tiny_router(Observations(60, clock=Clock()))
    # a: $0.001, 100 ms; b: $0.0001, 1000 ms; c: $0.01, 10 ms (catalogue priors)
    assert [c.model for c in (await _decide(router, "cheapest")).ranked] == ["b", "a", "c"]
    assert [c.model for c in (await _decide(router, "fastest")).ranked] == ["c", "a", "b"]
    # balanced: a 0.5*10 + 0.5*10 = 10; b 0.5*1 + 0.5*100 = 50.5; c 0.5*100 + 0.5*1 = 50.5
    assert [c.model for c in (await _decide(router, "balanced")).ranked] == ["a", "b", "c"]
    assert [c.model for c in (await _decide(router, "cheapest", "high")).ranked] == ["a", "c"]
    decision = await _decide(router, "cheapest", refuse=frozenset({"b"}))
    assert decision.chosen.model == "a" and "b" not in {c.model for c in decision.ranked}


async def test_observations_replace_the_prior_and_gate_latency_and_errors() -> None:
    clock = Clock()
    observed = Observations(60, clock=clock)
    router = _tiny_router(observed)
    for _ in range(5):
        observed.record("p2", "b", 2, 5, True)
    fastest = (await _decide(router, "fastest")).chosen
    assert (fastest.model, fastest.latency_ms, fastest.latency_source) == ("b", 5, "observed")
    for ms in (50, 50, 50, 50, 900):
        observed.record("p1", "a", ms, ms, True)
    decision = await _decide(router, "fastest", max_latency_ms=500.0)
    assert "a" not in {c.model for c in decision.ranked}  # p50 50 ms, but p95 900 ms
    for _ in range(6):
        observed.record("p2", "b", 1, 1, False)  # 6 errors of 11: above 0.5
    decision = await _decide(router, "cheapest", max_latency_ms=500.0)
    assert [c.model for c in decision.ranked] == ["c"]


async def test_an_open_breaker_excludes_and_nothing_left_gives_the_closest() -> None:
    router = _tiny_router(Observations(60, clock=Clock()), open_providers=frozenset({"p3"}))
    decision = await _decide(router, "fastest", "high", max_cost=Decimal("0.0005"))
    assert decision.chosen is None
    assert [c.model for c in decision.closest] == ["b", "a", "c"]
    problems = {c.model: c.problems for c in decision.closest}
    assert problems["a"] == ("estimated cost $0.001 above max_cost",)
    assert any("circuit breaker open" in p for p in problems["c"])
    assert any("quality medium" in p for p in problems["b"])


@pytest.mark.parametrize("strategy", ["least_outstanding", "latency"])
def test_a_weight_0_credential_stays_last_whatever_the_strategy(strategy: str) -> None:
    balancer = _balancer(strategy)
    backup = Credential("z", "k", "http://z", weight=0)
    for _ in range(20):
        order = balancer.order("p", "m", [backup, *CREDENTIALS])
        assert order[-1] is backup and len(order) == 4


async def test_model_access_counts_a_stored_key_and_survives_an_unreadable_one() -> None:
    from gateway.errors import ServiceUnavailable
    from gateway.pipeline.model_access import ModelAccess
    from gateway.providers import configured_credentials, create_adapter
    from gateway.providers.base import Upstream
    from gateway.routing import Router

    settings = settings_from_mapping({}, {})  # official hosts, no keys: nothing usable
    upstreams = {name: Upstream(create_adapter(name, p), p, configured_credentials(p))
                 for name, p in settings.providers.items()}
    router = Router(PriceTable.load(settings.pricing), settings.providers, settings.routing)
    info = Catalogue.from_mapping(_raw_catalogue()).get("claude-haiku-4-5")
    stored: dict[int, Any] = {1: (Credential("own", "sk-ant", ""),), 2: (), 3: None}

    async def get(project_id: int, provider: str) -> tuple[Credential, ...]:
        if stored[project_id] is None:
            raise ServiceUnavailable("stored key unreadable", code="credentials_unavailable")
        found: tuple[Credential, ...] = stored[project_id]
        return found

    access = ModelAccess(router, upstreams, get)
    for project_id, expected in ((1, None), (2, "no credential for anthropic"),
                                 (3, "no credential for anthropic")):
        who = Project(id=project_id, name="p", team=None, plan="free",
                      monthly_budget_usd=None, allowed_providers=frozenset(),
                      allowed_models=frozenset(), enabled=True, metadata={})
        assert await access.refusal(who, None, None, info) == expected
    assert await access.refusal(None, None, "openai", info) == "served by another provider"


def test_a_route_naming_a_model_outside_the_catalogue_fails() -> None:
    settings = settings_from_mapping({"routing": {"routes": {"r": {"models": ["gpt-4o",
                                                                             "gpt-9"]}}}}, {})
    with pytest.raises(CatalogueError, match=r"routing\.routes\.r\.models: 'gpt-9'"):
        Catalogue.from_mapping(_raw_catalogue()).check_routes(settings.routing.routes)
