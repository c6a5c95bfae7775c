"""A project's plan limits: the plan's, with the project's own overrides applied."""

from __future__ import annotations

from pathlib import Path

from gateway.domain import Project
from gateway.plans import Plans

PLANS_FILE = Path(__file__).resolve().parents[2] / "config" / "plans.toml"


def project(plan: str, **overrides: int) -> Project:
    return Project(id=1, name="p", team=None, plan=plan, monthly_budget_usd=None,
                   allowed_providers=frozenset(), allowed_models=frozenset(), enabled=True,
                   metadata={}, limit_overrides=overrides)


def test_overrides_apply_and_each_version_of_a_project_gets_its_own() -> None:
    plans = Plans.load(PLANS_FILE)
    base = plans.limits(project("team"))
    first = project("team", requests_per_minute=7)
    limits = plans.limits(first)
    assert limits.requests_per_minute == 7 and limits.requests_per_day == base.requests_per_day
    assert plans.limits(first) is limits  # made once for that project
    # The project changed (the key store loads a new one): its new overrides count at once.
    changed = project("team", requests_per_minute=9, tokens_per_minute=100)
    again = plans.limits(changed)
    assert (again.requests_per_minute, again.tokens_per_minute) == (9, 100)
    assert plans.limits(project("free", requests_per_minute=7)).requests_per_day == \
        plans.limits(project("free")).requests_per_day  # another plan, same overrides


def test_many_projects_stay_bounded() -> None:
    plans = Plans.load(PLANS_FILE)
    for n in range(10_000):
        assert plans.limits(project("team", requests_per_minute=n + 1)).requests_per_minute \
            == n + 1
    assert len(plans._overridden) <= 4096
