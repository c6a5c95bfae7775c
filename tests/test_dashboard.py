"""The web dashboard over HTTP (no browser): sign-in, sessions, CSRF, scoping, escaping, and
figures equal to the JSON APIs'. Browser tests are in test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.demo import ensure_admin_token, with_demo_defaults
from gateway.http.dashboard.charts import bar_chart
from gateway.http.dashboard.session import COOKIE, Signer
from gateway.keys import DASHBOARD
from gateway.settings import settings_from_mapping
from tests.conftest import (
    ADMIN_TOKEN,
    admin_headers,
    chat_body,
    create_project,
    wait_for_rows,
)

FIGURE = re.compile(r'data-metric="([a-z_]+)" data-value="([^"]*)"')


async def sign_in(client: TestClient, token: str) -> Any:
    """Sign in through the form, as a browser would: GET (CSRF cookie and field), POST."""
    resp = await client.get("/dashboard/login")
    assert resp.status == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
    assert csrf is not None
    return await client.post("/dashboard/login", data={"csrf": csrf.group(1), "token": token,
                                                       "next": "/dashboard"},
                             allow_redirects=False)


def estimate_in(forecast: str) -> Decimal:
    """`GET /api/costs/forecast`'s `estimated_cost`, exactly as answered."""
    found = re.search(r'"estimated_cost":([0-9.eE+-]+)', forecast)
    assert found is not None, forecast
    return Decimal(found.group(1))


async def forecast_estimate(client: TestClient, headers: dict[str, str]) -> Decimal:
    """The forecast's estimate now. With today's spend alone it is extrapolated over the
    fraction of the day gone, so it falls as the day goes on (fast just after midnight): a
    page's figure is checked between the API's answers before and after it."""
    return estimate_in(await (await client.get("/api/costs/forecast", headers=headers)).text())


def figures(html: str) -> dict[str, str]:
    return dict(FIGURE.findall(html))


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


async def test_pages_need_a_session(gateway: TestClient) -> None:
    resp = await gateway.get("/dashboard/projects", allow_redirects=False,
                             headers=admin_headers())  # a bearer token is not a session
    assert resp.status == 303
    location = urlsplit(resp.headers["Location"])
    assert location.path == "/dashboard/login"
    assert parse_qs(location.query) == {"next": ["/dashboard/projects"]}
    resp = await gateway.get("/dashboard/login")
    assert resp.status == 200
    assert "Content-Security-Policy" in resp.headers
    cookie = resp.cookies["gw_dashboard_login"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"


async def test_admin_sign_in_sets_a_strict_signed_cookie(gateway: TestClient) -> None:
    resp = await sign_in(gateway, ADMIN_TOKEN)
    assert resp.status == 303 and resp.headers["Location"] == "/dashboard"
    cookie = resp.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and not cookie["secure"]
    assert ADMIN_TOKEN not in cookie.value
    resp = await gateway.get("/dashboard")
    assert resp.status == 200
    assert set(figures(await resp.text())) >= {"month_spend_usd", "month_budget_usd",
                                               "requests_today", "errors_today",
                                               "forecast_month_usd"}


async def test_sign_in_goes_back_to_a_dashboard_page_only(gateway: TestClient) -> None:
    for asked, target in (("/dashboard/prices", "/dashboard/prices"),
                          ("https://evil.example/", "/dashboard"),
                          ("//evil.example/dashboard", "/dashboard"),
                          ("/dashboard\r\nSet-Cookie: x=1", "/dashboard"),
                          ("/dashboard/../api/admin/projects", "/dashboard")):
        gateway.session.cookie_jar.clear()
        html = await (await gateway.get("/dashboard/login")).text()
        resp = await gateway.post("/dashboard/login", data={
            "csrf": csrf_of(html), "token": ADMIN_TOKEN, "next": asked}, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == target, asked


async def test_a_wrong_token_is_refused(gateway: TestClient) -> None:
    resp = await sign_in(gateway, "not-the-token")
    assert resp.status == 401
    assert COOKIE not in resp.cookies
    resp = await gateway.get("/dashboard", allow_redirects=False)
    assert resp.status == 303


async def test_sign_in_without_the_form_token_is_refused(gateway: TestClient) -> None:
    resp = await gateway.post("/dashboard/login", data={"token": ADMIN_TOKEN},
                              allow_redirects=False)
    assert resp.status == 403
    assert COOKIE not in resp.cookies


def test_secure_cookies_when_served_over_tls() -> None:
    for section, secure in (({"server": {"public_url": "https://gw.example"}}, True),
                            ({"dashboard": {"secure_cookies": True}}, True),
                            ({"server": {"public_url": "http://gw.example"}}, False)):
        signer = Signer(settings_from_mapping({"auth": {"admin_token": "t"}, **section}, {}))
        response = web.Response()
        signer.start(response)
        signer.set_login_cookie(response, "token")
        assert response.cookies[COOKIE]["secure"] is secure or (
            response.cookies[COOKIE]["secure"] == "" and not secure)
        assert response.cookies[COOKIE]["samesite"] == "Strict"
        assert response.cookies[COOKIE]["httponly"] is True


async def test_expired_or_forged_sessions_are_refused(gateway: TestClient) -> None:
    signer: Signer = gateway.app[DASHBOARD]
    good = signer.sign({"csrf": "x", "exp": int(time.time()) + 60,
                        "admin": signer.admin_fingerprint})
    expired = signer.sign({"csrf": "x", "exp": int(time.time()) - 1,
                           "admin": signer.admin_fingerprint})
    body, _, mac = good.partition(".")
    forged = f"{body}x.{mac}"
    for value, status in ((good, 200), (expired, 303), (forged, 303)):
        gateway.session.cookie_jar.clear()
        resp = await gateway.get("/dashboard", cookies={COOKIE: value}, allow_redirects=False)
        assert resp.status == status, value


async def test_garbage_cookies_and_tokens_are_refused_not_errors(gateway: TestClient) -> None:
    signer: Signer = gateway.app[DASHBOARD]
    for value in ("", ".", "a.b.c", "\u00e9.\u00e9", "\udcff.x", "e30.x", "x" * 5000):
        assert signer.session(value) is None
        assert signer.verify(value) is None
    resp = await gateway.post("/dashboard/login", data={"csrf": "\u00e9\u00a3", "token": "\u00a3"},
                              cookies={"gw_dashboard_login": "\u00e9.\u00e9"},
                              allow_redirects=False)
    assert resp.status == 403


async def test_sign_out_ends_the_session(gateway: TestClient) -> None:
    await sign_in(gateway, ADMIN_TOKEN)
    html = await (await gateway.get("/dashboard")).text()
    resp = await gateway.post("/dashboard/logout", data={"csrf": "wrong"},
                              allow_redirects=False)
    assert resp.status == 403
    resp = await gateway.post("/dashboard/logout", data={"csrf": csrf_of(html)},
                              allow_redirects=False)
    assert resp.status == 303
    resp = await gateway.get("/dashboard", allow_redirects=False)
    assert resp.status == 303


async def test_overview_figures_equal_the_json_apis(gateway: TestClient) -> None:
    project, key = await create_project(gateway, monthly_budget_usd=25)
    other, _ = await create_project(gateway, monthly_budget_usd="7.5")
    headers = {"Authorization": f"Bearer {key}"}
    for model in ("gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5"):
        resp = await gateway.post("/v1/chat/completions", json=chat_body(model=model),
                                  headers=headers)
        assert resp.status == 200, await resp.text()
    await wait_for_rows(gateway, 3)
    await sign_in(gateway, ADMIN_TOKEN)
    before = await forecast_estimate(gateway, admin_headers())
    shown = figures(await (await gateway.get("/dashboard")).text())
    today = datetime.now(UTC).date().isoformat()
    forecast = await (await gateway.get("/api/costs/forecast", headers=admin_headers())).text()
    usage = await (await gateway.get("/api/analytics/usage", headers=admin_headers(), params={
        "start_date": today, "end_date": today})).text()
    assert f'"current_spend":{shown["month_spend_usd"]},' in forecast
    assert before >= Decimal(shown["forecast_month_usd"]) >= estimate_in(forecast)
    assert f'"total_requests":{shown["requests_today"]},' in usage
    assert shown["requests_today"] == "3" and shown["errors_today"] == "0"
    assert f'"errors":{shown["errors_today"]},' in usage
    assert shown["month_budget_usd"] == "32.5"  # every project's budget added up
    assert shown["month_spend_usd"] != "0"
    # The 30-day tables: /api/costs over the same whole days, to the last digit.
    html = await (await gateway.get("/dashboard")).text()
    tables = dict(re.findall(r'data-group="([^"]+)"><td>[^<]*</td><td class="num" '
                             r'data-value="([^"]*)"', html))
    first = (datetime.now(UTC) - timedelta(days=29)).date().isoformat()
    for group in ("model", "provider", "project"):
        costs = await (await gateway.get("/api/costs", headers=admin_headers(), params={
            "start_date": first, "end_date": today, "group_by": group})).json(
            loads=lambda text: orjson.loads(re.sub(r'"total":([0-9.eE+-]+)', r'"total":"\1"',
                                                   text)))
        assert costs["groups"], group
        assert [k for k in tables if k.startswith(f"{group}:")] == [
            f"{group}:{key}" for key in costs["groups"]]  # the same rows, ranked the same
        for key, entry in costs["groups"].items():
            assert tables[f"{group}:{key}"] == entry["total"], (group, key)

    shown = figures(await (await gateway.get(f"/dashboard/projects/{project['id']}")).text())
    forecast = await (await gateway.get("/api/costs/forecast", headers=headers)).text()
    assert f'"current_spend":{shown["month_spend_usd"]},' in forecast
    assert f'"budget_limit":{shown["month_budget_usd"]},' in forecast
    assert shown["month_budget_usd"] == "25"
    live = await (await gateway.get(f"/dashboard/live?project_id={project['id']}")).json()
    assert live["figures"]["month_spend_usd"]["value"] == shown["month_spend_usd"]
    html = await (await gateway.get("/dashboard/projects")).text()
    listed = dict(re.findall(r'data-project="(\d+)" data-value="([^"]*)"', html))
    assert listed == {str(project["id"]): shown["month_spend_usd"], str(other["id"]): "0"}


async def test_a_project_session_sees_its_project_alone_read_only(
        gateway: TestClient) -> None:
    project, key = await create_project(gateway, monthly_budget_usd=10)
    other, other_key = await create_project(gateway)
    for k in (key, other_key):
        resp = await gateway.post("/v1/chat/completions", json=chat_body(),
                                  headers={"Authorization": f"Bearer {k}"})
        assert resp.status == 200
    await wait_for_rows(gateway, 2)
    resp = await sign_in(gateway, key)
    assert resp.status == 303
    html = await (await gateway.get("/dashboard")).text()
    assert project["name"] in html and "read-only" in html
    assert figures(html)["requests_today"] == "1"
    html = await (await gateway.get("/dashboard/projects")).text()
    assert project["name"] in html and other["name"] not in html
    assert (await gateway.get(f"/dashboard/projects/{other['id']}")).status == 404
    assert (await gateway.get(f"/dashboard/live?project_id={other['id']}")).status == 404
    html = await (await gateway.get("/dashboard/requests")).text()
    assert html.count("data-request-id=") == 1
    html = await (await gateway.get(f"/dashboard/requests?project_id={other['id']}")).text()
    for admin_page in ("/dashboard/teams", "/dashboard/webhooks", "/dashboard/health"):
        assert (await gateway.get(admin_page)).status == 403, admin_page
    page = await (await gateway.get(f"/dashboard/projects/{project['id']}")).text()
    assert "Issue a key" not in page and "Save budget" not in page
    resp = await gateway.post(f"/dashboard/projects/{project['id']}/budget",
                              data={"csrf": csrf_of(page), "monthly_budget_usd": "1000"},
                              allow_redirects=False)
    assert resp.status == 403
    # Revoking the key ends its sessions at the next page.
    keys = await (await gateway.get(f"/api/admin/projects/{project['id']}/keys",
                                    headers=admin_headers())).json()
    await gateway.delete(f"/api/admin/keys/{keys['keys'][0]['id']}", headers=admin_headers())
    assert (await gateway.get("/dashboard", allow_redirects=False)).status == 303


async def test_forms_without_the_csrf_token_are_refused(gateway: TestClient) -> None:
    project, _ = await create_project(gateway, monthly_budget_usd=10)
    await sign_in(gateway, ADMIN_TOKEN)
    html = await (await gateway.get(f"/dashboard/projects/{project['id']}")).text()
    for data in ({"monthly_budget_usd": "1"}, {"monthly_budget_usd": "1", "csrf": "forged"}):
        resp = await gateway.post(f"/dashboard/projects/{project['id']}/budget", data=data,
                                  allow_redirects=False)
        assert resp.status == 403
    row = await (await gateway.get(f"/api/admin/projects/{project['id']}",
                                   headers=admin_headers())).json()
    assert row["monthly_budget_usd"] == 10
    resp = await gateway.post(f"/dashboard/projects/{project['id']}/budget",
                              data={"monthly_budget_usd": "1.25", "csrf": csrf_of(html)},
                              allow_redirects=False)
    assert resp.status == 303
    row = await (await gateway.get(f"/api/admin/projects/{project['id']}",
                                   headers=admin_headers())).json()
    assert row["monthly_budget_usd"] == 1.25
    resp = await gateway.post(f"/dashboard/projects/{project['id']}/budget",
                              data={"monthly_budget_usd": "-3", "csrf": csrf_of(html)})
    assert resp.status == 200 and "Not saved" in await resp.text()


async def test_allow_lists_and_alert_thresholds_forms(gateway: TestClient) -> None:
    project, key = await create_project(gateway, monthly_budget_usd=10)
    await sign_in(gateway, ADMIN_TOKEN)
    page = f"/dashboard/projects/{project['id']}"
    csrf = csrf_of(await (await gateway.get(page)).text())
    resp = await gateway.post(f"{page}/allow-lists", data={
        "csrf": csrf, "allowed_providers": "openai, anthropic", "allowed_models": "gpt-4o"})
    assert resp.status == 200 and "Allow-lists saved." in await resp.text()
    resp = await gateway.post(f"{page}/alerts", data={"csrf": csrf, "thresholds": "90, 50, 12.5"})
    assert resp.status == 200 and "12.5%, 50%, 90%" in await resp.text()
    resp = await gateway.post(f"{page}/alerts", data={"csrf": csrf, "thresholds": "50, lots"})
    assert "Not saved" in await resp.text()
    row = await (await gateway.get(f"/api/admin/projects/{project['id']}",
                                   headers=admin_headers())).json()
    assert row["allowed_providers"] == ["anthropic", "openai"]
    assert row["allowed_models"] == ["gpt-4o"]
    alerts = await (await gateway.get(f"/api/admin/projects/{project['id']}/alerts",
                                      headers=admin_headers())).json()
    assert alerts["thresholds"] == [12.5, 50, 90]
    statuses = []
    for _ in range(40):  # the key cache learns the allow-list by NOTIFY: a moment at most
        resp = await gateway.post("/v1/chat/completions", json=chat_body(),
                                  headers={"Authorization": f"Bearer {key}"})
        statuses.append(resp.status)
        if resp.status == 403:
            break
        await asyncio.sleep(0.05)
    assert statuses[-1] == 403  # gpt-4o-mini is no longer allowed


async def test_client_supplied_text_is_escaped(gateway: TestClient) -> None:
    evil = "<script>alert(1)</script>"
    project, key = await create_project(gateway, name=f"p{evil}")
    resp = await gateway.post("/v1/chat/completions", json=chat_body(model=f"m{evil}"),
                              headers={"Authorization": f"Bearer {key}",
                                       "X-AI-Cost-Gateway-Metadata": orjson.dumps(
                                           {"note": evil}).decode()})
    assert resp.status == 200, await resp.text()
    rows = await wait_for_rows(gateway, 1)
    assert rows[0]["metadata"] == {"note": evil} and rows[0]["model"] == f"m{evil}"
    await sign_in(gateway, ADMIN_TOKEN)
    pages = ["/dashboard", "/dashboard/projects", f"/dashboard/projects/{project['id']}",
             "/dashboard/requests", "/dashboard/prices",
             f"/dashboard/requests/{rows[0]['request_id']}"]
    for path in pages:
        html = await (await gateway.get(path)).text()
        assert "<script>alert" not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path
    metadata = re.search(r'data-testid="metadata">(.*?)</pre>', html, re.S)
    assert metadata is not None and "&lt;script&gt;alert(1)&lt;/script&gt;" in metadata.group(1)


async def test_requests_page_filters_and_pages_by_keyset(gateway: TestClient) -> None:
    _, key = await create_project(gateway)
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(3):
        assert (await gateway.post("/v1/chat/completions", json=chat_body(),
                                   headers=headers)).status == 200
    assert (await gateway.post("/v1/chat/completions",
                               json=chat_body(model="gpt-4o"), headers=headers)).status == 200
    await wait_for_rows(gateway, 4)
    await sign_in(gateway, ADMIN_TOKEN)
    html = await (await gateway.get("/dashboard/requests?model=gpt-4o")).text()
    assert html.count("data-request-id=") == 1
    html = await (await gateway.get("/dashboard/requests?status=error")).text()
    assert html.count("data-request-id=") == 0
    from gateway import usage_rows

    async with gateway.app[__import__("gateway.keys").keys.POOL].acquire() as conn:
        first, cursor = await usage_rows.latest(conn, usage_rows.RowFilter(), limit=3)
        rest, last = await usage_rows.latest(conn, usage_rows.RowFilter(), cursor, limit=3)
    assert len(first) == 3 and len(rest) == 1 and last is None
    assert {r["request_id"] for r in first}.isdisjoint({r["request_id"] for r in rest})
    assert first[0]["started_at"] >= first[-1]["started_at"] >= rest[0]["started_at"]
    assert (await gateway.get("/dashboard/requests?before=garbage")).status == 400


async def test_prices_page_flags_models_without_a_price(gateway: TestClient) -> None:
    _, key = await create_project(gateway)
    resp = await gateway.post("/v1/chat/completions", json=chat_body(model="mystery-model-1"),
                              headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200, await resp.text()
    await wait_for_rows(gateway, 1)
    await sign_in(gateway, ADMIN_TOKEN)
    html = await (await gateway.get("/dashboard/prices")).text()
    assert 'data-unpriced-model="mystery-model-1"' in html
    assert 'data-unpriced-model="gpt-4o-mini"' not in html
    assert "developers.openai.com" in html  # each price's source


async def test_static_files_are_served_locally(gateway: TestClient) -> None:
    resp = await gateway.get("/dashboard/static/dashboard.js")
    assert resp.status == 200 and "javascript" in resp.headers["Content-Type"]
    etag = resp.headers["ETag"]
    resp = await gateway.get("/dashboard/static/dashboard.js", headers={"If-None-Match": etag})
    assert resp.status == 304
    assert (await gateway.get("/dashboard/static/..%2Fapp.py")).status == 404


def test_bar_chart_scales_to_the_peak() -> None:
    from decimal import Decimal

    chart = bar_chart([("a", Decimal(1)), ("b", Decimal(4)), ("c", Decimal(0))])
    heights = [bar.height for bar in chart.bars]
    assert heights[1] > heights[0] > heights[2] == 0
    assert heights[1] == 4 * heights[0]
    assert chart.peak == 4 and chart.first == "a" and chart.last == "c"
    assert all(bar.height == 0 for bar in bar_chart([("a", Decimal(0))]).bars)


async def test_the_demo_keeps_its_admin_token_across_restarts(tmp_path: Path) -> None:
    settings = settings_from_mapping({"database": {"data_dir": str(tmp_path)}}, {})
    first, fake = await with_demo_defaults(settings)
    if fake is not None:
        await fake.cleanup()
    assert first.auth.admin_token
    assert (tmp_path / "admin-token").stat().st_mode & 0o777 == 0o600
    again, fake = await with_demo_defaults(settings)
    if fake is not None:
        await fake.cleanup()
    assert again.auth.admin_token == first.auth.admin_token
    assert ensure_admin_token(tmp_path) == first.auth.admin_token
