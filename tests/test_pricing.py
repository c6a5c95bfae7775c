"""Pricing: exact Decimal cost, USD formatting, the price table's lookups and fallbacks."""

from __future__ import annotations

import tomllib
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.domain import Usage
from gateway.pricing import Price, PriceTable, PriceTableError, compute_cost, format_usd
from gateway.settings import PricingSettings, load_settings

ROOT = Path(__file__).resolve().parent.parent
PRICES_TOML = ROOT / "config" / "prices.toml"
D = Decimal

GPT_4O = Price("gpt-4o", "openai", D("2.50"), D("1.25"), D("10.00"))
MINI = Price("gpt-4o-mini", "openai", D("0.15"), D("0.075"), D("0.60"))


# -- compute_cost ------------------------------------------------------------------------------

@pytest.mark.parametrize(("usage", "price", "expected"), [
    (Usage(1_000_000, 0, 0), GPT_4O, D("2.50")),
    (Usage(1_000, 0, 0), GPT_4O, D("0.0025")),
    (Usage(1_000, 400, 0), GPT_4O, D("0.002")),  # 600 * 2.50 + 400 * 1.25 per million
    (Usage(1_000, 1_000, 0), GPT_4O, D("0.00125")),  # all cached
    (Usage(0, 0, 250), GPT_4O, D("0.0025")),
    (Usage(1_000, 5_000, 0), GPT_4O, D("0.00125")),  # cached > input clamps to input
    (Usage(0, 0, 0), GPT_4O, D("0")),
    (Usage(1, 0, 0), MINI, D("0.00000015")),
    (Usage(1_234, 1_024, 56), MINI, D("0.0001419")),  # 210*0.15 + 1024*0.075 + 56*0.60
    (Usage(3, 0, 7), MINI, D("0.00000465")),
])
def test_compute_cost(usage: Usage, price: Price, expected: Decimal) -> None:
    cost = compute_cost(usage, price)
    assert isinstance(cost, Decimal)
    assert cost == expected


def test_cost_is_exact_over_many_small_calls() -> None:
    usages = [Usage(i % 97 + 5, i % 5, i % 13) for i in range(10_000)]  # cached <= input
    total = sum((compute_cost(u, MINI) for u in usages), D(0))
    summed = Usage(sum(u.input_tokens for u in usages), sum(u.cached_input_tokens for u in usages),
                   sum(u.output_tokens for u in usages))
    assert total == compute_cost(summed, MINI)
    # the same sum in binary floating point is not exact: Decimal really matters here
    assert D(sum(float(compute_cost(u, MINI)) for u in usages)) != total


@pytest.mark.parametrize("usage", [Usage(), Usage(10, 3, 7), Usage(10**9, 0, 10**9)])
def test_cost_is_decimal_never_float(usage: Usage) -> None:
    price = Price("p", "x", D(1), D(0), D(3))
    cost = compute_cost(usage, price)
    assert type(cost) is Decimal
    assert not isinstance(cost, float)


# -- format_usd --------------------------------------------------------------------------------

@pytest.mark.parametrize(("amount", "text"), [
    (D("1E-7"), "0.0000001"),
    (D("0.00000015"), "0.00000015"),
    (D("0"), "0"),
    (D("0E-12"), "0"),
    (D("-0"), "0"),
    (D("1.50"), "1.5"),
    (D("100"), "100"),
    (D("1E+3"), "1000"),
    (D("12.3456789"), "12.3456789"),
    (compute_cost(Usage(1, 0, 0), MINI), "0.00000015"),
])
def test_format_usd(amount: Decimal, text: str) -> None:
    formatted = format_usd(amount)
    assert formatted == text
    assert "E" not in formatted and "e" not in formatted


# -- PriceTable from a small mapping -----------------------------------------------------------

def _table_raw() -> dict[str, Any]:
    return {"models": {
        "gpt-4o-mini": {"provider": "openai", "input": D("0.15"), "cached_input": D("0.075"),
                        "output": D("0.60"), "aliases": ["mini-latest"],
                        "max_output_tokens": 16384, "effective_from": date(2024, 7, 18)},
        "gpt-4o": {"provider": "openai", "input": D("2.50"), "cached_input": D("1.25"),
                   "output": D("10.00")},
        "o1": {"provider": "openai", "input": D("15.00"), "cached_input": D("7.50"),
               "output": D("60.00")},
        "claude-x": {"provider": "anthropic", "input": D("3.00"), "output": D("15.00")},
        "claude-y": {"provider": "anthropic", "input": 1, "output": 5},
    }}


FIXED = PricingSettings(fallback="fixed", fallback_input=D("7"), fallback_cached_input=D("3"),
                        fallback_output=D("21"))
PROVIDER_MAX = PricingSettings(fallback="provider_max", fallback_input=D("7"),
                               fallback_cached_input=D("3"), fallback_output=D("21"))


@pytest.fixture
def table() -> PriceTable:
    return PriceTable.from_mapping(_table_raw(), PROVIDER_MAX)


def test_table_entries(table: PriceTable) -> None:
    assert len(table) == 5
    mini = table.get("gpt-4o-mini")
    assert mini == Price("gpt-4o-mini", "openai", D("0.15"), D("0.075"), D("0.60"), 16384,
                         date(2024, 7, 18))
    claude = table.get("claude-x")
    assert claude is not None and claude.cached_input == D("3.00")  # defaults to input
    y = table.get("claude-y")
    assert y is not None and type(y.input) is Decimal and y.output == D(5)


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-4o-mini", "gpt-4o-mini"),
    ("mini-latest", "gpt-4o-mini"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("gpt-4o-2024-11-20", "gpt-4o"),
    ("claude-x-20250101", "claude-x"),
    ("mini-latest-2025-01-01", "gpt-4o-mini"),  # dated alias
    ("gpt-4o", "gpt-4o"),
    ("gpt-4o-mini-2024-07", None),
    ("gpt-4", None),
    ("GPT-4O", None),
    ("", None),
])
def test_get(table: PriceTable, model: str, expected: str | None) -> None:
    price = table.get(model)
    assert (price.model if price else None) == expected


@pytest.mark.parametrize(("provider", "model", "expected"), [
    ("openai", "gpt-4o-mini", "gpt-4o-mini"),
    ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("openai", "openai/gpt-4o-mini", "gpt-4o-mini"),
    ("openai", "openai/gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("anthropic", "claude-x-20250101", "claude-x"),
])
def test_resolve_known(table: PriceTable, provider: str, model: str, expected: str) -> None:
    price, fallback = table.resolve(provider, model)
    assert price.model == expected
    assert fallback is False


def test_unknown_model_provider_max_picks_dearest(table: PriceTable) -> None:
    usage = Usage(1_000, 0, 100)
    quote = table.quote("openai", "gpt-9-turbo", usage)
    assert quote.fallback is True
    assert quote.price.model == "o1"
    assert quote.cost == D("0.021")  # 1000 * 15 + 100 * 60 per million
    assert quote.cost > 0
    anthropic = table.quote("anthropic", "claude-z", usage)
    assert anthropic.fallback is True and anthropic.price.model == "claude-x"


def test_unknown_provider_falls_back_to_fixed(table: PriceTable) -> None:
    quote = table.quote("mistral", "mistral-huge", Usage(1_000, 400, 100))
    assert quote.fallback is True
    assert quote.price.model == "fallback:fixed"
    assert (quote.price.input, quote.price.cached_input, quote.price.output) == (
        D("7"), D("3"), D("21"))
    assert quote.cost == D("0.0075")  # 600 * 7 + 400 * 3 + 100 * 21 per million


def test_fixed_fallback_uses_configured_prices() -> None:
    table = PriceTable.from_mapping(_table_raw(), FIXED)
    quote = table.quote("openai", "gpt-9-turbo", Usage(1_000_000, 0, 1_000_000))
    assert quote.fallback is True
    assert quote.price.model == "fallback:fixed"
    assert quote.cost == D("28")
    known = table.quote("openai", "gpt-4o", Usage(1_000_000, 0, 0))
    assert known.fallback is False and known.cost == D("2.50")


def test_quote_known_model(table: PriceTable) -> None:
    quote = table.quote("openai", "gpt-4o-mini-2024-07-18", Usage(1_234, 1_024, 56))
    assert quote.fallback is False
    assert quote.cost == D("0.0001419")


def test_resolve_is_stable_when_cached(table: PriceTable) -> None:
    first = table.resolve("openai", "unknown-model")
    second = table.resolve("openai", "unknown-model")
    assert first == second == (table.get("o1"), True)


@pytest.mark.parametrize(("models", "match"), [
    ({"a": {"provider": "p", "input": D(1), "output": D(1), "aliases": ["x"]},
      "b": {"provider": "p", "input": D(1), "output": D(1), "aliases": ["x"]}}, "alias 'x'"),
    ({"a": {"provider": "p", "input": D(1), "output": D(1), "aliases": ["b"]},
      "b": {"provider": "p", "input": D(1), "output": D(1)}}, "alias 'b'"),
    ({"a": {"provider": "p", "output": D(1)}}, "lacks 'input'"),
    ({"a": {"provider": "p", "input": D(1)}}, "lacks 'output'"),
    ({"a": {"input": D(1), "output": D(1)}}, "lacks 'provider'"),
    ({"a": {"provider": "p", "input": D("-0.01"), "output": D(1)}}, r"a'\.input"),
    ({"a": {"provider": "p", "input": D(1), "cached_input": D(-1), "output": D(1)}},
     r"cached_input must be a non-negative"),
    ({"a": {"provider": "p", "input": D(1), "output": -5}}, r"output must be a non-negative"),
    ({"a": {"provider": "p", "input": "1.0", "output": D(1)}}, "non-negative number"),
    ({"a": {"provider": "p", "input": True, "output": D(1)}}, "non-negative number"),
    ({"a": {"provider": "p", "input": 1.5, "output": D(1)}}, "non-negative number"),
    ({"a": "cheap"}, "must be a table"),
    ({}, "no"),
])
def test_bad_tables_raise(models: dict[str, Any], match: str) -> None:
    with pytest.raises(PriceTableError, match=match):
        PriceTable.from_mapping({"models": models}, PROVIDER_MAX)


@pytest.mark.parametrize("value", [D("NaN"), D("Infinity")])
def test_non_finite_price_raises(value: Decimal) -> None:
    with pytest.raises(PriceTableError):
        PriceTable.from_mapping(
            {"models": {"a": {"provider": "p", "input": value, "output": D(1)}}}, PROVIDER_MAX)


def test_missing_price_file_raises(tmp_path: Path) -> None:
    with pytest.raises(PriceTableError, match="does not exist"):
        PriceTable.load(PricingSettings(file=tmp_path / "none.toml"))


def test_invalid_price_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[models."a"\n', encoding="utf-8")
    with pytest.raises(PriceTableError, match="not valid TOML"):
        PriceTable.load(PricingSettings(file=path))


# -- the real config/prices.toml ---------------------------------------------------------------

REAL_MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1", "o3", "claude-sonnet-4-5",
               "gemini-2.5-flash", "mistral-large-latest", "command-r-plus-08-2024"]


@pytest.fixture(scope="module")
def real_table() -> PriceTable:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # config/gateway.toml names config/prices.toml relative to the root
        settings = load_settings(environ={})
        assert settings.pricing.file == Path("config/prices.toml")
        return PriceTable.load(settings.pricing)


@pytest.fixture(scope="module")
def real_raw() -> dict[str, Any]:
    with PRICES_TOML.open("rb") as f:
        return tomllib.load(f, parse_float=Decimal)


def test_real_table_loads(real_table: PriceTable, real_raw: dict[str, Any]) -> None:
    assert len(real_table) > 40
    assert len(real_table) == len(real_raw["models"])
    assert real_raw["meta"] == {"currency": "USD", "unit": "per_million_tokens"}


@pytest.mark.parametrize("model", REAL_MODELS)
def test_real_table_has_model(real_table: PriceTable, real_raw: dict[str, Any],
                              model: str) -> None:
    assert model in real_raw["models"]
    price = real_table.get(model)
    assert price is not None and price.model == model
    assert price.input > 0 and price.output > 0
    assert 0 <= price.cached_input <= price.input
    assert real_table.resolve(price.provider, model) == (price, False)


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # its own entry beats the date stripping
    ("openai/gpt-4o-mini", "gpt-4o-mini"),
])
def test_real_table_lookups(real_table: PriceTable, model: str, expected: str) -> None:
    price, fallback = real_table.resolve("openai", model)
    assert (price.model, fallback) == (expected, False)


def test_real_table_prices_gpt_4o_mini(real_table: PriceTable) -> None:
    price = real_table.get("gpt-4o-mini")
    assert price is not None
    assert (price.provider, price.input, price.cached_input, price.output) == (
        "openai", D("0.15"), D("0.075"), D("0.60"))


def test_real_table_entries_have_sources(real_raw: dict[str, Any]) -> None:
    for name, entry in real_raw["models"].items():
        assert isinstance(entry.get("source"), str), name
        assert entry["source"].startswith("https://"), name
        assert isinstance(entry.get("source_date"), date), name
        assert isinstance(entry.get("provider"), str) and entry["provider"], name
        for key in ("input", "cached_input", "output"):
            value = entry.get(key, entry["input"])
            assert isinstance(value, Decimal), (name, key)  # never a string or float
            assert value.is_finite() and value >= 0, (name, key)


# Every model the seeds name, at its provider's published list price (USD per 1M tokens).
SEED_MODELS = [
    ("anthropic", "claude-3.5-sonnet", "claude-3-5-sonnet", "3.00", "15.00"),
    ("anthropic", "claude-3-5-sonnet-20241022", "claude-3-5-sonnet", "3.00", "15.00"),
    ("anthropic", "claude-3-opus", "claude-3-opus", "15.00", "75.00"),
    ("anthropic", "claude-3-opus-20240229", "claude-3-opus", "15.00", "75.00"),
    ("anthropic", "claude-3-sonnet-20240229", "claude-3-sonnet", "3.00", "15.00"),
    ("anthropic", "claude-3-haiku-20240307", "claude-3-haiku", "0.25", "1.25"),
    ("anthropic", "claude-3.5-haiku", "claude-3-5-haiku", "0.80", "4.00"),
    ("gemini", "gemini-pro", "gemini-pro", "0.50", "1.50"),
    ("google", "gemini-pro", "gemini-pro", "0.50", "1.50"),
    ("gemini", "gemini-1.5-pro", "gemini-1.5-pro", "1.25", "5.00"),
    ("gemini", "gemini-1.5-flash", "gemini-1.5-flash", "0.075", "0.30"),
    ("gemini", "gemini-1.5-flash-8b", "gemini-1.5-flash-8b", "0.0375", "0.15"),
    ("gemini", "gemini-2.0-flash", "gemini-2.0-flash", "0.10", "0.40"),
    ("gemini", "gemini-2.5-pro", "gemini-2.5-pro", "1.25", "10.00"),
    ("mistral", "mistral-large", "mistral-large-2411", "2.00", "6.00"),
    ("mistral", "mistral-large-latest", "mistral-large-latest", "0.50", "1.50"),
    ("cohere", "command-r", "command-r-08-2024", "0.15", "0.60"),
    ("cohere", "command-r-plus", "command-r-plus-08-2024", "2.50", "10.00"),
    ("openai", "gpt-4-turbo", "gpt-4-turbo", "10.00", "30.00"),
    ("openai", "gpt-4", "gpt-4", "30.00", "60.00"),
    ("openai", "gpt-3.5-turbo", "gpt-3.5-turbo", "0.50", "1.50"),
]


@pytest.mark.parametrize(("provider", "model", "entry", "input_price", "output_price"),
                         SEED_MODELS)
def test_real_table_prices_the_seeds_models(real_table: PriceTable, provider: str, model: str,
                                            entry: str, input_price: str,
                                            output_price: str) -> None:
    price, fallback = real_table.resolve(provider, model)
    assert (price.model, fallback) == (entry, False)
    assert (price.input, price.output) == (D(input_price), D(output_price))


def test_claude_3_5_sonnet_is_no_longer_charged_at_the_opus_rate(
        real_table: PriceTable) -> None:
    cost = real_table.quote("anthropic", "claude-3.5-sonnet", Usage(1_000_000, 0, 1_000_000))
    assert (cost.cost, cost.fallback) == (D("18.00"), False)
