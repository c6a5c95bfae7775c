"""The smart router: which catalogued model should serve a request, and why.

Every catalogued model is assessed against a `Need` (task class and least quality tier,
capabilities, cost and latency ceilings): its cost is estimated with the price table for the
request's tokens (`compute_cost`), its latency from this replica's observations (p50 to rank,
p95 against `max_latency`) or, with too few, from the catalogue's prior. A model the caller
may not use or the gateway cannot reach (no credential, its breaker open, too many errors
lately) is out; the rest are ranked by the strategy:
- `cheapest`: lowest estimated cost (then latency);
- `fastest`: lowest estimated latency (then cost);
- `balanced`: the least `w * cost / cheapest + (1 - w) * latency / fastest`, raised by the
  observed error rate (`w`: `routing.balanced_cost_weight`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import orjson

from gateway.catalogue import TIERS, Catalogue, ModelInfo
from gateway.domain import Usage
from gateway.errors import BadRequest
from gateway.observed import Observations
from gateway.pricing import PriceTable, compute_cost, format_usd
from gateway.settings import QUALITY_TIERS, STRATEGIES, RoutingSettings

ROUTER_PREFIX = "router:"


@dataclass(frozen=True, slots=True)
class Need:
    strategy: str
    task: str
    quality: str  # the least tier, one of QUALITY_TIERS
    max_cost: Decimal | None = None  # USD per request
    max_latency_ms: float | None = None
    requires: frozenset[str] = frozenset()  # of settings.CAPABILITIES
    models: frozenset[str] = frozenset()  # only these (empty: any)


@dataclass(frozen=True, slots=True)
class Candidate:
    model: str
    provider: str
    cost: Decimal
    latency_ms: float  # the estimate ranked on: observed p50, else the catalogue's
    latency_p95_ms: float | None  # observed only
    first_token_ms: tuple[float, float] | None  # observed time to first byte: p50, p95
    latency_source: str  # "observed" | "catalogue"
    error_rate: float | None  # observed only
    quality: str
    input_tokens: int
    output_tokens: int
    problems: tuple[str, ...] = ()  # why it does not qualify (empty: it does)


@dataclass(frozen=True, slots=True)
class Decision:
    need: Need
    ranked: list[Candidate]  # qualifying, best first
    closest: list[Candidate] = field(default_factory=list)  # when none qualify

    @property
    def chosen(self) -> Candidate | None:
        return self.ranked[0] if self.ranked else None

    def reason(self) -> str:
        """One line for the answer header and the usage row's `route_reason`."""
        best = self.ranked[0]
        return (f"{self.need.strategy}: {best.provider}/{best.model} of "
                f"{len(self.ranked)} qualifying for {self.need.task}>={self.need.quality}; "
                f"est. ${format_usd(best.cost.quantize(Decimal('1e-8')))}, "
                f"{best.latency_ms:.0f} ms ({best.latency_source})")


# A catalogued model -> why this caller or request cannot use it (None: it can)
Admissible = Callable[[ModelInfo], Awaitable[str | None]]
# A catalogued model -> the (input, output) tokens to price it for
Tokens = Callable[[ModelInfo], Awaitable[tuple[int, int]]]


class SmartRouter:
    def __init__(self, catalogue: Catalogue, prices: PriceTable, observed: Observations,
                 settings: RoutingSettings, provider_open: Callable[[str], bool]) -> None:
        self.catalogue = catalogue
        self._prices = prices
        self._observed = observed
        self._settings = settings
        self._provider_open = provider_open

    def handles(self, model: str) -> bool:
        return model.startswith(ROUTER_PREFIX) or model in self._settings.routes

    def need_for(self, model: str) -> Need:
        """The need behind a model name the router handles: its route's, or the defaults
        with the strategy `router:NAME` names (400 when it names none)."""
        route = self._settings.routes.get(model)
        if route is not None:
            return Need(route.strategy, route.task, route.quality,
                        route.max_cost_usd or None, route.max_latency_ms or None,
                        frozenset(route.requires), frozenset(route.models))
        strategy = model.removeprefix(ROUTER_PREFIX)
        if strategy not in STRATEGIES:
            raise BadRequest(f"model {model!r}: the smart router's strategies are "
                             f"{', '.join(ROUTER_PREFIX + s for s in STRATEGIES)}",
                             code="unknown_router_strategy", details={"model": model})
        return Need(strategy, self._settings.default_task, self._settings.default_quality)

    async def decide(self, need: Need, tokens: Tokens, admissible: Admissible) -> Decision:
        """Every admissible model assessed; the qualifying ones ranked, else the closest."""
        usable: list[Candidate] = []
        for info in self.catalogue:
            if need.models and info.name not in need.models:
                continue
            refused = await admissible(info)
            if refused is not None:
                continue  # not the caller's to use, or not reachable: never a candidate
            usable.append(self._assess(info, need, *await tokens(info)))
        qualifying = [c for c in usable if not c.problems]
        ranked = self.rank(need.strategy, qualifying)
        closest = [] if ranked else sorted(
            usable, key=lambda c: (len(c.problems), c.cost, c.latency_ms, c.model))[:3]
        return Decision(need, ranked, closest)

    def _assess(self, info: ModelInfo, need: Need, input_tokens: int,
                output_tokens: int) -> Candidate:
        price = self._prices.get(info.name)
        assert price is not None  # Catalogue.check_prices, at start
        cost = compute_cost(Usage(input_tokens=input_tokens, output_tokens=output_tokens), price)
        stats = self._observed.stats(info.provider, info.name)
        settings = self._settings
        problems: list[str] = []
        p95: float | None = None
        first: tuple[float, float] | None = None
        error_rate: float | None = None
        if stats is not None:
            error_rate = stats.error_rate
            if stats.samples >= settings.min_samples and error_rate > settings.max_error_rate:
                problems.append(f"error rate {error_rate:.0%} over the last "
                                f"{self._observed.window_s:.0f} s")
        ok = 0 if stats is None else stats.samples - stats.errors
        if stats is not None and stats.total_p50_ms is not None and ok >= settings.min_samples:
            latency, p95, source = stats.total_p50_ms, stats.total_p95_ms, "observed"
            if stats.first_p50_ms is not None and stats.first_p95_ms is not None:
                first = (stats.first_p50_ms, stats.first_p95_ms)
        else:
            latency, source = info.latency.total_ms(output_tokens), "catalogue"
        tier = info.quality[need.task]
        if tier < TIERS[need.quality]:
            problems.append(f"quality {QUALITY_TIERS[tier - 1]} for {need.task}, "
                            f"below {need.quality}")
        if need.max_cost is not None and cost > need.max_cost:
            problems.append(f"estimated cost ${format_usd(cost)} above max_cost")
        worst = p95 if p95 is not None else latency
        if need.max_latency_ms is not None and worst > need.max_latency_ms:
            problems.append(f"latency {worst:.0f} ms ({'p95 observed' if p95 else source}) "
                            "above max_latency")
        problems.extend(self._capability_problems(info, need, input_tokens, output_tokens))
        if self._provider_open(info.provider):
            problems.append(f"provider {info.provider} is failing (circuit breaker open)")
        return Candidate(info.name, info.provider, cost, latency, p95, first, source, error_rate,
                         QUALITY_TIERS[tier - 1], input_tokens, output_tokens, tuple(problems))

    @staticmethod
    def _capability_problems(info: ModelInfo, need: Need, input_tokens: int,
                             output_tokens: int) -> list[str]:
        problems = []
        if "image_input" in need.requires and "image" not in info.modalities:
            problems.append("no image input")
        if "tools" in need.requires and not info.tools:
            problems.append("no tool use")
        if "json_mode" in need.requires and not info.json_mode:
            problems.append("no JSON mode")
        if input_tokens + output_tokens > info.context_window:
            problems.append(f"context window {info.context_window} too small")
        if output_tokens > info.max_output_tokens:
            problems.append(f"at most {info.max_output_tokens} output tokens")
        return problems

    def rank(self, strategy: str, candidates: Sequence[Candidate]) -> list[Candidate]:
        if strategy == "cheapest":
            return sorted(candidates, key=lambda c: (c.cost, c.latency_ms, c.model))
        if strategy == "fastest":
            return sorted(candidates, key=lambda c: (c.latency_ms, c.cost, c.model))
        if not candidates:
            return []
        weight = self._settings.balanced_cost_weight
        cheapest = max(min(c.cost for c in candidates), Decimal("1e-12"))
        fastest = max(min(c.latency_ms for c in candidates), 1e-3)

        def score(c: Candidate) -> float:
            relative = (weight * float(c.cost / cheapest)
                        + (1 - weight) * c.latency_ms / fastest)
            return relative * (1 + (c.error_rate or 0.0))

        return sorted(candidates, key=lambda c: (score(c), c.model))


def describe(candidate: Candidate) -> Mapping[str, object]:
    """A candidate as the JSON answers list it (its cost an exact JSON number, even in an
    error's details, which are serialised without the API's Decimal rule)."""
    answer: dict[str, object] = {
        "model": candidate.model, "provider": candidate.provider,
        "cost": orjson.Fragment(format_usd(candidate.cost).encode()),
        "estimated_latency": round(candidate.latency_ms),
        "latency_source": candidate.latency_source, "quality": candidate.quality}
    if candidate.latency_p95_ms is not None:
        answer["latency_p95"] = round(candidate.latency_p95_ms)
    if candidate.first_token_ms is not None:
        answer["first_token_latency"], answer["first_token_p95"] = (
            round(v) for v in candidate.first_token_ms)
    if candidate.error_rate is not None:
        answer["error_rate"] = round(candidate.error_rate, 4)
    if candidate.problems:
        answer["problems"] = list(candidate.problems)
    return answer
