"""The model catalogue, `config/models.toml`: what each model can do, for the smart router.

Each entry is checked once at start-up into a frozen `ModelInfo`; a wrong one raises
`CatalogueError` naming the key. Prices are not here (`gateway.pricing` owns them): every
catalogued model must also be in the price table (`Catalogue.check_prices`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.pricing import PriceTable
from gateway.settings import QUALITY_TIERS, TASK_CLASSES, SmartRouteSettings
from gateway.tomlfile import read_toml

TASKS = TASK_CLASSES
TIERS = {name: n for n, name in enumerate(QUALITY_TIERS, start=1)}  # low 1, medium 2, high 3
MODALITIES = ("text", "image")
_KEYS = {"provider", "context_window", "max_output_tokens", "modalities", "tools",
         "json_mode", "source", "source_date", "latency", "quality", "quality_source",
         "quality_date"}
_LATENCY_KEYS = {"first_token_ms", "output_tokens_per_s", "source", "source_date"}


class CatalogueError(ValueError):
    """The catalogue file is missing, malformed, or disagrees with the price table."""


@dataclass(frozen=True, slots=True)
class LatencyPrior:
    """What the catalogue expects before anything is observed."""

    first_token_ms: float
    output_tokens_per_s: float

    def total_ms(self, output_tokens: int) -> float:
        return self.first_token_ms + output_tokens * 1000.0 / self.output_tokens_per_s


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    provider: str
    context_window: int
    max_output_tokens: int
    modalities: frozenset[str]
    tools: bool
    json_mode: bool
    quality: Mapping[str, int]  # task class -> tier (1 low, 2 medium, 3 high)
    latency: LatencyPrior
    source: str
    source_date: date


class Catalogue:
    def __init__(self, models: Mapping[str, ModelInfo]) -> None:
        self._models = dict(models)

    @classmethod
    def load(cls, path: Path) -> Catalogue:
        return cls.from_mapping(read_toml(path, CatalogueError, "model catalogue"))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Catalogue:
        models = raw.get("models")
        if not isinstance(models, dict) or not models:
            raise CatalogueError('the model catalogue has no [models."NAME"] entries')
        return cls({name: _model(name, entry) for name, entry in models.items()})

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def get(self, name: str) -> ModelInfo | None:
        return self._models.get(name)

    def check_routes(self, routes: Mapping[str, SmartRouteSettings]) -> None:
        """Every model a `[routing.routes]` route names is catalogued: else the start fails."""
        for name, route in routes.items():
            for model in route.models:
                if model not in self._models:
                    raise CatalogueError(f"routing.routes.{name}.models: {model!r} is not in "
                                         "the model catalogue")

    def check_prices(self, prices: PriceTable) -> None:
        """Every model has a price, from the same provider: else the start fails."""
        for info in self:
            price = prices.get(info.name)
            if price is None:
                raise CatalogueError(f"models.{info.name!r} has no price in the price table")
            if price.provider != info.provider:
                raise CatalogueError(
                    f"models.{info.name!r}.provider is {info.provider!r}; the price table "
                    f"says {price.provider!r}")


def _model(name: str, entry: Any) -> ModelInfo:
    where = f"models.{name!r}"
    if not isinstance(entry, dict):
        raise CatalogueError(f"{where} must be a table")
    unknown = set(entry) - _KEYS
    if unknown:
        raise CatalogueError(f"{where}: unknown key {sorted(unknown)[0]!r}; allowed: "
                             f"{', '.join(sorted(_KEYS))}")
    missing = _KEYS - set(entry)
    if missing:
        raise CatalogueError(f"{where} lacks {sorted(missing)[0]!r}")
    modalities = entry["modalities"]
    if (not isinstance(modalities, list) or "text" not in modalities
            or any(m not in MODALITIES for m in modalities)):
        raise CatalogueError(f"{where}.modalities must list \"text\" and may add \"image\"")
    quality = entry["quality"]
    if not isinstance(quality, dict) or set(quality) != set(TASKS):
        raise CatalogueError(f"{where}.quality must give a tier for each of {', '.join(TASKS)}")
    for task, tier in quality.items():
        if tier not in TIERS:
            raise CatalogueError(f"{where}.quality.{task}: {tier!r} is not one of "
                                 f"{', '.join(TIERS)}")
    for key in ("source", "quality_source"):
        if not isinstance(entry[key], str) or not entry[key]:
            raise CatalogueError(f"{where}.{key} must name where the figures come from")
    for key in ("source_date", "quality_date"):
        _date(f"{where}.{key}", entry[key])
    for key in ("tools", "json_mode"):
        if not isinstance(entry[key], bool):
            raise CatalogueError(f"{where}.{key} must be true or false")
    return ModelInfo(
        name=name, provider=_text(f"{where}.provider", entry["provider"]),
        context_window=_positive(f"{where}.context_window", entry["context_window"]),
        max_output_tokens=_positive(f"{where}.max_output_tokens", entry["max_output_tokens"]),
        modalities=frozenset(modalities), tools=entry["tools"], json_mode=entry["json_mode"],
        quality=MappingProxyType({t: TIERS[v] for t, v in quality.items()}),
        latency=_latency(f"{where}.latency", entry["latency"]),
        source=entry["source"], source_date=entry["source_date"])


def _latency(where: str, value: Any) -> LatencyPrior:
    if not isinstance(value, dict) or set(value) != _LATENCY_KEYS:
        raise CatalogueError(f"{where} must be a table of {', '.join(sorted(_LATENCY_KEYS))}")
    _text(f"{where}.source", value["source"])
    _date(f"{where}.source_date", value["source_date"])
    return LatencyPrior(_positive(f"{where}.first_token_ms", value["first_token_ms"]),
                        _positive(f"{where}.output_tokens_per_s", value["output_tokens_per_s"]))


def _positive(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | Decimal) or value <= 0:
        raise CatalogueError(f"{where} must be a positive number")
    return int(value)


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise CatalogueError(f"{where} must be a non-empty string")
    return value


def _date(where: str, value: Any) -> None:
    if not isinstance(value, date):
        raise CatalogueError(f"{where} must be a date (YYYY-MM-DD)")
