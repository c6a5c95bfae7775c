"""Who may call what, for every route of the URL table.

`ACCESS` declares each route's level; the tests are generated from `app.router.routes()`, so a
route added to `gateway/routes.py` without an entry here fails `test_every_route_is_declared`.
Each route is called with no credential, a wrong key, another project's key, a revoked key,
the admin token and the project's own key. "Passes" means the answer is not 401/403 (bodies
are minimal, so 400/404/409/422 are fine); no answer may be a 5xx or echo the credential.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.domain import Principal, Project
from gateway.errors import BadRequest, Forbidden
from gateway.http.access import Caller
from gateway.routes import setup_routes
from tests.conftest import ADMIN_TOKEN, GatewayFactory, admin_headers, create_project

PUBLIC = "public"  # anyone
ADMIN = "admin"  # the admin token only
PROJECT_OR_ADMIN = "project_or_admin"  # a key for its own project; the admin token for any
PROXY = "proxy"  # a project key only (the proxy entries authenticate in the pipeline)
# The web dashboard: a signed session cookie, never a bearer credential. Without a session a
# page redirects to the sign-in page (303) and a form post is refused (403), whatever
# Authorization header comes with it (tests/test_dashboard.py covers signed-in sessions).
DASHBOARD = "dashboard"

# How a project-scoped route names the project it is about: the other project's key naming
# it must be refused with 403. None: the route is about no project (any valid key passes).
QUERY, BODY = "query", "body"

ACCESS: dict[tuple[str, str], tuple[str, str | None]] = {
    ("POST", "/v1/chat/completions"): (PROXY, None),
    ("POST", "/v1/embeddings"): (PROXY, None),
    ("POST", "/v1/messages"): (PROXY, None),
    ("POST", "/v1/completions"): (PROXY, None),
    ("POST", "/v1/moderations"): (PROXY, None),
    ("POST", "/v1/messages/count_tokens"): (PROXY, None),
    ("POST", "/v1/responses"): (PROXY, None),
    ("GET", "/v1/responses/{id}"): (PROXY, None),
    ("DELETE", "/v1/responses/{id}"): (PROXY, None),
    ("GET", "/v1/responses/{id}/input_items"): (PROXY, None),
    ("POST", "/api/proxy/chat"): (PROXY, None),
    ("GET", "/v1/models"): (PROXY, None),
    ("POST", "/api/tokens/count"): (PROJECT_OR_ADMIN, None),
    ("POST", "/api/smart-router"): (PROJECT_OR_ADMIN, None),
    ("GET", "/api/budgets/status"): (PROJECT_OR_ADMIN, QUERY),
    ("POST", "/api/budgets"): (PROJECT_OR_ADMIN, BODY),
    ("POST", "/api/track"): (PROJECT_OR_ADMIN, BODY),
    ("GET", "/api/analytics/usage"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/api/analytics/timeseries"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/api/analytics/burn-rate"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/api/costs"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/api/costs/forecast"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/api/teams/usage"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/v1/usage"): (PROJECT_OR_ADMIN, QUERY),
    ("POST", "/v1/usage"): (PROJECT_OR_ADMIN, BODY),
    ("GET", "/v1/usage/history"): (PROJECT_OR_ADMIN, QUERY),
    ("POST", "/v1/track"): (PROJECT_OR_ADMIN, BODY),
    ("GET", "/v1/costs"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/v1/costs/forecast"): (PROJECT_OR_ADMIN, QUERY),
    ("POST", "/v1/budgets"): (PROJECT_OR_ADMIN, BODY),
    ("GET", "/v1/teams"): (PROJECT_OR_ADMIN, None),
    ("POST", "/v1/teams"): (ADMIN, None),
    ("GET", "/v1/providers"): (PROJECT_OR_ADMIN, QUERY),
    ("POST", "/v1/providers/connect"): (PROJECT_OR_ADMIN, BODY),
    ("DELETE", "/v1/providers/{id}"): (PROJECT_OR_ADMIN, QUERY),
    ("POST", "/api/tokens/track"): (PROJECT_OR_ADMIN, BODY),
    ("GET", "/api/tokens"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/api/tokens/stats"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/api/tokens/timeseries"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/api/tokens/burn-rate"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/api/costs/all"): (PROJECT_OR_ADMIN, QUERY),
    ("POST", "/api/costs/manual"): (PROJECT_OR_ADMIN, BODY),
    ("GET", "/api/costs/{provider}"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/api/dashboard"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/api/analytics"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/api/projections"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/api/health"): (PUBLIC, None),
    ("GET", "/api/tracking-health"): (PROJECT_OR_ADMIN, QUERY),
    ("GET", "/api/status"): (PROJECT_OR_ADMIN, QUERY),
    ("POST", "/api/sync"): (ADMIN, None),
    ("POST", "/api/sync-organization-usage"): (ADMIN, None),
    ("GET", "/api/reconciliation"): (PROJECT_OR_ADMIN, None),
    ("GET", "/api/health/live"): (PUBLIC, None),
    ("GET", "/api/health/ready"): (PUBLIC, None),
    ("GET", "/api/openapi.json"): (PUBLIC, None),
    ("GET", "/metrics"): (PUBLIC, None),
    ("POST", "/api/admin/projects"): (ADMIN, None),
    ("GET", "/api/admin/projects"): (ADMIN, None),
    ("GET", "/api/admin/projects/{id}"): (ADMIN, None),
    ("PATCH", "/api/admin/projects/{id}"): (ADMIN, None),
    ("PUT", "/api/admin/projects/{id}/budget"): (ADMIN, None),
    ("POST", "/api/admin/projects/{id}/keys"): (ADMIN, None),
    ("GET", "/api/admin/projects/{id}/keys"): (ADMIN, None),
    ("DELETE", "/api/admin/keys/{id}"): (ADMIN, None),
    ("PUT", "/api/admin/teams/{id}/budget"): (ADMIN, None),
    ("GET", "/api/admin/projects/{id}/providers"): (ADMIN, None),
    ("PUT", "/api/admin/projects/{id}/providers/{provider}"): (ADMIN, None),
    ("DELETE", "/api/admin/projects/{id}/providers/{provider}"): (ADMIN, None),
    ("POST", "/api/admin/teams"): (ADMIN, None),
    ("GET", "/api/admin/teams"): (ADMIN, None),
    ("GET", "/api/admin/teams/{id}"): (ADMIN, None),
    ("PATCH", "/api/admin/teams/{id}"): (ADMIN, None),
    ("DELETE", "/api/admin/teams/{id}"): (ADMIN, None),
    ("PUT", "/api/admin/teams/{id}/projects/{project_id}"): (ADMIN, None),
    ("DELETE", "/api/admin/teams/{id}/projects/{project_id}"): (ADMIN, None),
    ("POST", "/api/admin/webhooks"): (ADMIN, None),
    ("GET", "/api/admin/webhooks"): (ADMIN, None),
    ("GET", "/api/admin/webhooks/{id}"): (ADMIN, None),
    ("PATCH", "/api/admin/webhooks/{id}"): (ADMIN, None),
    ("DELETE", "/api/admin/webhooks/{id}"): (ADMIN, None),
    ("POST", "/api/admin/webhooks/{id}/test"): (ADMIN, None),
    ("GET", "/api/admin/webhooks/{id}/deliveries"): (ADMIN, None),
    ("PUT", "/api/admin/projects/{id}/alerts"): (ADMIN, None),
    ("GET", "/api/admin/projects/{id}/alerts"): (ADMIN, None),
    ("GET", "/api/admin/ledger/dead-letters"): (ADMIN, None),
    ("POST", "/api/admin/ledger/dead-letters/replay"): (ADMIN, None),
    ("GET", "/dashboard"): (DASHBOARD, None),
    ("GET", "/dashboard/live"): (DASHBOARD, None),
    ("GET", "/dashboard/projects"): (DASHBOARD, None),
    ("GET", "/dashboard/projects/{id}"): (DASHBOARD, None),
    ("GET", "/dashboard/teams"): (DASHBOARD, None),
    ("GET", "/dashboard/requests"): (DASHBOARD, None),
    ("GET", "/dashboard/requests/{id}"): (DASHBOARD, None),
    ("GET", "/dashboard/webhooks"): (DASHBOARD, None),
    ("GET", "/dashboard/prices"): (DASHBOARD, None),
    ("GET", "/dashboard/health"): (DASHBOARD, None),
    ("GET", "/dashboard/login"): (PUBLIC, None),
    ("POST", "/dashboard/login"): (DASHBOARD, None),  # needs the sign-in form's CSRF token
    ("POST", "/dashboard/logout"): (DASHBOARD, None),
    ("POST", "/dashboard/projects/{id}/keys"): (DASHBOARD, None),
    ("POST", "/dashboard/keys/{id}/revoke"): (DASHBOARD, None),
    ("POST", "/dashboard/projects/{id}/budget"): (DASHBOARD, None),
    ("POST", "/dashboard/projects/{id}/allow-lists"): (DASHBOARD, None),
    ("POST", "/dashboard/projects/{id}/alerts"): (DASHBOARD, None),
    ("POST", "/dashboard/webhooks/{id}/test"): (DASHBOARD, None),
    ("GET", "/dashboard/static/{name}"): (PUBLIC, None),
}

# Bodies valid but for the project, so a 403 for another project's key is about access alone.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/budgets"): {"limit": 1},
    ("POST", "/api/track"): {"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1,
                             "output_tokens": 1},
    ("POST", "/v1/usage"): {"provider": "openai", "model": "gpt-4o-mini", "tokens": 2},
    ("POST", "/v1/track"): {"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1,
                            "output_tokens": 1},
    ("POST", "/v1/budgets"): {"limit": 1},
    ("POST", "/v1/providers/connect"): {"provider": "openai", "api_key": "sk-matrix-000000"},
    ("POST", "/api/tokens/track"): {"provider": "openai", "model": "gpt-4o-mini",
                                    "inputTokens": 1, "outputTokens": 1},
    ("POST", "/api/costs/manual"): {"service": "Cursor", "amount": 20},
}

CASES = ("none", "wrong_key", "other_project_key", "revoked_key", "admin_token", "own_key")


def route_table(app: web.Application) -> set[tuple[str, str]]:
    """Every (method, path template) of an app; HEAD shares its GET's handler and level."""
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None}
    heads = {path for method, path in routes if method == "HEAD"}
    assert heads <= {path for method, path in routes if method == "GET"}
    return {(method, path) for method, path in routes if method != "HEAD"}


def _declared_routes() -> list[tuple[str, str]]:
    app = web.Application()
    setup_routes(app)
    return sorted(route_table(app))


ROUTES = _declared_routes()


def expected(level: str, scope: str | None, case: str, method: str = "GET") -> set[int] | None:
    """The statuses a case may get; None: it passes authentication (anything but 401/403)."""
    if level == DASHBOARD:
        return {303} if method == "GET" else {403}
    if level == PUBLIC or (case == "own_key" and level != ADMIN):
        return None
    if case == "admin_token":
        return {401} if level == PROXY else None
    if level == ADMIN or case in ("none", "wrong_key", "revoked_key"):
        return {401}
    # Another project's key is a valid key: refused only where the route names a project.
    return {403} if level == PROJECT_OR_ADMIN and scope is not None else None


async def test_every_route_is_declared(gateway: TestClient) -> None:
    """A route without a level here (or a level for a route that is gone) fails."""
    served = route_table(gateway.app)
    assert served == set(ROUTES), "routes of the running app differ from gateway/routes.py"
    assert served - set(ACCESS) == set(), "declare these routes' access level in ACCESS"
    assert set(ACCESS) - served == set(), "ACCESS names routes that no longer exist"


class World:
    """Real ids to fill path parameters with, and one credential per case."""

    def __init__(self) -> None:
        self.project: dict[str, Any] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.secrets: dict[str, str] = {}
        self.ids: dict[str, int | str] = {}

    def path(self, template: str) -> str:
        if template.startswith(("/api/admin/keys/", "/dashboard/keys/")):
            kind = "spare_key"
        elif template.startswith("/api/admin/teams/"):
            kind = "team"
        elif template.startswith(("/api/admin/webhooks/", "/dashboard/webhooks/")):
            kind = "webhook"
        else:
            kind = "project"
        return template.format(id=self.ids[kind], project_id=self.ids["project"],
                               provider="openai", name="dashboard.css")


async def _key(client: TestClient, project_id: int) -> dict[str, Any]:
    resp = await client.post(f"/api/admin/projects/{project_id}/keys", json={},
                             headers=admin_headers())
    assert resp.status == 201, await resp.text()
    issued: dict[str, Any] = await resp.json()
    return issued


async def build_world(client: TestClient) -> World:
    world = World()
    project, own = await create_project(client)
    _, other = await create_project(client)
    revoked = await _key(client, project["id"])
    spare = await _key(client, project["id"])  # the one DELETE /api/admin/keys/{id} revokes
    resp = await client.delete(f"/api/admin/keys/{revoked['id']}", headers=admin_headers())
    assert resp.status == 200, await resp.text()
    resp = await client.post("/api/admin/teams", json={"name": "matrix-team"},
                             headers=admin_headers())
    assert resp.status == 201, await resp.text()
    team = await resp.json()
    # Disabled, so POST .../test answers 409 instead of queueing a delivery.
    resp = await client.post("/api/admin/webhooks", headers=admin_headers(), json={
        "url": "http://127.0.0.1:1/hook", "enabled": False})
    assert resp.status == 201, await resp.text()
    webhook = await resp.json()
    world.project = project
    world.ids = {"project": project["id"], "spare_key": spare["id"], "team": team["id"],
                 "webhook": webhook["id"]}
    prefix = own.split("_", 2)[1]
    world.secrets = {"wrong_key": f"gw_{prefix}_not-the-secret", "other_project_key": other,
                     "revoked_key": revoked["key"], "admin_token": ADMIN_TOKEN, "own_key": own}
    world.headers = {"none": {}, **{case: {"Authorization": f"Bearer {secret}"}
                                    for case, secret in world.secrets.items()}}
    return world


async def _call(client: TestClient, world: World, method: str, template: str,
                scope: str | None, headers: dict[str, str]) -> tuple[int, str]:
    params = {"project_id": str(world.project["id"])} if scope == QUERY else None
    body: dict[str, Any] | None = None
    if method in ("POST", "PUT", "PATCH"):
        body = dict(BODIES.get((method, template), {}))
        if scope == BODY:
            body["project_id"] = world.project["id"]
    resp = await client.request(method, world.path(template), params=params, json=body,
                                headers=headers, allow_redirects=False)
    return resp.status, await resp.text()


@pytest.mark.parametrize(("method", "template"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
async def test_access_matrix(gateway: TestClient, method: str, template: str) -> None:
    level, scope = ACCESS[(method, template)]
    world = await build_world(gateway)
    # The admin token last: an admin call may delete what the others are asked about.
    wrong = []
    for case in CASES[:4] + CASES[5:] + CASES[4:5]:
        status, text = await _call(gateway, world, method, template, scope, world.headers[case])
        allowed = expected(level, scope, case, method)
        ok = status < 500 and (status not in (401, 403) if allowed is None
                               else status in allowed)
        secret = world.secrets.get(case)
        if secret is not None and secret.split("_", 2)[-1] in text:
            ok = False
            text = "the answer echoes the credential"
        if not ok:
            want = "passes" if allowed is None else sorted(allowed)
            wrong.append(f"{case}: got {status}, expected {want}: {text[:200]}")
    assert not wrong, f"{method} {template} ({level}):\n" + "\n".join(wrong)


@pytest.mark.parametrize(("method", "template"),
                         [r for r in ROUTES if ACCESS[r][0] == ADMIN],
                         ids=[f"{m} {p}" for m, p in ROUTES if ACCESS[(m, p)][0] == ADMIN])
async def test_the_admin_api_is_off_without_an_admin_token(
        make_gateway: GatewayFactory, method: str, template: str) -> None:
    client = await make_gateway(auth={"admin_token": ""})
    world = World()
    world.ids = {"project": 1, "spare_key": 1, "team": 1, "webhook": 1}
    world.project = {"id": 1}
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
        status, text = await _call(client, world, method, template, None, headers)
        assert status == 403 and "admin_disabled" in text, (headers, status, text)


def _key_caller(project_id: int) -> Caller:
    project = Project(project_id, "p", None, "free", None, frozenset(), frozenset(), True, {})
    return Caller(Principal(7, "prefix", project))


@pytest.mark.parametrize(("who", "asked", "answer"), [
    (Caller(), 5, 5), (Caller(), None, BadRequest), (Caller(), "5", BadRequest),
    (Caller(), True, BadRequest), (_key_caller(1), None, 1), (_key_caller(1), 1, 1),
    (_key_caller(1), 2, Forbidden), (_key_caller(1), True, Forbidden),
    (_key_caller(1), "1", Forbidden),
])
def test_which_project_a_caller_may_name(who: Caller, asked: object, answer: Any) -> None:
    if isinstance(answer, int):
        assert who.project_id(asked) == answer
    else:
        with pytest.raises(answer):
            who.project_id(asked)
    assert Caller().project_filter(None) is None
