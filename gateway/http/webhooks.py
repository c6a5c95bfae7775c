"""Webhook endpoints and alert thresholds (admin token), and the seed's `POST /api/budgets`."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web
from yarl import URL

from gateway import alerts, checks, projects, webhooks
from gateway.errors import BadRequest, NotFound
from gateway.http.access import Access, caller
from gateway.http.database import connection
from gateway.http.json import int_param, json_response, read_json
from gateway.keys import CREDENTIALS, WEBHOOKS

_FIELDS = ("url", "events", "format", "project_id", "description", "enabled", "secret")
DEFAULT_EVENTS = ("budget.alert", "usage.exceeded", "anomaly.detected")
MIN_SECRET_CHARS = 16
NOTIFY_CHANNELS = ("webhook", "slack", "email")


def parse_webhook_body(body: Any, *, partial: bool) -> dict[str, Any]:
    """Check a webhook POST (or PATCH, `partial`) body, naming every problem at once."""
    body = checks.body_object(body)
    problems = checks.Problems()
    checks.unknown_fields(body, _FIELDS, problems)
    if partial and "project_id" in body:
        problems.add("project_id", "cannot change; create another webhook")
    out: dict[str, Any] = {}
    if "url" in body or not partial:
        url = body.get("url")
        if not _is_url(url):
            problems.add("url", "is required: an http(s) URL with a host, at most 2048 "
                                "characters")
        out["url"] = url
    if "events" in body or not partial:
        events = body.get("events", list(DEFAULT_EVENTS))
        if (not isinstance(events, list) or not events or not all(
                isinstance(e, str) and e in webhooks.SUBSCRIBABLE for e in events)):
            problems.add("events", "must be a non-empty list of "
                                   f"{', '.join(webhooks.SUBSCRIBABLE)} (usage.tracked is "
                                   "opt-in)")
        else:
            out["events"] = sorted(set(events), key=webhooks.SUBSCRIBABLE.index)
    if "format" in body or not partial:
        out["format"] = body.get("format", "json")
        if not isinstance(out["format"], str) or out["format"] not in webhooks.FORMATS:
            problems.add("format", f"must be one of {', '.join(webhooks.FORMATS)}")
    if not partial:
        project_id = body.get("project_id")
        if project_id is not None:
            checks.ident(project_id, "project_id", problems,
                         "must be a project id, or null for every project")
        out["project_id"] = project_id
    if "description" in body or not partial:
        out["description"] = checks.text(
            body.get("description", ""), "description", problems, max_chars=500, min_chars=0,
            message="must be a string of at most 500 characters without NUL")
    if "enabled" in body or not partial:
        out["enabled"] = checks.flag(body.get("enabled", True), "enabled", problems)
    secret = body.get("secret")
    if secret is not None:
        checks.text(secret, "secret", problems, max_chars=256, min_chars=MIN_SECRET_CHARS,
                    message=f"must be a string of {MIN_SECRET_CHARS} to 256 characters, or "
                            "absent to have one generated")
    out["secret"] = secret
    problems.raise_if_any()
    return out


def _is_url(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 2048 or "\x00" in value:
        return False
    try:
        url = URL(value)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.host)


def _endpoint_id(request: web.Request) -> uuid.UUID:
    value = request.match_info["id"]
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"webhook {value!r} does not exist") from None


async def create_webhook(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    fields = parse_webhook_body(await read_json(request), partial=False)
    async with connection(request) as conn:
        view, secret = await webhooks.create_endpoint(
            conn, request.app[CREDENTIALS].box, project_id=fields["project_id"],
            url=fields["url"], events=fields["events"], fmt=fields["format"],
            description=fields["description"], enabled=fields["enabled"],
            secret=fields["secret"])
    return json_response({**view, "secret": secret}, status=201)


async def list_webhooks(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    project_id = checks.id_param(checks.read_query(request.query, ("project_id",)),
                                 "project_id")
    async with connection(request) as conn:
        views = await webhooks.list_endpoints(conn, project_id)
    return json_response({"webhooks": views})


async def get_webhook(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    async with connection(request) as conn:
        view = await webhooks.get_endpoint(conn, _endpoint_id(request))
    return json_response(view)


async def update_webhook(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    endpoint_id = _endpoint_id(request)
    fields = parse_webhook_body(await read_json(request), partial=True)
    async with connection(request) as conn:
        view = await webhooks.update_endpoint(conn, request.app[CREDENTIALS].box, endpoint_id,
                                              fields)
    return json_response(view)


async def delete_webhook(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    async with connection(request) as conn:
        await webhooks.delete_endpoint(conn, _endpoint_id(request))
    return web.Response(status=204)


async def test_webhook(request: web.Request) -> web.Response:
    """Queue a `webhook.test` event for this endpoint alone; the worker delivers it."""
    await caller(request, allow=Access.ADMIN)
    endpoint_id = _endpoint_id(request)
    async with connection(request) as conn:
        event_id = await webhooks.queue_test(conn, endpoint_id)
    if WEBHOOKS in request.app:
        request.app[WEBHOOKS].wake()
    return json_response({"event_id": str(event_id), "status": "queued"}, status=202)


async def list_deliveries(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    async with connection(request) as conn:
        rows = await webhooks.list_deliveries(conn, _endpoint_id(request))
    return json_response({"deliveries": rows})


async def put_alerts(request: web.Request) -> web.Response:
    """`{"thresholds": [50, 80, 100]}`: the budget percentages that fire `budget.alert`."""
    await caller(request, allow=Access.ADMIN)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"thresholds"}:
        raise BadRequest("body must be {\"thresholds\": [percentages]}")
    thresholds = alerts.parse_thresholds(body["thresholds"])
    project_id = int_param(request, "id")
    async with connection(request) as conn:
        stored = await alerts.set_thresholds(conn, project_id, thresholds)
    return json_response({"project_id": project_id, "thresholds": stored})


async def get_alerts(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    async with connection(request) as conn:
        state = await alerts.alert_state(conn, int_param(request, "id"))
    return json_response(state)


async def create_budget(request: web.Request) -> web.Response:
    """The seed's `POST /api/budgets`: a monthly budget with alert percentages for the key's
    project (the admin token names `project_id`). A project key may set or lower its budget;
    raising it takes the admin token."""
    who = await caller(request, allow=Access.PROJECT_OR_ADMIN)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object with at least limit")
    fields = _budget_fields(body)  # project_id range-checked before anything uses it
    project_id = who.project_id(body.get("project_id"), denied="sets only its own budget")
    async with connection(request) as conn:
        stored = await alerts.set_budget(conn, project_id, fields["limit"], fields["alert_at"],
                                         may_raise=who.admin)
    return json_response({"project_id": project_id, "name": fields["name"],
                          "period": "monthly", **stored, "notify": fields["notify"],
                          "warnings": fields["warnings"]}, status=201)


def _budget_fields(body: dict[str, Any]) -> dict[str, Any]:
    problems = checks.Problems()
    checks.unknown_fields(body, ("name", "limit", "period", "alert_at", "notify", "project_id"),
                          problems)
    if body.get("project_id") is not None:
        checks.ident(body["project_id"], "project_id", problems)
    name = body.get("name")
    if name is not None:
        checks.text(name, "name", problems, max_chars=200, min_chars=0,
                    message="must be a string of at most 200 characters without NUL")
    limit = checks.money(body.get("limit"), "limit", problems, high=projects.MAX_BUDGET_USD,
                         message="is required: a budget in USD, 0 or more")
    if body.get("period", "monthly") != "monthly":
        problems.add("period", "must be \"monthly\": budgets follow calendar months")
    alert_at = (alerts.check_thresholds(body["alert_at"], "alert_at", problems)
                if "alert_at" in body else None)
    notify = body.get("notify", ["webhook"])
    if not isinstance(notify, list) or not all(
            isinstance(n, str) and n in NOTIFY_CHANNELS for n in notify):
        problems.add("notify", f"must be a list of {', '.join(NOTIFY_CHANNELS)}")
    problems.raise_if_any()
    warnings = []
    if "email" in notify:
        warnings.append("the gateway sends no email: budget alerts go to the webhooks that "
                        "subscribe to budget.alert (format \"slack\" posts to Slack)")
    return {"name": name, "limit": limit, "alert_at": alert_at, "notify": notify,
            "warnings": warnings}
