"""reconcile.py by table: each difference named, the parts adding up to the difference."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from gateway.sync.reconcile import ZERO, Line, Tolerance, reconcile, summarise

D = Decimal
DAY = date(2026, 11, 10)
PRICES = {"input": D("1"), "cache_read": D("0.1"), "cache_write": D("1.25"), "output": D("4")}


def line(*, day: date = DAY, model: str = "m", ptok: dict[str, int] | None = None,
         pcost: dict[str, Decimal] | None = None, ltok: dict[str, int] | None = None,
         lcost: Decimal = ZERO, reported: bool = True) -> Line:
    return Line(day=day, model=model, project="", provider_tokens=ptok or {},
                provider_costs=pcost or {}, provider_requests=None,
                ledger_tokens=ltok or {}, ledger_cost=lcost, ledger_requests=0,
                gateway_prices=PRICES, provider_costs_reported=reported)


def at(prices: dict[str, Decimal], tokens: dict[str, int]) -> Decimal:
    return sum((tokens[t] * prices[t] / 1_000_000 for t in tokens), D(0))


TOK = {"input": 1_000_000, "output": 500_000}
COST = at(PRICES, TOK)  # $3.00


@pytest.mark.parametrize(("case", "provider_tok", "provider_cost", "untracked", "price"), [
    ("matched", TOK, {"input": D("1"), "output": D("2")}, D(0), D(0)),
    ("3% more tokens around the gateway", {"input": 1_030_000, "output": 515_000},
     {"input": D("1.03"), "output": D("2.06")}, D("0.09"), D(0)),
    ("output billed 10% dearer", TOK, {"input": D("1"), "output": D("2.2")}, D(0), D("0.2")),
    ("both", {"input": 1_030_000, "output": 515_000},
     {"input": D("1.03"), "output": D("2.266")}, D("0.096"), D("0.2")),  # at its price
    ("a cost that is not tokens", TOK, {"input": D("1"), "output": D("2"), "": D("0.5")},
     D("0.5"), D(0)),
])
def test_one_line(case: str, provider_tok: dict[str, int], provider_cost: dict[str, Decimal],
                  untracked: Decimal, price: Decimal) -> None:
    [row] = reconcile([line(ptok=provider_tok, pcost=provider_cost, ltok=TOK, lcost=COST)])
    assert row.untracked == untracked, case
    assert row.price_difference == price, case
    assert row.timing == 0 and row.over_recorded == 0
    assert row.untracked + row.price_difference + row.timing + row.over_recorded \
        == row.difference


def test_price_difference_names_the_token_type_and_the_price_per_million() -> None:
    [row] = reconcile([line(ptok=TOK, pcost={"input": D("1"), "output": D("2.2")}, ltok=TOK,
                            lcost=COST)])
    [diff] = row.price_differences
    assert (diff.token_type, diff.gateway_per_million, diff.provider_per_million) == (
        "output", D("4"), D("4.4"))
    assert diff.difference_per_million == D("0.4")
    assert diff.difference_percent == D("10.00")
    assert diff.tokens == 500_000


def test_a_day_boundary_shift_is_timing_on_both_days() -> None:
    early = {"input": 900_000, "output": 500_000}
    moved = {"input": 100_000}
    late_ledger = {"input": 1_000_000, "output": 500_000}
    late_provider = {"input": 1_100_000, "output": 500_000}
    rows = reconcile([
        line(day=date(2026, 11, 10), ptok=early, pcost={"input": D("0.9"), "output": D("2")},
             ltok=TOK, lcost=COST),
        line(day=date(2026, 11, 11), ptok=late_provider,
             pcost={"input": D("1.1"), "output": D("2")}, ltok=late_ledger, lcost=COST),
    ])
    assert moved["input"] == 100_000
    first, second = rows
    assert (first.timing, first.untracked, first.over_recorded) == (D("-0.1"), 0, 0)
    assert (second.timing, second.untracked, second.over_recorded) == (D("0.1"), 0, 0)
    days = summarise(rows, Tolerance(D("0.01"), D(0)))
    assert all(d.within_tolerance for d in days)  # timing is explained, not a mismatch


def test_ledger_spend_the_provider_never_billed_is_over_recorded() -> None:
    [row] = reconcile([line(ptok={}, pcost={"input": D(0)}, ltok=TOK, lcost=COST)])
    assert row.over_recorded == D("-3") and row.untracked == 0 and row.timing == 0


def test_spend_the_ledger_lacks_entirely_is_untracked() -> None:
    [row] = reconcile([line(model="other", ptok=TOK, pcost={"input": D("1"), "output": D("2")})])
    assert row.untracked == D("3") and row.price_difference == 0


def test_a_day_without_a_cost_report_is_priced_at_the_gateways_prices() -> None:
    [row] = reconcile([line(ptok={"input": 1_100_000, "output": 500_000}, ltok=TOK,
                            lcost=COST, reported=False)])
    assert row.provider_cost == D("3.1") and row.untracked == D("0.1")
    assert row.price_difference == 0


@pytest.mark.parametrize(("usd", "percent", "unexplained", "within"), [
    (D("0.01"), D(0), D("0.01"), True),
    (D("0.01"), D(0), D("0.011"), False),
    (D("0.01"), D(1), D("0.03"), True),  # 1% of $3.09 is above $0.03
    (D("0.01"), D(1), D("0.09"), False),
])
def test_tolerance(usd: Decimal, percent: Decimal, unexplained: Decimal, within: bool) -> None:
    rows = reconcile([line(ptok=TOK, pcost={"input": D("1"), "output": D("2"),
                                            "": unexplained}, ltok=TOK, lcost=COST)])
    [day] = summarise(rows, Tolerance(usd, percent))
    assert day.unexplained == unexplained
    assert day.within_tolerance is within
