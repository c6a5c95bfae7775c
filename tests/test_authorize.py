"""Authorize stage: project enabled, provider and model allow-lists (403)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.domain import ChatRequest, Project
from gateway.errors import Forbidden
from gateway.pipeline.authorize import authorize, model_allowed


def _project(*, enabled: bool = True, providers: frozenset[str] = frozenset(),
             models: frozenset[str] = frozenset()) -> Project:
    return Project(id=1, name="search", team="core", plan="pro",
                   monthly_budget_usd=Decimal("100"), allowed_providers=providers,
                   allowed_models=models, enabled=enabled, metadata={})


def _chat(model: str = "gpt-4o-mini", provider: str = "openai") -> ChatRequest:
    return ChatRequest(entry="openai", provider=provider, model=model,
                       body={"model": model, "messages": []}, stream=False,
                       include_usage=False, max_output_tokens=None)


def test_disabled_project() -> None:
    with pytest.raises(Forbidden) as info:
        authorize(_project(enabled=False), _chat())
    assert info.value.status == 403
    assert info.value.code == "project_disabled"
    assert "'search'" in info.value.message


def test_disabled_beats_allow_lists() -> None:
    project = _project(enabled=False, providers=frozenset({"anthropic"}),
                       models=frozenset({"claude-x"}))
    with pytest.raises(Forbidden) as info:
        authorize(project, _chat())
    assert info.value.code == "project_disabled"


def test_provider_not_allowed() -> None:
    project = _project(providers=frozenset({"anthropic", "mistral"}))
    with pytest.raises(Forbidden) as info:
        authorize(project, _chat(provider="openai"))
    assert info.value.status == 403
    assert info.value.code == "provider_not_allowed"
    assert info.value.details == {"provider": "openai", "allowed": ["anthropic", "mistral"]}


def test_model_not_allowed() -> None:
    project = _project(models=frozenset({"gpt-4o-mini", "gpt-4.1*"}))
    with pytest.raises(Forbidden) as info:
        authorize(project, _chat(model="o3"))
    assert info.value.status == 403
    assert info.value.code == "model_not_allowed"
    assert info.value.details == {"model": "o3", "allowed": ["gpt-4.1*", "gpt-4o-mini"]}
    assert "'o3'" in info.value.message


@pytest.mark.parametrize(("provider", "model"), [
    ("openai", "gpt-4o-mini"), ("openai", "o3"), ("anthropic", "claude-x"), ("x", "")])
def test_empty_allow_lists_allow_everything(provider: str, model: str) -> None:
    authorize(_project(), _chat(model=model, provider=provider))  # does not raise
    assert model_allowed(frozenset(), model) is True


@pytest.mark.parametrize(("allowed", "model", "ok"), [
    ({"gpt-4o*"}, "gpt-4o-mini", True),
    ({"gpt-4o*"}, "gpt-4o", True),
    ({"gpt-4o*"}, "gpt-4o-2024-08-06", True),
    ({"gpt-4o*"}, "o3", False),
    ({"gpt-4o*"}, "gpt-4.1", False),
    ({"gpt-4o*"}, "GPT-4O-MINI", False),  # case-sensitive
    ({"gpt-4o*"}, "openai/gpt-4o", False),
    ({"gpt-4o-mini"}, "gpt-4o-mini", True),
    ({"gpt-4o-mini"}, "gpt-4o-mini-2024-07-18", False),  # exact entries are not prefixes
    ({"gpt-4o-?ini"}, "gpt-4o-mini", False),  # globs only when they hold `*`
    ({"gpt-4o-?ini"}, "gpt-4o-?ini", True),
    ({"*-mini"}, "gpt-4o-mini", True),
    ({"*-mini"}, "gpt-4o-mini-2024-07-18", False),
    ({"o3", "claude-*"}, "claude-sonnet-4-5", True),
    ({"o3", "claude-*"}, "o3", True),
    ({"o3", "claude-*"}, "o3-mini", False),
    ({"*"}, "anything-at-all", True),
])
def test_model_globs(allowed: set[str], model: str, ok: bool) -> None:
    assert model_allowed(frozenset(allowed), model) is ok
    project = _project(models=frozenset(allowed))
    if ok:
        authorize(project, _chat(model=model))
    else:
        with pytest.raises(Forbidden) as info:
            authorize(project, _chat(model=model))
        assert info.value.code == "model_not_allowed"


def test_allowed_provider_and_model_pass() -> None:
    project = _project(providers=frozenset({"openai"}), models=frozenset({"gpt-4o*"}))
    authorize(project, _chat(model="gpt-4o-mini", provider="openai"))
    with pytest.raises(Forbidden) as info:
        authorize(project, _chat(model="gpt-4o-mini", provider="anthropic"))
    assert info.value.code == "provider_not_allowed"
