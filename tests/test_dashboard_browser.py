"""The dashboard in a real browser: Playwright driving Debian's `chromium` (no download).

One headless Chromium per module (started here, reached over CDP); each test opens its own
context on it. Every page visited is checked for console errors and for requests to any
other host, and screenshotted under `$DASHBOARD_SCREENSHOTS` (default: the run's tmp dir).
Without chromium or playwright the module skips, except on CI (`CI=true`), where it fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN_TOKEN, admin_headers, chat_body, create_project, wait_for_rows
from tests.test_dashboard import forecast_estimate

CHROMIUM = os.environ.get("DASHBOARD_CHROMIUM", "/usr/bin/chromium")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests must run on CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Iterator[str]:
    """One headless Chromium for the module: its DevTools WebSocket URL."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    if shutil.which(CHROMIUM) is None:
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium; `make test` does)")
    with tempfile.TemporaryDirectory(prefix="gateway-chromium-") as profile:
        proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--remote-debugging-port=0",
             "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
             "about:blank"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        assert proc.stderr is not None
        url = None
        for line in proc.stderr:
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                url = found.group(1)
                break
        if url is None:
            proc.kill()
            _unavailable(f"{CHROMIUM} did not start: exit {proc.wait()}")
        try:
            yield str(url)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or
                tmp_path_factory.mktemp("dashboard-screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Browser:
    """A fresh browser context on the gateway, recording what would break the offline
    promise: console errors, page errors, and requests to any other host."""

    base: str
    context: Any
    page: Any
    shots: Path
    problems: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base.rstrip("/") + path

    async def goto(self, path: str, *, idle: bool = False) -> Any:
        """Open a page; `idle`: wait until nothing has loaded for 0.5 s as well."""
        response = await self.page.goto(self.url(path))
        await self.page.wait_for_load_state("networkidle" if idle else "load")
        return response

    async def submit(self, selector: str) -> None:
        """Click a form's button and wait for the page it leads to."""
        async with self.page.expect_navigation(wait_until="load"):
            await self.page.click(selector)

    async def shot(self, name: str) -> None:
        await self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    async def sign_in(self, token: str) -> None:
        await self.goto("/dashboard/login")
        await self.page.fill("#token", token)
        await self.submit("button[type=submit]")

    async def figure(self, name: str) -> str:
        value = await self.page.get_attribute(f'[data-metric="{name}"]', "data-value")
        assert value is not None, name
        return str(value)


@pytest.fixture
async def browser(chromium: str, gateway: TestClient, shots: Path) -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        connected = await pw.chromium.connect_over_cdp(chromium)
        context = await connected.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        base = str(gateway.make_url("/"))
        host = urlsplit(base).netloc
        b = Browser(base, context, page, shots)

        def on_request(request: Any) -> None:
            parts = urlsplit(request.url)
            if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != host:
                b.problems.append(f"request to another host: {request.url}")

        page.on("request", on_request)
        page.on("console", lambda msg: msg.type == "error" and b.problems.append(
            f"console error: {msg.text}"))
        page.on("pageerror", lambda exc: b.problems.append(f"page error: {exc}"))
        page.on("dialog", lambda dialog: b.problems.append(f"dialog: {dialog.message}"))
        yield b
        await context.close()
        await connected.close()


async def _call(gateway: TestClient, key: str, **extra: Any) -> int:
    headers = {"Authorization": f"Bearer {key}", **extra.pop("headers", {})}
    resp = await gateway.post("/v1/chat/completions", json=chat_body(**extra), headers=headers)
    await resp.read()
    return resp.status


async def _status_soon(gateway: TestClient, key: str, want: int) -> list[int]:
    """Calls until one answers `want` (2 s at most): a change reaches the key cache by
    NOTIFY, a moment after it commits."""
    statuses: list[int] = []
    for _ in range(40):
        statuses.append(await _call(gateway, key))
        if statuses[-1] == want:
            break
        await asyncio.sleep(0.05)
    return statuses


async def test_admin_sees_every_page_offline_and_the_apis_figures(
        gateway: TestClient, browser: Browser) -> None:
    project, key = await create_project(gateway, monthly_budget_usd=40, team="blue")
    await gateway.post("/api/admin/webhooks", headers=admin_headers(), json={
        "url": "http://127.0.0.1:1/hook", "enabled": True})
    for model in ("gpt-4o-mini", "gpt-4o", "gpt-4o-mini"):
        assert await _call(gateway, key, model=model) == 200
    rows = await wait_for_rows(gateway, 3)

    await browser.goto("/dashboard", idle=True)
    assert browser.page.url.startswith(browser.url("/dashboard/login"))
    await browser.shot("login")
    before = await forecast_estimate(gateway, admin_headers())
    await browser.sign_in(ADMIN_TOKEN)
    assert urlsplit(browser.page.url).path == "/dashboard"
    await browser.shot("overview")

    today = datetime.now(UTC).date().isoformat()
    forecast = await (await gateway.get("/api/costs/forecast", headers=admin_headers())).text()
    usage = await (await gateway.get("/api/analytics/usage", headers=admin_headers(),
                                     params={"start_date": today, "end_date": today})).text()
    assert f'"current_spend":{await browser.figure("month_spend_usd")},' in forecast
    shown = Decimal(await browser.figure("forecast_month_usd"))
    after = await forecast_estimate(gateway, admin_headers())
    assert before >= shown >= after  # it falls as the day goes on (see forecast_estimate)
    assert f'"total_requests":{await browser.figure("requests_today")},' in usage
    assert f'"errors":{await browser.figure("errors_today")},' in usage
    assert await browser.figure("month_budget_usd") == "40"
    assert await browser.figure("requests_today") == "3"

    pages = {"projects": "/dashboard/projects", "project": f"/dashboard/projects/{project['id']}",
             "teams": "/dashboard/teams", "requests": "/dashboard/requests",
             "request": f"/dashboard/requests/{rows[0]['request_id']}",
             "webhooks": "/dashboard/webhooks", "prices": "/dashboard/prices",
             "health": "/dashboard/health"}
    for name, path in pages.items():
        response = await browser.goto(path, idle=True)
        assert response.status == 200, (path, response.status)
        await browser.shot(name)
    shown = await browser.page.get_attribute('[data-metric="ratelimit_backend"]', "data-value")
    assert shown == "memory"

    # The project page's figures equal the project's own forecast.
    await browser.goto(f"/dashboard/projects/{project['id']}")
    forecast = await (await gateway.get("/api/costs/forecast", headers={
        "Authorization": f"Bearer {key}"})).text()
    assert f'"current_spend":{await browser.figure("month_spend_usd")},' in forecast
    assert f'"budget_limit":{await browser.figure("month_budget_usd")},' in forecast

    # The webhook test button queues a delivery that the page then lists.
    await browser.goto("/dashboard/webhooks")
    await browser.submit("text=Send a test event")
    assert "queued" in await browser.page.text_content('[data-testid="notice"]')
    assert browser.problems == []


async def test_charts_and_figures_are_readable_with_scripts_off(
        chromium: str, gateway: TestClient, shots: Path) -> None:
    from playwright.async_api import async_playwright

    _, key = await create_project(gateway)
    assert await _call(gateway, key) == 200
    await wait_for_rows(gateway, 1)
    async with async_playwright() as pw:
        connected = await pw.chromium.connect_over_cdp(chromium)
        context = await connected.new_context(java_script_enabled=False)
        page = await context.new_page()
        await page.goto(str(gateway.make_url("/dashboard/login")))
        await page.fill("#token", ADMIN_TOKEN)
        async with page.expect_navigation(wait_until="load"):
            await page.click("button[type=submit]")
        assert await page.get_attribute('[data-metric="requests_today"]', "data-value") == "1"
        assert await page.locator("svg rect.bar").count() >= 30  # a bar per day
        assert await page.locator("svg rect.bar title").count() >= 30
        await page.screenshot(path=str(shots / "overview-no-script.png"), full_page=True)
        await context.close()
        await connected.close()


async def test_new_traffic_shows_up_within_5_seconds(gateway: TestClient,
                                                     browser: Browser) -> None:
    _, key = await create_project(gateway)
    await browser.sign_in(ADMIN_TOKEN)
    assert await browser.figure("requests_today") == "0"
    assert await _call(gateway, key) == 200
    await browser.page.wait_for_function(
        """() => document.querySelector('[data-metric="requests_today"]')
                   .getAttribute('data-value') === '1'""", timeout=5000)
    assert await browser.page.text_content('[data-metric="requests_today"]') == "1"
    assert await browser.figure("month_spend_usd") != "0"
    assert browser.problems == []


async def test_issue_a_key_use_it_revoke_it(gateway: TestClient, browser: Browser) -> None:
    project, _ = await create_project(gateway)
    await browser.sign_in(ADMIN_TOKEN)
    await browser.goto(f"/dashboard/projects/{project['id']}")
    await browser.page.fill("#key-name", "from the dashboard")
    await browser.submit('[data-testid="issue-key"] button')
    key = (await browser.page.text_content('[data-testid="new-key"]') or "").strip()
    assert key.startswith("gw_")
    await browser.shot("project-new-key")
    assert await _call(gateway, key) == 200

    await browser.goto(f"/dashboard/projects/{project['id']}")
    assert await browser.page.locator('[data-testid="new-key"]').count() == 0  # shown once
    prefix = key.split("_")[1]
    await browser.submit(f'tr[data-key-prefix="{prefix}"] button:has-text("Revoke")')
    assert "revoked" in await browser.page.text_content('[data-testid="notice"]')
    statuses = await _status_soon(gateway, key, 401)
    assert statuses[-1] == 401 and statuses.count(200) <= 1, statuses
    assert browser.problems == []


async def test_edit_a_budget_then_calls_are_refused_with_402(gateway: TestClient,
                                                            browser: Browser) -> None:
    project, key = await create_project(gateway, monthly_budget_usd=100)
    assert await _call(gateway, key) == 200
    await browser.sign_in(ADMIN_TOKEN)
    await browser.goto(f"/dashboard/projects/{project['id']}")
    await browser.page.fill("#budget", "0")
    await browser.submit('[data-testid="budget-form"] button')
    assert await browser.figure("month_budget_usd") == "0"
    statuses = await _status_soon(gateway, key, 402)
    assert statuses[-1] == 402 and statuses.count(200) <= 1, statuses
    assert browser.problems == []


async def test_filter_the_requests_page(gateway: TestClient, browser: Browser) -> None:
    _, key = await create_project(gateway)
    for model in ("gpt-4o-mini", "gpt-4o", "gpt-4o-mini"):
        assert await _call(gateway, key, model=model) == 200
    await wait_for_rows(gateway, 3)
    await browser.sign_in(ADMIN_TOKEN)
    await browser.goto("/dashboard/requests")
    assert await browser.page.locator("tr[data-request-id]").count() == 3
    await browser.page.fill('input[name="model"]', "gpt-4o")
    await browser.submit('[data-testid="request-filters"] button')
    assert await browser.page.locator("tr[data-request-id]").count() == 1
    assert "model=gpt-4o" in browser.page.url
    await browser.page.select_option('select[name="status"]', "error")
    await browser.submit('[data-testid="request-filters"] button')
    assert await browser.page.locator("tr[data-request-id]").count() == 0
    await browser.shot("requests-filtered")
    assert browser.problems == []


async def test_a_project_signs_in_to_its_own_project_read_only(
        gateway: TestClient, browser: Browser) -> None:
    project, key = await create_project(gateway, monthly_budget_usd=5)
    other, other_key = await create_project(gateway)
    assert await _call(gateway, key) == 200
    assert await _call(gateway, other_key) == 200
    await wait_for_rows(gateway, 2)
    await browser.sign_in(key)
    assert await browser.figure("requests_today") == "1"
    assert await browser.figure("month_budget_usd") == "5"
    await browser.shot("project-session-overview")
    nav = await browser.page.text_content("header nav") or ""
    assert "Teams" not in nav and "Health" not in nav
    await browser.goto("/dashboard/projects")
    text = await browser.page.text_content("main") or ""
    assert project["name"] in text and other["name"] not in text
    await browser.goto(f"/dashboard/projects/{project['id']}")
    assert await browser.page.locator("form[data-testid=budget-form]").count() == 0
    await browser.submit('[data-testid="sign-out"]')
    assert urlsplit(browser.page.url).path == "/dashboard/login"
    await browser.goto("/dashboard")
    assert urlsplit(browser.page.url).path == "/dashboard/login"
    assert browser.problems == []


async def test_a_metadata_script_stays_text(gateway: TestClient, browser: Browser) -> None:
    evil = '<script>alert("metadata")</script><img src=x onerror=alert(2)>'
    _, key = await create_project(gateway)
    header = orjson.dumps({"note": evil}).decode()
    assert await _call(gateway, key, headers={"X-AI-Cost-Gateway-Metadata": header}) == 200
    rows = await wait_for_rows(gateway, 1)
    assert rows[0]["metadata"]["note"] == evil
    await browser.sign_in(ADMIN_TOKEN)
    await browser.goto(f"/dashboard/requests/{rows[0]['request_id']}")
    text = await browser.page.text_content('[data-testid="metadata"]') or ""
    assert evil.replace('"', '\\"') in text
    assert await browser.page.locator("main script, main img").count() == 0
    await browser.shot("request-metadata-escaped")
    assert browser.problems == []  # no dialog, no error (the img would request /x)


async def test_form_posts_without_the_csrf_token_are_refused(gateway: TestClient,
                                                            browser: Browser) -> None:
    project, _ = await create_project(gateway, monthly_budget_usd=3)
    await browser.sign_in(ADMIN_TOKEN)
    await browser.goto(f"/dashboard/projects/{project['id']}")
    statuses = await browser.page.evaluate("""async (id) => {
        const out = [];
        for (const body of ["monthly_budget_usd=999", "monthly_budget_usd=999&csrf=forged"]) {
            const r = await fetch(`/dashboard/projects/${id}/budget`, {method: "POST",
                headers: {"Content-Type": "application/x-www-form-urlencoded"}, body,
                redirect: "manual"});
            out.push(r.status);
        }
        return out;
    }""", project["id"])
    assert statuses == [403, 403]
    row = await (await gateway.get(f"/api/admin/projects/{project['id']}",
                                   headers=admin_headers())).json()
    assert row["monthly_budget_usd"] == 3
