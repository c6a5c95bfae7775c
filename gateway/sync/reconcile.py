"""Reconciliation as a pure function over Decimal: the provider's report against the ledger,
per day, model and provider project, with each difference named.

For every token type the provider's unit price is its cost over its tokens. The ledger's
tokens at that price, less what the ledger charged, is the *price difference* (the
gateway's `prices.toml` is wrong or stale). The provider's cost less the ledger's tokens at
the provider's price is spend the ledger does not have: *untracked* when positive (traffic
around the gateway), and when negative either *timing* (the same spend reported on the
adjacent day: the two sides' day boundaries differ) or *over-recorded* (the ledger has
spend the provider did not bill). The four parts add up to the difference exactly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal, localcontext

from gateway.sync.records import TOKEN_TYPES

ZERO = Decimal(0)
MILLION = Decimal(1_000_000)
_PLACES = Decimal("1e-12")


@dataclass(frozen=True, slots=True)
class Line:
    """One (day, model, provider project): both sides, and the gateway's prices per million
    tokens by type (absent: the model is not in the price table)."""

    day: date
    model: str
    project: str
    provider_tokens: Mapping[str, int]
    provider_costs: Mapping[str, Decimal]  # by token type; "" for costs that are not tokens
    provider_requests: int | None
    ledger_tokens: Mapping[str, int]
    ledger_cost: Decimal
    ledger_requests: int
    gateway_prices: Mapping[str, Decimal] = field(default_factory=dict)
    provider_costs_reported: bool = True  # False: no cost rows; priced at the gateway's


@dataclass(frozen=True, slots=True)
class PriceDifference:
    token_type: str
    gateway_per_million: Decimal
    provider_per_million: Decimal
    tokens: int  # the ledger's tokens of this type, priced differently

    @property
    def difference_per_million(self) -> Decimal:
        return self.provider_per_million - self.gateway_per_million

    @property
    def difference_percent(self) -> Decimal | None:
        if not self.gateway_per_million:
            return None
        return (self.difference_per_million * 100 / self.gateway_per_million).quantize(
            Decimal("0.01"))


@dataclass(slots=True)
class Row:
    line: Line
    provider_cost: Decimal
    price_difference: Decimal
    raw_untracked: Decimal  # before timing is matched
    price_differences: list[PriceDifference]
    timing: Decimal = ZERO

    @property
    def difference(self) -> Decimal:
        return self.provider_cost - self.line.ledger_cost

    @property
    def rest(self) -> Decimal:
        return self.raw_untracked - self.timing

    @property
    def untracked(self) -> Decimal:
        return max(self.rest, ZERO)

    @property
    def over_recorded(self) -> Decimal:
        return min(self.rest, ZERO)


@dataclass(frozen=True, slots=True)
class Tolerance:
    usd: Decimal
    percent: Decimal

    def allows(self, provider_cost: Decimal, unexplained: Decimal) -> bool:
        return abs(unexplained) <= self.limit(provider_cost)

    def limit(self, provider_cost: Decimal) -> Decimal:
        return max(self.usd, abs(provider_cost) * self.percent / 100)


@dataclass(frozen=True, slots=True)
class Day:
    """One day of one provider, every model together."""

    day: date
    provider_cost: Decimal
    ledger_cost: Decimal
    untracked: Decimal
    price_difference: Decimal
    timing: Decimal
    over_recorded: Decimal
    tolerance: Decimal
    within_tolerance: bool

    @property
    def difference(self) -> Decimal:
        return self.provider_cost - self.ledger_cost

    @property
    def unexplained(self) -> Decimal:
        """What timing does not explain: the part the tolerance judges."""
        return self.untracked + self.price_difference + self.over_recorded


def compare(line: Line) -> Row:
    """One line's provider cost, price difference and untracked spend (before timing)."""
    with localcontext() as ctx:
        ctx.prec = 60
        costs = dict(line.provider_costs)
        if not line.provider_costs_reported:
            costs = {t: line.provider_tokens.get(t, 0) * line.gateway_prices.get(t, ZERO)
                     / MILLION for t in TOKEN_TYPES}
        provider_cost = sum(costs.values(), ZERO)
        at_provider = ZERO
        differences = []
        for t in TOKEN_TYPES:
            provided, recorded = line.provider_tokens.get(t, 0), line.ledger_tokens.get(t, 0)
            gateway = line.gateway_prices.get(t)
            if provided > 0:
                unit = costs.get(t, ZERO) / provided
            elif gateway is not None:
                unit = gateway / MILLION
            else:
                unit = ZERO
            at_provider += recorded * unit
            if provided > 0 and recorded > 0 and gateway is not None \
                    and unit * MILLION != gateway:
                differences.append(PriceDifference(t, gateway, _round(unit * MILLION),
                                                   recorded))
        at_provider = _round(at_provider)
    return Row(line, provider_cost, at_provider - line.ledger_cost,
               provider_cost - at_provider, differences)


def match_timing(rows: Iterable[Row]) -> None:
    """Spend the ledger has more of on one day than the provider, and the provider more of
    on the adjacent day, of the same model and project, is timing on both days."""
    series: dict[tuple[str, str], dict[date, Row]] = defaultdict(dict)
    for row in rows:
        series[(row.line.model, row.line.project)][row.line.day] = row
    for by_day in series.values():
        for day in sorted(by_day):
            short = by_day[day]
            for other in (day - timedelta(days=1), day + timedelta(days=1)):
                near = by_day.get(other)
                if short.rest >= 0 or near is None or near.rest <= 0:
                    continue
                moved = min(-short.rest, near.rest)
                short.timing -= moved
                near.timing += moved


def reconcile(lines: Iterable[Line]) -> list[Row]:
    """Every line compared, timing matched across days; ordered by day, model, project."""
    rows = [compare(line) for line in lines]
    match_timing(rows)
    return sorted(rows, key=lambda r: (r.line.day, r.line.model, r.line.project))


def summarise(rows: Iterable[Row], tolerance: Tolerance) -> list[Day]:
    """Each day's totals, judged against the tolerance."""
    groups: dict[date, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row.line.day].append(row)
    out = []
    for day in sorted(groups):
        group = groups[day]
        provider = sum((r.provider_cost for r in group), ZERO)
        untracked = sum((r.untracked for r in group), ZERO)
        price = sum((r.price_difference for r in group), ZERO)
        over = sum((r.over_recorded for r in group), ZERO)
        out.append(Day(day, provider, sum((r.line.ledger_cost for r in group), ZERO),
                       untracked, price, sum((r.timing for r in group), ZERO), over,
                       tolerance.limit(provider),
                       tolerance.allows(provider, untracked + price + over)))
    return out


def _round(value: Decimal) -> Decimal:
    return value.quantize(_PLACES).normalize() if value else ZERO
