"""The dashboard's pages (GET): thin handlers over the report and store functions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway import analytics, checks, credentials, projects, usage_rows, webhooks
from gateway.alerts import alert_state
from gateway.analytics import ZERO, Scope
from gateway.errors import BadRequest, NotFound
from gateway.http.analytics import teams_report
from gateway.http.dashboard import figures
from gateway.http.dashboard.auth import Viewer, viewer
from gateway.http.dashboard.charts import bar_chart
from gateway.http.dashboard.render import page
from gateway.http.database import connection
from gateway.http.json import int_param
from gateway.keys import PRICES, READINESS, SETTINGS
from gateway.usage_rows import RowFilter

REQUEST_FILTERS = ("project_id", "provider", "model", "status", "since", "until", "before")


def _tz(request: web.Request) -> str:
    return request.app[SETTINGS].budgets.timezone


async def _summary(request: web.Request, scope: Scope) -> dict[str, Any]:
    now = datetime.now(UTC)
    async with connection(request) as conn:
        headline = await figures.headline(conn, scope, _tz(request), now)
        spend = await figures.spend(conn, scope, now)
    points = [(point["date"], point["value"]) for point in spend["series"]]
    return {"figures": figures.live(headline), "spend": spend, "chart": bar_chart(points)}


async def overview(request: web.Request) -> web.Response:
    who = await viewer(request)
    summary = await _summary(request, who.scope)
    return page(request, "overview.html", who, live_url="/dashboard/live", **summary)


async def live(request: web.Request) -> web.Response:
    """The headline figures as JSON, polled by open pages (`?project_id=` for a project's)."""
    who = await viewer(request)
    query = checks.read_query(request.query, ("project_id",))
    project_id = checks.id_param(query, "project_id")
    if project_id is not None and not who.may_see(project_id):
        raise NotFound(f"project {project_id} does not exist")
    scope = Scope(project_id=project_id) if project_id is not None else who.scope
    async with connection(request) as conn:
        headline = await figures.headline(conn, scope, _tz(request), datetime.now(UTC))
    response = web.json_response({"figures": figures.live(headline)})
    response.headers["Cache-Control"] = "no-store"
    return response


async def project_list(request: web.Request) -> web.Response:
    who = await viewer(request)
    async with connection(request) as conn:
        rows = [r for r in await projects.list_projects(conn) if who.may_see(r["id"])]
        spent = await figures.month_spend_by_project(conn, who.scope, _tz(request),
                                                     datetime.now(UTC))
    return page(request, "projects.html", who, projects=rows,
                spent={row["id"]: spent.get(row["id"], ZERO) for row in rows})


async def project_detail(request: web.Request) -> web.Response:
    who = await viewer(request)
    return await render_project(request, who, int_param(request, "id"))


async def render_project(request: web.Request, who: Viewer, project_id: int, *,
                         new_key: str | None = None, notice: str | None = None) -> web.Response:
    if not who.may_see(project_id):
        raise NotFound(f"project {project_id} does not exist")
    async with connection(request) as conn:
        project = await projects.get_project(conn, project_id)
        keys = await projects.list_keys(conn, project_id) if who.admin else []
        alerts = await alert_state(conn, project_id)
        creds = await credentials.list_credentials(conn, project_id) if who.admin else []
    summary = await _summary(request, Scope(project_id=project_id))
    return page(request, "project.html", who, project=project, keys=keys, alerts=alerts,
                credentials=creds, new_key=new_key,
                notice=notice or request.query.get("notice"),
                live_url=f"/dashboard/live?project_id={project_id}", **summary)


async def teams(request: web.Request) -> web.Response:
    who = await viewer(request, admin=True)
    start, end = figures.month_bounds(_tz(request), datetime.now(UTC))
    async with connection(request) as conn:
        report = await teams_report(conn, Scope(), start, end, admin=True)
    return page(request, "teams.html", who, teams=report["teams"], start=start)


def _row_filter(who: Viewer, query: dict[str, str]) -> RowFilter:
    status = query.get("status")
    if status is not None and status not in usage_rows.STATUSES and not (
            status.isdigit() and 100 <= int(status) <= 599):
        raise BadRequest("status must be ok, error or a status code",
                         details={"field": "status"})
    asked = checks.id_param(query, "project_id")
    project_id = asked if who.admin else who.session.project_id
    if asked is not None and asked != project_id:
        raise NotFound(f"project {asked} does not exist")
    return RowFilter(project_id=project_id, provider=checks.text_param(query, "provider"),
                     model=checks.text_param(query, "model"), status=status,
                     since=checks.date_param(query, "since"),
                     until=checks.date_param(query, "until", end=True))


async def requests(request: web.Request) -> web.Response:
    who = await viewer(request)
    query = {k: v for k, v in checks.read_query(request.query, REQUEST_FILTERS).items() if v}
    filters = _row_filter(who, query)
    async with connection(request) as conn:
        rows, cursor = await usage_rows.latest(conn, filters, query.get("before"))
        names = await analytics.names(conn, "projects", sorted({r["project_id"] for r in rows}))
    kept = {k: v for k, v in query.items() if k != "before"}
    return page(request, "requests.html", who, rows=rows, names=names, filters=kept,
                next_cursor=cursor)


async def request_detail(request: web.Request) -> web.Response:
    who = await viewer(request)
    try:
        request_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        raise NotFound("no such request") from None
    async with connection(request) as conn:
        row = await usage_rows.one(conn, request_id, None if who.admin else who.scope.project_id)
        if row is None:
            raise NotFound(f"request {request_id} is not in the ledger")
        names = await analytics.names(conn, "projects", [row["project_id"]])
    return page(request, "request.html", who, row=row, project_name=names.get(row["project_id"]))


async def webhook_list(request: web.Request) -> web.Response:
    who = await viewer(request, admin=True)
    async with connection(request) as conn:
        endpoints = await webhooks.list_endpoints(conn)
        deliveries = {e["id"]: await webhooks.list_deliveries(conn, e["id"], limit=20)
                      for e in endpoints}
    return page(request, "webhooks.html", who, endpoints=endpoints, deliveries=deliveries,
                notice=request.query.get("notice"))


async def prices(request: web.Request) -> web.Response:
    who = await viewer(request)
    table = request.app[PRICES]
    now = datetime.now(UTC)
    start, end = figures.last_days(now)
    async with connection(request) as conn:
        seen = await analytics.rollup(conn, who.scope, start, end, keys=("provider", "model"))
    unpriced = sorted({(r["provider"], r["model"]) for r in seen if table.get(r["model"]) is None})
    return page(request, "prices.html", who, prices=sorted(table.models(),
                                                           key=lambda p: (p.provider, p.model)),
                unpriced=unpriced, source=request.app[SETTINGS].pricing)


async def health(request: web.Request) -> web.Response:
    who = await viewer(request, admin=True)
    ready, checks_ = await request.app[READINESS].check()
    settings = request.app[SETTINGS]
    return page(request, "health.html", who, ready=ready, checks=checks_,
                ratelimit_backend=settings.ratelimit.backend,
                spill_dir=settings.ledger.spill_path(settings.database.data_dir))
