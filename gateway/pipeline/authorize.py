"""Stage 3, authorize: the project is enabled and may use this provider and model (403)."""

from __future__ import annotations

from fnmatch import fnmatchcase

from gateway.domain import ChatRequest, Project
from gateway.errors import Forbidden


def model_allowed(allowed: frozenset[str], model: str) -> bool:
    """Empty allows all; entries match exactly, or as globs when they hold `*`."""
    if not allowed or model in allowed:
        return True
    return any("*" in pattern and fnmatchcase(model, pattern) for pattern in allowed)


def enabled(project: Project) -> None:
    """403 for a disabled project."""
    if not project.enabled:
        raise Forbidden(f"project {project.name!r} is disabled", code="project_disabled")


def authorize(project: Project, chat: ChatRequest) -> None:
    authorize_model(project, chat.provider, chat.model)


def authorize_model(project: Project, provider: str, model: str) -> None:
    """403 unless the project is enabled and may use this provider and model."""
    enabled(project)
    if project.allowed_providers and provider not in project.allowed_providers:
        raise Forbidden(
            f"provider {provider!r} is not allowed for project {project.name!r}",
            code="provider_not_allowed",
            details={"provider": provider, "allowed": sorted(project.allowed_providers)})
    if not model_allowed(project.allowed_models, model):
        raise Forbidden(
            f"model {model!r} is not allowed for project {project.name!r}",
            code="model_not_allowed",
            details={"model": model, "allowed": sorted(project.allowed_models)})
