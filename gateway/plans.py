"""Plan tiers (`config/plans.toml`) and the limits that apply to one project."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.domain import PLANS, Project
from gateway.tomlfile import read_toml

LIMIT_FIELDS = ("requests_per_minute", "requests_per_day", "tokens_per_minute")


class PlanError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Limits:
    """0 means unlimited."""

    requests_per_minute: int
    requests_per_day: int
    tokens_per_minute: int


class Plans:
    def __init__(self, plans: dict[str, Limits]) -> None:
        missing = [p for p in PLANS if p not in plans]
        if missing:
            raise PlanError(f"plans file lacks plan(s): {', '.join(missing)}")
        self._plans = plans
        # (plan, id of the overrides) -> (those overrides, the limits made of them)
        self._overridden: dict[tuple[str, int], tuple[dict[str, int], Limits]] = {}

    @classmethod
    def load(cls, path: Path) -> Plans:
        return cls.from_mapping(read_toml(path, PlanError, "plans file"))

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> Plans:
        plans = {}
        for name, table in (raw.get("plans") or {}).items():
            if name not in PLANS:
                raise PlanError(f"unknown plan [plans.{name}]; plans are {', '.join(PLANS)}")
            values = []
            for field in LIMIT_FIELDS:
                value = table.get(field)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise PlanError(f"plans.{name}.{field} must be a whole number >= 0 "
                                    "(0: unlimited)")
                values.append(value)
            plans[name] = Limits(*values)
        return cls(plans)

    def limits(self, project: Project) -> Limits:
        """The project's plan limits with its own overrides applied."""
        base = self._plans[project.plan]
        overrides = project.limit_overrides
        if not overrides:
            return base
        # Made once per project as the key store holds it (its overrides one dict, replaced,
        # never changed, when the project is): every limited call asks. The entry keeps the
        # dict itself, so its id cannot be reused while the entry lives.
        key = (project.plan, id(overrides))
        found = self._overridden.get(key)
        if found is not None and found[0] is overrides:
            return found[1]
        limits = Limits(*(overrides.get(f, getattr(base, f)) for f in LIMIT_FIELDS))
        if len(self._overridden) >= 4096:  # projects come and go: bounded
            self._overridden.clear()
        self._overridden[key] = (overrides, limits)
        return limits
