"""Which provider serves a model: `provider/model` names, else the price table, else the
default provider (any OpenAI-compatible server behind `providers.openai`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gateway.pricing import PriceTable

PROVIDER_NAMES = frozenset({"openai", "azure", "anthropic", "gemini", "mistral", "cohere"})


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    upstream_model: str  # the name the provider knows the model by


class Router:
    def __init__(self, prices: PriceTable, default_provider: str = "openai") -> None:
        self._prices = prices
        self._default = default_provider

    def route(self, model: str) -> Route:
        prefix, sep, rest = model.partition("/")
        if sep and rest and prefix in PROVIDER_NAMES:
            return Route(prefix, rest)
        price = self._prices.get(model)
        return Route(price.provider if price else self._default, model)

    def catalogue(self) -> Iterator[tuple[str, str]]:
        """(model, provider) for every model the price table knows."""
        for price in self._prices.models():
            yield price.model, price.provider
