"""No input gives a 5xx (issue 12): a catalogue of hostile inputs, each answered with its 4xx
in the route's error shape, and never with database text."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import GatewayFactory, admin_headers, chat_body, create_project
from test_ledger import row

from gateway.domain import Usage
from gateway.errors import BadRequest
from gateway.keys import LEDGER

ADMIN = admin_headers()
BIG = str(2**63)  # one past PostgreSQL's bigint
DB_TEXT = ("invalid byte sequence", "out of range", "violates", "bigint", "0x00", "asyncpg")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def answer(client: TestClient, method: str, path: str, status: int, *,
                 headers: dict[str, str], body: Any = None,
                 params: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON error of a call that must answer `status`, checked for the route's shape."""
    resp = await client.request(method, path, json=body, headers=headers, params=params)
    text = await resp.text()
    assert resp.status == status, (method, path, params, body, text)
    data: dict[str, Any] = await resp.json()
    if path.startswith("/v1/messages"):
        assert data["type"] == "error" and data["error"]["message"]
    elif path.startswith("/v1/"):
        assert set(data["error"]) >= {"message", "type", "code"}
    else:
        assert isinstance(data["error"], str) and data["requestId"]
        assert isinstance(data["details"], dict)
        if status == 400 and "errors" in data["details"]:
            for problem in data["details"]["errors"]:
                assert set(problem) == {"field", "message"}
    assert not any(needle in text for needle in DB_TEXT), text
    return data


def fields(data: dict[str, Any]) -> set[str]:
    return {p["field"] for p in data["details"]["errors"]}


# -- ids ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad_id", [BIG, "99999999999999999999", "²", "1" * 5000, "0", "-1"])
async def test_path_ids_out_of_range_are_404(gateway: TestClient, bad_id: str) -> None:
    project, _ = await create_project(gateway, team="t")
    team_id, project_id = project["team_id"], project["id"]
    cases = [
        ("GET", f"/api/admin/projects/{bad_id}", None),
        ("PATCH", f"/api/admin/projects/{bad_id}", {"plan": "pro"}),
        ("PUT", f"/api/admin/projects/{bad_id}/budget", {"monthly_budget_usd": 5}),
        ("POST", f"/api/admin/projects/{bad_id}/keys", {}),
        ("GET", f"/api/admin/projects/{bad_id}/keys", None),
        ("DELETE", f"/api/admin/keys/{bad_id}", None),
        ("GET", f"/api/admin/teams/{bad_id}", None),
        ("PATCH", f"/api/admin/teams/{bad_id}", {"name": "x"}),
        ("DELETE", f"/api/admin/teams/{bad_id}", None),
        ("PUT", f"/api/admin/teams/{bad_id}/budget", {"monthly_budget_usd": 5}),
        ("PUT", f"/api/admin/teams/{team_id}/projects/{bad_id}", None),
        ("DELETE", f"/api/admin/teams/{bad_id}/projects/{project_id}", None),
        ("GET", f"/api/admin/projects/{bad_id}/alerts", None),
        ("PUT", f"/api/admin/projects/{bad_id}/alerts", {"thresholds": [50]}),
        ("GET", f"/api/admin/projects/{bad_id}/providers", None),
        ("DELETE", f"/api/admin/projects/{bad_id}/providers/openai", None),
        ("GET", f"/api/admin/webhooks/{bad_id}", None),
    ]
    for method, path, body in cases:
        data = await answer(gateway, method, path, 404, headers=ADMIN, body=body)
        assert data["code"] == "not_found"


@pytest.mark.parametrize("bad_id", [BIG, "²", "1" * 5000, "0", "x"])
async def test_query_and_body_ids_out_of_range_are_400(gateway: TestClient, bad_id: str) -> None:
    for path in ("/api/analytics/usage", "/api/analytics/timeseries",
                 "/api/analytics/burn-rate", "/api/costs", "/api/costs/forecast",
                 "/api/teams/usage", "/api/budgets/status", "/api/admin/webhooks"):
        for name in ("project_id", "team_id"):
            if name == "team_id" and path in ("/api/budgets/status", "/api/admin/webhooks"):
                continue
            data = await answer(gateway, "GET", path, 400, headers=ADMIN, params={name: bad_id})
            assert fields(data) == {name}, path
    number = int(bad_id) if bad_id.isascii() and bad_id.isdigit() and len(bad_id) < 20 else bad_id
    track = {"provider": "openai", "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1}
    for path, body in (("/api/track", {**track, "project_id": number}),
                       ("/api/budgets", {"limit": 5, "project_id": number}),
                       ("/api/admin/webhooks", {"url": "http://127.0.0.1:9/h",
                                                "project_id": number})):
        data = await answer(gateway, "POST", path, 400, headers=ADMIN, body=body)
        assert "project_id" in fields(data), path


# -- dates -------------------------------------------------------------------------------------

@pytest.mark.parametrize("params", [
    {"end_date": "9999-12-31"},
    {"start_date": "0001-01-01"},
    {"start_date": "0001-01-01T00:00:00+05:00"},
    {"end_date": "9999-12-31T23:59:59-23:59"},
    {"endDate": "9999-12-31"},
    {"start_date": "2999-12-31", "end_date": "3000-01-01"},
    {"end_date": "\uff11\uff12\uff13\uff14-05-06"},  # full-width digits
])
async def test_far_dates_are_400(gateway: TestClient, params: dict[str, str]) -> None:
    _, key = await create_project(gateway)
    for path in ("/api/analytics/usage", "/api/analytics/timeseries", "/api/costs",
                 "/api/teams/usage"):
        for headers in (ADMIN, bearer(key)):
            data = await answer(gateway, "GET", path, 400, headers=headers, params=params)
            assert data["details"]["field"] in ("start_date", "end_date")


# -- chat bodies -------------------------------------------------------------------------------

@pytest.mark.parametrize("role", [{"a": 1}, ["user"], 7, None, "robot"])
async def test_a_role_of_any_type_is_400(gateway: TestClient, role: Any) -> None:
    _, key = await create_project(gateway)
    messages = [{"role": role, "content": "hi"}]
    data = await answer(gateway, "POST", "/v1/chat/completions", 400, headers=bearer(key),
                        body={"model": "gpt-4o", "messages": messages})
    assert data["error"]["param"] == "messages[0].role"
    data = await answer(gateway, "POST", "/api/proxy/chat", 400, headers=bearer(key),
                        body={"provider": "openai", "model": "gpt-4o", "messages": messages})
    assert fields(data) == {"messages[0].role"}
    await answer(gateway, "POST", "/v1/messages", 400, headers=bearer(key),
                 body={"model": "claude-3-5-haiku", "max_tokens": 5, "messages": messages})


@pytest.mark.parametrize("metadata", [
    {"feature": 1}, {"nested": {"a": "b"}}, {"k" * 65: "v"}, {"k": "v" * 513},
    {f"k{i}": "v" for i in range(17)}, ["a"], "team=a", {"": "v"},
])
async def test_openai_metadata_must_be_an_object_of_strings(gateway: TestClient,
                                                            metadata: Any) -> None:
    _, key = await create_project(gateway)
    data = await answer(gateway, "POST", "/v1/chat/completions", 400, headers=bearer(key),
                        body=chat_body(metadata=metadata))
    assert data["error"]["param"] == "metadata"


async def test_every_body_with_field_problems_says_errors(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(secrets={"key": "a secret of at least thirty-two characters"})
    project, key = await create_project(gateway)
    cases = [
        ("/api/track", {"provider": "a\x00", "model": "m", "input_tokens": 2**31,
                        "output_tokens": -1}, {"provider", "input_tokens", "output_tokens"}),
        ("/api/admin/projects", {"name": "a\x00b", "requests_per_minute": 2**40,
                                 "monthly_budget_usd": "1e999999"},
         {"name", "requests_per_minute", "monthly_budget_usd"}),
        ("/api/admin/teams", {"name": "x" * 201}, {"name"}),
        ("/api/admin/webhooks", {"url": "http://h/\x00", "description": "\x00",
                                 "events": [{"a": 1}], "format": ["json"]},
         {"url", "description", "events", "format"}),
        ("/api/budgets", {"limit": "NaN", "notify": [{}], "project_id": project["id"]},
         {"limit", "notify"}),
    ]
    for path, body, expected in cases:
        data = await answer(gateway, "POST", path, 400, headers=ADMIN, body=body)
        assert fields(data) == expected, path
    data = await answer(gateway, "PUT", f"/api/admin/projects/{project['id']}/providers/openai",
                        400, headers=ADMIN, body={"api_key": "k", "options": {"a": 1}})
    assert fields(data) == {"options"}
    data = await answer(gateway, "POST", "/api/track", 400, headers=bearer(key),
                        body={"provider": "p", "model": "m", "input_tokens": 1,
                              "output_tokens": 1, "metadata": {"a": "\x00"}})
    assert fields(data) == {"metadata"}


async def test_the_ledger_never_answers_database_text(gateway: TestClient) -> None:
    with pytest.raises(BadRequest) as caught:
        await gateway.app[LEDGER].write_now(row(usage=Usage(2**40, 0, 0)))  # integer columns
    assert caught.value.message == "the ledger refused the usage row: a value is out of range"


# -- query parameters --------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "accepted"), [
    ("/api/analytics/usage", "group_by"), ("/api/analytics/timeseries", "interval"),
    ("/api/analytics/burn-rate", "hours"), ("/api/costs", "group_by"),
    ("/api/costs/forecast", "provider"), ("/api/teams/usage", "start_date"),
    ("/api/budgets/status", "project_id"),
])
async def test_unknown_query_parameters_are_named(gateway: TestClient, path: str,
                                                  accepted: str) -> None:
    _, key = await create_project(gateway)
    data = await answer(gateway, "GET", path, 400, headers=bearer(key),
                        params={"colour": "red"})
    assert data["details"]["field"] == "colour"
    assert "colour" in data["error"] and accepted in data["error"]
    assert accepted in data["details"]["accepted"]
    await answer(gateway, "GET", path, 400, headers=bearer(key), params={"provider\x00": "x"})


async def test_text_parameters_refuse_nul(gateway: TestClient) -> None:
    project, _ = await create_project(gateway)
    for name in ("provider", "model", "service"):
        await answer(gateway, "GET", "/api/costs", 400, headers=ADMIN, params={name: "a\x00"})
    await answer(gateway, "DELETE", f"/api/admin/projects/{project['id']}/providers/openai",
                 400, headers=ADMIN, params={"name": "a\x00"})
    await answer(gateway, "GET", "/api/costs", 400, headers=ADMIN,
                 params={"provider": "a", "service": "b"})  # the same parameter twice


async def test_seed_parameter_names_are_aliases(gateway: TestClient) -> None:
    _, key = await create_project(gateway)
    resp = await gateway.get("/api/analytics/timeseries", headers=bearer(key),
                             params={"startDate": "2025-02-10", "endDate": "2025-02-12"})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["start_date"].startswith("2025-02-10") and len(body["series"]) == 3
    resp = await gateway.get("/api/analytics/burn-rate", headers=bearer(key),
                             params={"service": "anthropic", "hours": "2"})
    body = await resp.json()
    assert resp.status == 200 and body["provider"] == "anthropic", body
    resp = await gateway.get("/api/costs", headers=bearer(key),
                             params={"groupBy": "model", "startDate": "2025-01-01"})
    body = await resp.json()
    assert resp.status == 200 and body["group_by"] == "model", body
