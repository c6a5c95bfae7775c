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


def authorize(project: Project, chat: ChatRequest) -> None:
    if not project.enabled:
        raise Forbidden(f"project {project.name!r} is disabled", code="project_disabled")
    if project.allowed_providers and chat.provider not in project.allowed_providers:
        raise Forbidden(
            f"provider {chat.provider!r} is not allowed for project {project.name!r}",
            code="provider_not_allowed",
            details={"provider": chat.provider, "allowed": sorted(project.allowed_providers)})
    if not model_allowed(project.allowed_models, chat.model):
        raise Forbidden(
            f"model {chat.model!r} is not allowed for project {project.name!r}",
            code="model_not_allowed",
            details={"model": chat.model, "allowed": sorted(project.allowed_models)})
