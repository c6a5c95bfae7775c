"""Webhook endpoints and alert thresholds (admin token), and the seed's `POST /api/budgets`."""

from __future__ import annotations

import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web
from yarl import URL

from gateway import alerts, webhooks
from gateway.errors import BadRequest, Conflict, Forbidden, NotFound
from gateway.http.admin import is_admin, require_admin
from gateway.http.json import int_param, json_response, read_json
from gateway.keys import CREDENTIALS, KEYSTORE, POOL, WEBHOOKS
from gateway.pipeline.authenticate import authenticate

_FIELDS = ("url", "events", "format", "project_id", "description", "enabled", "secret")
DEFAULT_EVENTS = ("budget.alert", "usage.exceeded", "anomaly.detected")
MIN_SECRET_CHARS = 16
NOTIFY_CHANNELS = ("webhook", "slack", "email")


def parse_webhook_body(body: Any, *, partial: bool) -> dict[str, Any]:
    """Check a webhook POST (or PATCH, `partial`) body, naming every problem at once."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object with at least url")
    problems: list[dict[str, str]] = []

    def problem(name: str, message: str) -> None:
        problems.append({"field": name, "message": message})

    for key in sorted(set(body) - set(_FIELDS)):
        problem(key, f"unknown field {key!r}; allowed: {', '.join(_FIELDS)}")
    if partial and "project_id" in body:
        problem("project_id", "project_id cannot change; create another webhook")
    out: dict[str, Any] = {}
    if "url" in body or not partial:
        url = body.get("url")
        if not _is_url(url):
            problem("url", "url is required: an http(s) URL with a host, at most 2048 "
                           "characters")
        out["url"] = url
    if "events" in body or not partial:
        events = body.get("events", list(DEFAULT_EVENTS))
        if (not isinstance(events, list) or not events
                or not all(e in webhooks.SUBSCRIBABLE for e in events)):
            problem("events", "events must be a non-empty list of "
                              f"{', '.join(webhooks.SUBSCRIBABLE)} (usage.tracked is opt-in)")
        else:
            out["events"] = sorted(set(events), key=webhooks.SUBSCRIBABLE.index)
    if "format" in body or not partial:
        out["format"] = body.get("format", "json")
        if out["format"] not in webhooks.FORMATS:
            problem("format", f"format must be one of {', '.join(webhooks.FORMATS)}")
    if not partial:
        project_id = body.get("project_id")
        if project_id is not None and (isinstance(project_id, bool)
                                       or not isinstance(project_id, int) or project_id < 1):
            problem("project_id", "project_id must be a project id, or null for every project")
        out["project_id"] = project_id
    if "description" in body or not partial:
        out["description"] = body.get("description", "")
        if not isinstance(out["description"], str) or len(out["description"]) > 500:
            problem("description", "description must be a string of at most 500 characters")
    if "enabled" in body or not partial:
        out["enabled"] = body.get("enabled", True)
        if not isinstance(out["enabled"], bool):
            problem("enabled", "enabled must be true or false")
    secret = body.get("secret")
    if secret is not None and (not isinstance(secret, str) or not (
            MIN_SECRET_CHARS <= len(secret) <= 256)):
        problem("secret", f"secret must be a string of {MIN_SECRET_CHARS} to 256 characters, "
                          "or absent to have one generated")
    out["secret"] = secret
    if problems:
        raise BadRequest("; ".join(p["message"] for p in problems),
                         details={"problems": problems})
    return out


def _is_url(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 2048:
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
    require_admin(request)
    fields = parse_webhook_body(await read_json(request), partial=False)
    async with request.app[POOL].acquire() as conn:
        view, secret = await webhooks.create_endpoint(
            conn, request.app[CREDENTIALS].box, project_id=fields["project_id"],
            url=fields["url"], events=fields["events"], fmt=fields["format"],
            description=fields["description"], enabled=fields["enabled"],
            secret=fields["secret"])
    return json_response({**view, "secret": secret}, status=201)


async def list_webhooks(request: web.Request) -> web.Response:
    require_admin(request)
    value = request.query.get("project_id")
    if value is not None and not value.isdigit():
        raise BadRequest("project_id must be a project id", details={"field": "project_id"})
    async with request.app[POOL].acquire() as conn:
        views = await webhooks.list_endpoints(conn, int(value) if value else None)
    return json_response({"webhooks": views})


async def get_webhook(request: web.Request) -> web.Response:
    require_admin(request)
    async with request.app[POOL].acquire() as conn:
        view = await webhooks.get_endpoint(conn, _endpoint_id(request))
    return json_response(view)


async def update_webhook(request: web.Request) -> web.Response:
    require_admin(request)
    endpoint_id = _endpoint_id(request)
    fields = parse_webhook_body(await read_json(request), partial=True)
    async with request.app[POOL].acquire() as conn:
        view = await webhooks.update_endpoint(conn, request.app[CREDENTIALS].box, endpoint_id,
                                              fields)
    return json_response(view)


async def delete_webhook(request: web.Request) -> web.Response:
    require_admin(request)
    async with request.app[POOL].acquire() as conn:
        await webhooks.delete_endpoint(conn, _endpoint_id(request))
    return web.Response(status=204)


async def test_webhook(request: web.Request) -> web.Response:
    """Queue a `webhook.test` event for this endpoint alone; the worker delivers it."""
    require_admin(request)
    endpoint_id = _endpoint_id(request)
    async with request.app[POOL].acquire() as conn:
        view = await webhooks.get_endpoint(conn, endpoint_id)
        if not view["enabled"]:
            raise Conflict(f"webhook {endpoint_id} is disabled; enable it first",
                           code="webhook_disabled")
        event_id, _ = await webhooks.enqueue(
            conn, webhooks.TEST_EVENT, view["project_id"],
            {"message": "test event from the AI cost gateway", "webhook_id": endpoint_id},
            endpoint_id=endpoint_id)
    if WEBHOOKS in request.app:
        request.app[WEBHOOKS].wake()
    return json_response({"event_id": str(event_id), "status": "queued"}, status=202)


async def list_deliveries(request: web.Request) -> web.Response:
    require_admin(request)
    async with request.app[POOL].acquire() as conn:
        rows = await webhooks.list_deliveries(conn, _endpoint_id(request))
    return json_response({"deliveries": rows})


async def put_alerts(request: web.Request) -> web.Response:
    """`{"thresholds": [50, 80, 100]}`: the budget percentages that fire `budget.alert`."""
    require_admin(request)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"thresholds"}:
        raise BadRequest("body must be {\"thresholds\": [percentages]}")
    thresholds = alerts.parse_thresholds(body["thresholds"])
    project_id = int_param(request, "id")
    async with request.app[POOL].acquire() as conn:
        stored = await alerts.set_thresholds(conn, project_id, thresholds)
    return json_response({"project_id": project_id, "thresholds": stored})


async def get_alerts(request: web.Request) -> web.Response:
    require_admin(request)
    async with request.app[POOL].acquire() as conn:
        state = await alerts.alert_state(conn, int_param(request, "id"))
    return json_response(state)


async def create_budget(request: web.Request) -> web.Response:
    """The seed's `POST /api/budgets`: a monthly budget with alert percentages for the key's
    project (the admin token names `project_id`). A project key may set or lower its budget;
    raising it takes the admin token."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object with at least limit")
    admin = is_admin(request)
    if admin:
        project_id = body.get("project_id")
        if isinstance(project_id, bool) or not isinstance(project_id, int):
            raise BadRequest("project_id is required with the admin token",
                             details={"field": "project_id"})
    else:
        principal = await authenticate(request.app[KEYSTORE], request.headers)
        project_id = principal.project.id
        if body.get("project_id", project_id) != project_id:
            raise Forbidden("a project key sets its own project's budget only")
    fields = _budget_fields(body)
    async with request.app[POOL].acquire() as conn:
        stored = await alerts.set_budget(conn, project_id, fields["limit"], fields["alert_at"],
                                         may_raise=admin)
    return json_response({"project_id": project_id, "name": fields["name"],
                          "period": "monthly", **stored, "notify": fields["notify"],
                          "warnings": fields["warnings"]}, status=201)


def _budget_fields(body: dict[str, Any]) -> dict[str, Any]:
    allowed = {"name", "limit", "period", "alert_at", "notify", "project_id"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown budget field(s): {', '.join(unknown)}",
                         details={"allowed": sorted(allowed)})
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise BadRequest("name must be a string of at most 200 characters",
                         details={"field": "name"})
    raw = body.get("limit")
    try:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise InvalidOperation
        limit = Decimal(str(raw))
        if not limit.is_finite() or limit < 0:
            raise InvalidOperation
    except InvalidOperation:
        raise BadRequest("limit is required: a budget in USD, 0 or more",
                         details={"field": "limit"}) from None
    if body.get("period", "monthly") != "monthly":
        raise BadRequest("period must be \"monthly\": budgets follow calendar months",
                         details={"field": "period"})
    alert_at = (alerts.parse_thresholds(body["alert_at"], "alert_at")
                if "alert_at" in body else None)
    notify = body.get("notify", ["webhook"])
    if not isinstance(notify, list) or not all(n in NOTIFY_CHANNELS for n in notify):
        raise BadRequest(f"notify must be a list of {', '.join(NOTIFY_CHANNELS)}",
                         details={"field": "notify"})
    warnings = []
    if "email" in notify:
        warnings.append("the gateway sends no email: budget alerts go to the webhooks that "
                        "subscribe to budget.alert (format \"slack\" posts to Slack)")
    return {"name": name, "limit": limit, "alert_at": alert_at, "notify": notify,
            "warnings": warnings}
