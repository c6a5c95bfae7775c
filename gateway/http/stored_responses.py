"""`GET` and `DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`: responses
OpenAI stored for a project, reached on OpenAI itself (only it keeps them).

Nothing is generated, so there is nothing to meter: the call is admitted like any other (key,
idempotency, the request rate limits; no budget to reserve), held to the project's provider
allow-list, relayed with the project's (else the gateway's) OpenAI credential, answered as
OpenAI answered (rate-limit headers added), and recorded as one ledger row at cost 0.
"""

from __future__ import annotations

import dataclasses
import time
from urllib.parse import quote

from aiohttp import web

from gateway.domain import Project
from gateway.entries.openai_responses import OPENAI_RESPONSES
from gateway.errors import Forbidden, NotFound
from gateway.http.proxy import settled
from gateway.keys import PIPELINE, REQUEST_ID
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.forward import upstream_errors
from gateway.pipeline.runner import ProxyPipeline
from gateway.providers.base import Credential, Upstream, credential_usable
from gateway.providers.openai_responses import RESPONSES_WIRE, OpenAIResponsesAdapter

PROVIDER = "openai"


async def retrieve(request: web.Request) -> web.Response:
    return await _relay(request, "GET", "")


async def delete(request: web.Request) -> web.Response:
    return await _relay(request, "DELETE", "")


async def input_items(request: web.Request) -> web.Response:
    return await _relay(request, "GET", "/input_items")


async def _relay(request: web.Request, method: str, suffix: str) -> web.Response:
    pipeline = request.app[PIPELINE]
    ex = Exchange(request[REQUEST_ID], request.path, OPENAI_RESPONSES)
    async with settled(request, ex):
        await pipeline.admit_call(ex, request.headers)
        assert ex.principal is not None
        project = ex.principal.project
        upstream, adapter = _openai(pipeline, project)
        credential = await _credential(pipeline, project, upstream)
        path = f"/responses/{quote(request.match_info['id'], safe='')}{suffix}"
        call = adapter.stored_call(credential, path)
        started = time.perf_counter()
        ex.forwarded, ex.credential = True, credential.name
        with upstream_errors(upstream):
            async with upstream.session.request(
                    method, call.url, headers=call.headers, params=request.query,
                    allow_redirects=False, timeout=upstream.read_timeout) as response:
                body = await response.read()
        ex.upstream_s = time.perf_counter() - started
        if response.status >= 400:
            ex.fail(response.status, "upstream_error")
        return web.Response(status=response.status, body=body, content_type="application/json",
                            headers=ex.response_headers)


def _openai(pipeline: ProxyPipeline, project: Project) -> tuple[Upstream, OpenAIResponsesAdapter]:
    """OpenAI's upstream, where this gateway has one and the project may use it."""
    if not project.enabled:
        raise Forbidden(f"project {project.name!r} is disabled", code="project_disabled")
    if project.allowed_providers and PROVIDER not in project.allowed_providers:
        raise Forbidden(f"provider {PROVIDER!r} is not allowed for project {project.name!r}",
                        code="provider_not_allowed",
                        details={"provider": PROVIDER,
                                 "allowed": sorted(project.allowed_providers)})
    upstream = pipeline.upstreams.get(PROVIDER)
    view = upstream.speaking(RESPONSES_WIRE) if upstream is not None else None
    if view is None or not isinstance(view.adapter, OpenAIResponsesAdapter):
        raise NotFound("stored responses live on OpenAI, which this gateway does not reach "
                       "with its Responses API", code="provider_not_configured",
                       details={"provider": PROVIDER})
    return view, view.adapter


async def _credential(pipeline: ProxyPipeline, project: Project,
                      upstream: Upstream) -> Credential:
    """The project's own OpenAI credential if it stored one, else the gateway's: the first
    usable (stored responses belong to the key's organisation, so no weighted choice)."""
    own = await pipeline.credentials.get(project.id, PROVIDER) if pipeline.credentials else ()
    base = upstream.settings.base_url
    found = ([dataclasses.replace(c, name=f"project:{c.name}", base_url=c.base_url or base)
              for c in own] if own else list(upstream.credentials))
    usable = [c for c in found if credential_usable(upstream.settings.kind, c)]
    return (usable or found)[0]
