"""Whether a request can go to a route: the checks `ProxyPipeline` applies to each route of a
chain, and to each model the smart router considers (`ModelAccess.refusal`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from gateway.catalogue import ModelInfo
from gateway.domain import ChatRequest, Project
from gateway.errors import BadRequest, Forbidden, GatewayError
from gateway.pipeline.authorize import authorize_model
from gateway.providers.base import Credential, Upstream, unsupported_provider, untranslatable
from gateway.routing import Route, Router

StoredCredentials = Callable[[int, str], Awaitable[tuple[Credential, ...]]]


def check_translatable(upstreams: Mapping[str, Upstream], chat: ChatRequest,
                       route: Route) -> None:
    """400 when the route's provider cannot take the request: an entry only some provider
    kinds serve, or features its API cannot express."""
    upstream = upstreams[route.provider]
    if chat.provider_kinds and upstream.settings.kind not in chat.provider_kinds:
        raise unsupported_provider(chat, route.provider, upstream.settings.kind)
    wire = upstream.speaking(chat.entry_wire).adapter.wire
    if chat.untranslatable and wire != chat.entry_wire:
        raise untranslatable(list(chat.untranslatable), route.provider,
                             f"it speaks {wire}'s API, the request is {chat.entry_wire}'s")


class ModelAccess:
    def __init__(self, router: Router, upstreams: Mapping[str, Upstream],
                 stored: StoredCredentials | None) -> None:
        self._router = router
        self._upstreams = upstreams
        self._stored = stored

    async def refusal(self, project: Project | None, chat: ChatRequest | None,
                      pinned: str | None, info: ModelInfo) -> str | None:
        """Why a request (`chat`; None: any) of `project` (None: the admin's) cannot go to a
        catalogued model, or None when it can: a provider other than the pinned one, the
        project's allow-lists, a provider this gateway does not configure or holds no
        credential for, or a wire the request cannot be sent on."""
        route = self._router.route(info.name)
        if (pinned is not None and route.provider != pinned) or route.provider != info.provider:
            return "served by another provider"
        if route.provider not in self._upstreams:
            return "provider not configured"
        try:
            if project is not None:
                authorize_model(project, route.provider, info.name)
            if chat is not None:
                check_translatable(self._upstreams, chat, route)
        except (BadRequest, Forbidden) as exc:
            return exc.message
        upstream = self._upstreams[route.provider]
        if not await self._has_credential(None if project is None else project.id, upstream):
            return f"no credential for {route.provider}"
        return None

    async def _has_credential(self, project_id: int | None, upstream: Upstream) -> bool:
        """Reachable as `GET /v1/models` says: the gateway's credentials can call it (a key,
        or a server of one's own that needs none), or the project stored a readable key."""
        if upstream.usable:
            return True
        if self._stored is None or project_id is None:
            return False
        try:
            return bool(await self._stored(project_id, upstream.name))
        except GatewayError:  # stored but unreadable now: not reachable
            return False
