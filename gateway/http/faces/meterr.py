"""meterr's API face under `/v1` (its API overview), beside OpenAI's: thin handlers over the
gateway's analytics, teams and provider credentials.

Most of meterr's routes are the gateway's own handlers at a second path (routes.py): usage,
history, track, forecast, budgets, team creation. Only the answers whose shape differs live
here. Errors on these paths are meterr's `{"error": {code, message, details}}` (the face
mapping in `faces/__init__.py`).
"""

from __future__ import annotations

from aiohttp import web

from gateway import checks, credentials, projects
from gateway.domain import canonical_provider
from gateway.errors import BadRequest, Forbidden, NotFound
from gateway.http import analytics
from gateway.http.access import Access, caller
from gateway.http.credentials import parse_credential_body
from gateway.http.database import connection
from gateway.http.faces.integrations import integrations
from gateway.http.json import json_response, read_json
from gateway.http.teams import team_rows
from gateway.keys import CREDENTIALS, SETTINGS

PROJECT_QUERY = {"projectId": "project_id"}


async def costs(request: web.Request) -> web.Response:
    """`GET /v1/costs`: the overview's flat shape, `{"openai": {"total", "tokens", ...}}`,
    one entry per group (`group_by` as `/api/costs`: provider by default, model, project,
    team, a period or a metadata key)."""
    scope, query = await analytics.read_scope(request, analytics.COSTS_PARAMS)
    report = await analytics.costs_answer(request, scope, query)
    return analytics.exact_json(report["groups"])


async def list_teams(request: web.Request) -> web.Response:
    """`GET /v1/teams`: every team for the admin token; a project key sees its own team."""
    who = await caller(request, allow=Access.PROJECT_OR_ADMIN)
    checks.read_query(request.query, ())
    async with connection(request) as conn:
        if who.admin:
            teams = await team_rows(conn)
        else:
            team_id = who.key.project.team_id
            teams = [] if team_id is None else await team_rows(conn, team_id)
    return json_response({"teams": teams})


async def list_providers(request: web.Request) -> web.Response:
    """`GET /v1/providers`: the configured providers, whether each is reachable, and the
    project's stored keys for them (the admin token names `project_id`, or sees none)."""
    who = await caller(request, allow=Access.PROJECT_OR_ADMIN)
    query = checks.read_query(request.query, ("project_id",), PROJECT_QUERY)
    project_id = who.project_filter(checks.id_param(query, "project_id"))
    found = await integrations(request, project_id)
    return json_response({"project_id": project_id, "providers": list(found.values())})


async def connect_provider(request: web.Request) -> web.Response:
    """`POST /v1/providers/connect`: store (or replace) a provider key for the project,
    sealed; `{provider, api_key, name?, weight?, options?}`. Only the admin token may point
    a key at another `base_url`."""
    who = await caller(request, allow=Access.PROJECT_OR_ADMIN)
    body = checks.body_object(await read_json(request))
    provider = body.pop("provider", None)
    asked = body.pop("project_id", None)
    if not isinstance(provider, str) or not provider:
        raise BadRequest("provider is required: a configured provider's name",
                         details={"field": "provider"})
    if "base_url" in body and not who.admin:
        raise Forbidden("base_url takes the admin token; a project key stores keys for the "
                        "provider's own URL", details={"field": "base_url"})
    project_id = who.project_id(asked, denied="connects providers only for it")
    provider = canonical_provider(provider)
    box = request.app[CREDENTIALS].box
    if box is None:
        raise BadRequest("storing provider keys needs GATEWAY_SECRET_KEY to encrypt them",
                         code="secret_key_missing", details={"setting": "GATEWAY_SECRET_KEY"})
    fields = parse_credential_body(body, provider, request.app[SETTINGS].providers)
    async with connection(request, writes_cached=True) as conn:
        view = await credentials.put_credential(conn, box, project_id, provider, **fields)
    return json_response({**view, "status": "connected"}, status=201)


async def disconnect_provider(request: web.Request) -> web.Response:
    """`DELETE /v1/providers/{id}`: remove the project's stored key for provider `id`
    (`?name=` one of several; default "default")."""
    who = await caller(request, allow=Access.PROJECT_OR_ADMIN)
    query = checks.read_query(request.query, ("project_id", "name"), PROJECT_QUERY)
    project_id = who.project_id(checks.id_param(query, "project_id"))
    provider = canonical_provider(request.match_info["id"])
    name = checks.text_param(query, "name") or "default"
    if "\x00" in provider:
        raise NotFound(f"project {project_id} has no key for that provider")
    async with connection(request, writes_cached=True) as conn:
        if not await credentials.delete_credential(conn, project_id, provider, name):
            await projects.get_project(conn, project_id)  # 404 naming the project first
            raise NotFound(f"project {project_id} has no {provider} key named {name!r}")
    return json_response({"id": provider, "project_id": project_id, "provider": provider,
                          "name": name, "status": "disconnected"})
