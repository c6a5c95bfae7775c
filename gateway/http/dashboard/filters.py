"""Jinja filters of the dashboard templates (display only; `data-value` uses `exact`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from gateway.http.dashboard.figures import exact, usd
from gateway.http.json import json_default


def when(value: datetime | None) -> str:
    return "\u2014" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def count(value: int | None) -> str:
    return "\u2014" if value is None else f"{value:,}"


def pretty_json(value: Any) -> str:
    """JSON for people (metadata, attempts); escaped by the template like any text."""
    if isinstance(value, str):
        value = orjson.loads(value)
    return orjson.dumps(value, default=json_default, option=orjson.OPT_INDENT_2).decode()


def percent(spent: Decimal | None, budget: Decimal | None) -> str:
    if spent is None or not budget:
        return "\u2014"
    return f"{spent / budget * 100:.1f}%"


FILTERS: dict[str, Callable[..., str]] = {"usd": usd, "exact": exact, "when": when, "count": count,
           "pretty_json": pretty_json, "percent": percent}
