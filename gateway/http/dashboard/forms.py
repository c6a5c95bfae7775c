"""What the dashboard's forms post: sign-in and sign-out, and the admin's changes (keys,
budget, allow-lists, alert thresholds, a webhook test), each through the admin API's own
checks and store functions. A change answers 303 back to its page (POST, redirect, GET)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from aiohttp import web

from gateway import alerts, checks, projects, webhooks
from gateway.errors import GatewayError, NotFound, Unauthorized
from gateway.http.dashboard.auth import form_viewer
from gateway.http.dashboard.pages import render_project
from gateway.http.dashboard.render import page
from gateway.http.dashboard.session import LOGIN_PATH, same
from gateway.http.database import connection
from gateway.http.json import int_param
from gateway.keys import DASHBOARD, KEYSTORE, SETTINGS, WEBHOOKS
from gateway.pipeline.authenticate import authenticate


def _next(value: Any) -> str:
    """Where to go after signing in: a dashboard path only (never another host, nothing that
    could break out of the Location header)."""
    if (isinstance(value, str) and value.startswith("/dashboard") and "//" not in value
            and "\\" not in value and ".." not in value and value.isascii()
            and value.isprintable()):
        return value
    return "/dashboard"


async def login_page(request: web.Request, *, error: str | None = None, status: int = 200,
                     after: Any = None) -> web.Response:
    signer = request.app[DASHBOARD]
    token, fresh = signer.login_token(request)
    response = page(request, "login.html", None, status=status, error=error, login_csrf=token,
                    next=_next(after if after is not None else request.query.get("next")))
    if fresh:
        signer.set_login_cookie(response, token)
    return response


async def login_form(request: web.Request) -> web.Response:
    return await login_page(request)


async def login(request: web.Request) -> web.Response:
    """The admin token signs in the admin; a project key, its project (read-only)."""
    form = await request.post()
    signer = request.app[DASHBOARD]
    given = form.get("csrf")
    signer.check_login_token(request, given if isinstance(given, str) else "")
    token = form.get("token")
    token = token.strip() if isinstance(token, str) else ""
    admin_token = request.app[SETTINGS].auth.admin_token
    target = _next(form.get("next"))
    response = web.HTTPSeeOther(target)
    if admin_token and token and same(token, admin_token):
        signer.start(response)
        raise response
    try:
        principal = await authenticate(request.app[KEYSTORE], {"Authorization": f"Bearer {token}"})
    except Unauthorized:
        return await login_page(request, status=401, after=form.get("next"),
                                error="That is neither the admin token nor a valid project key.")
    signer.start(response, project_id=principal.project.id, key_id=principal.key_id)
    raise response


async def logout(request: web.Request) -> web.Response:
    await form_viewer(request, manage=False)
    response = web.HTTPSeeOther(LOGIN_PATH)
    request.app[DASHBOARD].end(response)
    raise response


def _back(project_id: int, notice: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"/dashboard/projects/{project_id}?notice={quote(notice)}")


async def _apply(project_id: int, action: Any) -> web.HTTPSeeOther:
    """Run a change; its 4xx becomes a notice on the project's page instead of a JSON error."""
    try:
        notice = await action()
    except NotFound:
        raise
    except GatewayError as exc:
        details = exc.details.get("problems") or exc.details
        notice = f"Not saved: {exc.message}" + (f" ({details})" if details else "")
    return _back(project_id, notice)


async def issue_key(request: web.Request) -> web.Response:
    """A new key for the project, shown on this one answer only (never stored in clear)."""
    who, form = await form_viewer(request)
    project_id = int_param(request, "id")
    problems = checks.Problems()
    name = checks.text(form.get("name", ""), "name", problems, max_chars=200, min_chars=0)
    problems.raise_if_any()
    async with connection(request) as conn:
        row, key = await projects.issue_key(conn, project_id, name or "")
    return await render_project(request, who, project_id, new_key=key,
                                notice=f"Key {row['prefix']} issued: copy it now, it is not "
                                       "shown again.")


async def revoke_key(request: web.Request) -> web.Response:
    await form_viewer(request)
    async with connection(request, writes_cached=True) as conn:
        row = await projects.revoke_key(conn, int_param(request, "id"))
    raise _back(row["project_id"], f"Key {row['prefix']} revoked.")


async def set_budget(request: web.Request) -> web.Response:
    """`monthly_budget_usd`: USD, or empty for no budget."""
    _, form = await form_viewer(request)
    project_id = int_param(request, "id")
    raw = str(form.get("monthly_budget_usd", "")).strip()

    async def save() -> str:
        fields = projects.parse_project_fields(
            {"monthly_budget_usd": raw or None}, partial=True)  # a numeric string, as JSON may
        async with connection(request, writes_cached=True) as conn:
            row = await projects.update_project(conn, project_id, fields)
        budget = row["monthly_budget_usd"]
        return "Budget removed." if budget is None else f"Budget set to ${budget} a month."

    raise await _apply(project_id, save)


def _json_number(raw: str) -> Any:
    """A form's number as the JSON API reads one (int or float); anything else stays a string,
    which the API's own check refuses."""
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw


def _names(raw: Any) -> list[str]:
    return [n.strip() for n in str(raw or "").replace("\n", ",").split(",") if n.strip()]


async def set_allow_lists(request: web.Request) -> web.Response:
    """Comma-separated providers and models (empty: all)."""
    _, form = await form_viewer(request)
    project_id = int_param(request, "id")

    async def save() -> str:
        fields = projects.parse_project_fields(
            {"allowed_providers": _names(form.get("allowed_providers")),
             "allowed_models": _names(form.get("allowed_models"))}, partial=True)
        async with connection(request, writes_cached=True) as conn:
            await projects.update_project(conn, project_id, fields)
        return "Allow-lists saved."

    raise await _apply(project_id, save)


async def set_alerts(request: web.Request) -> web.Response:
    """Comma-separated budget percentages that fire `budget.alert`."""
    _, form = await form_viewer(request)
    project_id = int_param(request, "id")

    async def save() -> str:
        given = [_json_number(n) for n in _names(form.get("thresholds"))]
        thresholds = alerts.parse_thresholds(given)
        async with connection(request) as conn:
            stored = await alerts.set_thresholds(conn, project_id, thresholds)
        return f"Alert thresholds: {', '.join(f'{t}%' for t in stored) or 'none'}."

    raise await _apply(project_id, save)


async def test_webhook(request: web.Request) -> web.Response:
    await form_viewer(request)
    try:
        endpoint_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        raise NotFound("no such webhook") from None
    try:
        async with connection(request) as conn:
            event_id = await webhooks.queue_test(conn, endpoint_id)
        notice = f"Test event {event_id} queued."
    except NotFound:
        raise
    except GatewayError as exc:
        notice = f"Not sent: {exc.message}"
    if WEBHOOKS in request.app:
        request.app[WEBHOOKS].wake()
    raise web.HTTPSeeOther(f"/dashboard/webhooks?notice={quote(notice)}")

