"""Prices per model from `config/prices.toml`, and cost as a pure function in exact Decimal.

A model missing from the table is priced by the configured fallback rule and the quote says
so (`fallback=True`), so the usage row is flagged; nothing is ever silently priced at zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from gateway.domain import Usage, canonical_provider
from gateway.settings import PricingSettings
from gateway.tomlfile import read_toml

_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")
_MAX_CACHED_LOOKUPS = 10_000


class PriceTableError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens for one model."""

    model: str
    provider: str
    input: Decimal
    cached_input: Decimal
    output: Decimal
    max_output_tokens: int | None = None
    effective_from: date | None = None
    cache_write_input: Decimal | None = None  # None: cache writes cost the input price
    source: str | None = None  # where the price was read (the table's `source`)
    source_date: date | None = None  # when it was last checked there


@dataclass(slots=True)  # not frozen: one a call (see providers.base.UpstreamCall)
class Quote:
    cost: Decimal
    price: Price
    fallback: bool


def compute_cost(usage: Usage, price: Price) -> Decimal:
    """Exact cost in USD: uncached input, cache reads, cache writes and output, each at its
    own price."""
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    written = min(usage.cache_write_tokens, usage.input_tokens - cached)
    write_price = price.input if price.cache_write_input is None else price.cache_write_input
    micro = ((usage.input_tokens - cached - written) * price.input + cached * price.cached_input
             + written * write_price + usage.output_tokens * price.output)
    return micro.scaleb(-6)  # per million tokens; scaleb only moves the exponent: exact


def format_usd(amount: Decimal) -> str:
    """Plain decimal notation, no exponent: what the cost header carries."""
    return f"{amount.normalize():f}" if amount else "0"


class PriceTable:
    def __init__(self, prices: dict[str, Price], aliases: dict[str, str],
                 settings: PricingSettings) -> None:
        self._prices = prices
        self._aliases = aliases
        self._settings = settings
        self._resolved: dict[tuple[str, str], tuple[Price, bool]] = {}
        self._fixed = Price("fallback:fixed", "*", settings.fallback_input,
                            settings.fallback_cached_input, settings.fallback_output)

    @classmethod
    def load(cls, settings: PricingSettings) -> PriceTable:
        return cls.from_mapping(read_toml(settings.file, PriceTableError, "price table"),
                                settings)

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], settings: PricingSettings) -> PriceTable:
        models = raw.get("models")
        if not isinstance(models, dict) or not models:
            raise PriceTableError("the price table has no [models.\"NAME\"] entries")
        prices: dict[str, Price] = {}
        aliases: dict[str, str] = {}
        for name, entry in models.items():
            prices[name] = _price(name, entry)
            for alias in entry.get("aliases", []):
                if alias in models or aliases.setdefault(alias, name) != name:
                    raise PriceTableError(f"alias {alias!r} of {name!r} is not unique")
        return cls(prices, aliases, settings)

    def __len__(self) -> int:
        return len(self._prices)

    def models(self) -> list[Price]:
        return list(self._prices.values())

    def get(self, model: str) -> Price | None:
        """The table's own entry for a model name, alias or dated snapshot name."""
        name = self._aliases.get(model, model)
        if name in self._prices:
            return self._prices[name]
        undated = _DATE_SUFFIX.sub("", name)
        return self._prices.get(self._aliases.get(undated, undated))

    def resolve(self, provider: str, model: str) -> tuple[Price, bool]:
        """The price to charge and whether a fallback rule chose it."""
        provider = canonical_provider(provider)
        key = (provider, model)
        hit = self._resolved.get(key)
        if hit is None:
            price = self.get(model) or self.get(model.partition("/")[2])
            hit = (price, False) if price is not None else (self._fallback(provider), True)
            if len(self._resolved) >= _MAX_CACHED_LOOKUPS:
                self._resolved.clear()
            self._resolved[key] = hit
        return hit

    def quote(self, provider: str, model: str, usage: Usage) -> Quote:
        price, fallback = self.resolve(provider, model)
        return Quote(compute_cost(usage, price), price, fallback)

    def _fallback(self, provider: str) -> Price:
        if self._settings.fallback == "provider_max":
            same = [p for p in self._prices.values() if p.provider == provider]
            if same:  # the dearest model of that provider: never under-charges
                return max(same, key=lambda p: (p.output, p.input))
        return self._fixed


def _price(name: str, entry: Any) -> Price:
    if not isinstance(entry, dict):
        raise PriceTableError(f"models.{name!r} must be a table")
    for required in ("provider", "input", "output"):
        if required not in entry:
            raise PriceTableError(f"models.{name!r} lacks {required!r}")
    amounts = {}
    for key in ("input", "cached_input", "cache_write_input", "output"):
        value = entry.get(key, entry["input"])
        if (isinstance(value, bool) or not isinstance(value, Decimal | int)
                or not Decimal(value).is_finite() or value < 0):
            raise PriceTableError(f"models.{name!r}.{key} must be a non-negative number")
        amounts[key] = Decimal(value)
    max_output = entry.get("max_output_tokens")
    effective = entry.get("effective_from")
    checked = entry.get("source_date")
    return Price(name, str(entry["provider"]), amounts["input"], amounts["cached_input"],
                 amounts["output"], int(max_output) if max_output is not None else None,
                 effective if isinstance(effective, date) else None,
                 amounts["cache_write_input"] if "cache_write_input" in entry else None,
                 str(entry["source"]) if "source" in entry else None,
                 checked if isinstance(checked, date) else None)
