"""Which provider serves a model, and what to try when it fails.

A model name is routed by the first rule that places it:
1. `provider/model` where `provider` is a configured provider: that provider, that model;
2. `[routing] aliases`: the alias's target, routed again (`"fast" = "gemini/gemini-2.5-flash"`);
3. a provider's `models` globs (`[providers.deepseek] models = ["deepseek-*"]`);
4. the price table's provider for the model (`gpt-4o-mini` -> openai, `claude-sonnet-4-5` ->
   anthropic, `gemini-2.5-flash` -> gemini);
5. `routing.default_provider` (any OpenAI-compatible server behind `providers.openai`).

`[routing] fallbacks` maps a model (as the client names it, or its routed name) to the models
to try, in order, when it cannot be served: `"gpt-4o" = ["claude-sonnet-4-5"]`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from gateway.pricing import PriceTable
from gateway.settings import ProviderSettings, RoutingSettings

MAX_CHAINS = 4096


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    upstream_model: str  # the name the provider knows the model by

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.upstream_model}"


class Router:
    def __init__(self, prices: PriceTable, providers: Mapping[str, ProviderSettings],
                 settings: RoutingSettings | None = None) -> None:
        self._prices = prices
        self._providers = providers
        self._settings = settings or RoutingSettings()
        self._globs = [(name, pattern) for name, p in providers.items() for pattern in p.models]
        self._chains: dict[tuple[str, str | None], tuple[Route, ...]] = {}

    def route(self, model: str, provider: str | None = None) -> Route:
        """Where `model` goes; `provider` pins it (the native entry shape names one)."""
        if provider is not None:
            return Route(provider, model)
        for _ in range(8):  # aliases may point at aliases; a loop is a config error, cut short
            prefix, sep, rest = model.partition("/")
            if sep and rest and prefix in self._providers:
                return Route(prefix, rest)
            target = self._settings.aliases.get(model)
            if target is None:
                break
            model = target
        for name, pattern in self._globs:
            if fnmatchcase(model, pattern):
                return Route(name, model)
        price = self._prices.get(model)
        if price is not None and price.provider in self._providers:
            return Route(price.provider, model)
        return Route(self._settings.default_provider, model)

    def chain(self, model: str, provider: str | None = None) -> list[Route]:
        """The route for `model` and then its configured fallbacks, without repeats (a list
        of its own: the caller may add to it). Routing reads only the settings and the price
        table, neither of which changes, so a chain is worked out once per model and
        provider (for at most `MAX_CHAINS` of them: model names come from clients)."""
        key = (model, provider)
        known = self._chains.get(key)
        if known is None:
            known = tuple(self._chain(model, provider))
            if len(self._chains) < MAX_CHAINS:
                self._chains[key] = known
        return list(known)

    def _chain(self, model: str, provider: str | None) -> list[Route]:
        first = self.route(model, provider)
        fallbacks = (self._settings.fallbacks.get(model)
                     or self._settings.fallbacks.get(first.upstream_model)
                     or self._settings.fallbacks.get(first.label) or ())
        routes = [first]
        for name in fallbacks:
            route = self.route(name)
            if route not in routes:
                routes.append(route)
        return routes

    def catalogue(self) -> Iterator[tuple[str, str]]:
        """(model, provider) for every model the price table knows and a provider serves,
        then every alias."""
        for price in self._prices.models():
            if price.provider in self._providers:
                yield price.model, price.provider
        for alias in self._settings.aliases:
            yield alias, self.route(alias).provider
