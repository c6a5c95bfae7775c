"""The admin API clients against the fakes over HTTP, and against the providers' documented
examples: paging, token types, amounts, errors that never show the key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal

import aiohttp
import pytest

from gateway.sync import anthropic_admin, openai_admin
from gateway.sync.client import AdminApiError
from gateway.sync.records import Integration
from gateway.testing.fake_admin import (
    AdminState,
    Charge,
    ProviderPrice,
    Spend,
    start_fake_admin,
)

D = Decimal
DAY = date(2026, 11, 3)
KEYS = {"openai": "sk-admin-clients-0123", "anthropic": "sk-ant-admin-clients-0123"}


@pytest.fixture
async def fake() -> AsyncIterator[tuple[AdminState, str, aiohttp.ClientSession]]:
    state = AdminState(admin_keys=dict(KEYS), page_size=2, prices={
        "gpt-4.1": ProviderPrice(input=D("2"), cache_read=D("0.5"), output=D("8")),
        "text-embedding-3-small": ProviderPrice(input=D("0.02"), cache_read=D("0.02"),
                                                output=D(0)),
        "claude-opus-4-1": ProviderPrice(input=D("15"), cache_read=D("1.5"), output=D("75"),
                                         cache_write_5m=D("18.75"), cache_write_1h=D("30"))})
    runner, url = await start_fake_admin(state)
    async with aiohttp.ClientSession() as session:
        yield state, url, session
    await runner.cleanup()


async def test_openai_usage_and_costs_paged_by_model_and_project(
        fake: tuple[AdminState, str, aiohttp.ClientSession]) -> None:
    state, url, session = fake
    for i in range(5):
        state.spend.append(Spend("openai", date(2026, 11, 1 + i), "gpt-4.1", "proj_a",
                                 input=1000, cache_read=200, output=300, requests=3))
    state.spend.append(Spend("openai", DAY, "text-embedding-3-small", "proj_b", input=50,
                             requests=1, source="embeddings"))
    state.charges.append(Charge("openai", DAY, "Image models", D("0.06"), "proj_b"))
    usage, costs = await openai_admin.fetch(
        session, Integration("openai", "gateway", KEYS["openai"], f"{url}/v1"),
        date(2026, 11, 1), date(2026, 11, 5), timeout_s=5)
    assert len(usage) == 6  # five days of completions and one of embeddings, every page
    day3 = [u for u in usage if u.day == DAY]
    completions = next(u for u in day3 if u.source == "completions")
    assert (completions.model, completions.provider_project, completions.input_tokens,
            completions.cache_read_tokens, completions.output_tokens, completions.requests) == (
        "gpt-4.1", "proj_a", 1000, 200, 300, 3)  # input_tokens less the cached ones
    embeddings = next(u for u in day3 if u.source == "embeddings")
    assert (embeddings.input_tokens, embeddings.requests) == (50, 1)
    by_item = {c.line_item: c for c in costs if c.day == DAY}
    assert {k: (c.model, c.token_type, c.amount_usd, c.provider_project)
            for k, c in by_item.items()} == {
        "gpt-4.1, input": ("gpt-4.1", "input", D("0.002"), "proj_a"),
        "gpt-4.1, cached input": ("gpt-4.1", "cache_read", D("0.0001"), "proj_a"),
        "gpt-4.1, output": ("gpt-4.1", "output", D("0.0024"), "proj_a"),
        "text-embedding-3-small, input": ("text-embedding-3-small", "input", D("0.000001"),
                                          "proj_b"),
        "Image models": ("", "", D("0.06"), "proj_b"),
    }
    pages = [e for e in state.log if e["path"] == "/v1/organization/costs"]
    assert len(pages) == 3  # five days at two buckets a page


async def test_anthropic_usage_and_costs_by_token_type(
        fake: tuple[AdminState, str, aiohttp.ClientSession]) -> None:
    state, url, session = fake
    state.spend.append(Spend("anthropic", DAY, "claude-opus-4-1", input=1000, cache_read=400,
                             cache_write_5m=100, cache_write_1h=10, output=200))
    usage, costs = await anthropic_admin.fetch(
        session, Integration("anthropic", "gateway", KEYS["anthropic"], url), DAY, DAY,
        timeout_s=5)
    [row] = usage
    assert (row.model, row.input_tokens, row.cache_read_tokens, row.cache_write_5m_tokens,
            row.cache_write_1h_tokens, row.output_tokens, row.requests) == (
        "claude-opus-4-1", 1000, 400, 100, 10, 200, None)
    assert sorted((c.token_type, c.amount_usd) for c in costs) == [
        ("cache_read", D("0.0006")), ("cache_write", D("0.0003")),
        ("cache_write", D("0.001875")), ("input", D("0.015")), ("output", D("0.015"))]
    request = state.log[0]
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    assert ("group_by[]", "model") in request["query"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_refused_key_is_an_error_that_never_shows_it(
        fake: tuple[AdminState, str, aiohttp.ClientSession], provider: str) -> None:
    _, url, session = fake
    fetch = openai_admin.fetch if provider == "openai" else anthropic_admin.fetch
    base = f"{url}/v1" if provider == "openai" else url
    wrong = "sk-admin-wrong-secret-9876"
    with pytest.raises(AdminApiError) as caught:
        await fetch(session, Integration(provider, "gateway", wrong, base), DAY, DAY,
                    timeout_s=5)
    assert "answered 401" in str(caught.value) and wrong not in str(caught.value)


def test_documented_examples_parse() -> None:
    """The examples of OpenAI's and Anthropic's API references."""
    cost = openai_admin._cost_row(DAY, {
        "object": "organization.costs.result", "amount": {"value": D("0.06"),
                                                          "currency": "usd"},
        "line_item": "Image models", "project_id": "proj_abc"})
    assert (cost.amount_usd, cost.token_type, cost.model, cost.provider_project) == (
        D("0.06"), "", "", "proj_abc")
    usage = openai_admin._usage_row("completions", DAY, {
        "object": "organization.usage.completions.result", "input_tokens": 5000,
        "output_tokens": 1000, "input_cached_tokens": 4000, "input_audio_tokens": 300,
        "output_audio_tokens": 200, "num_model_requests": 5, "project_id": None,
        "user_id": None, "api_key_id": None, "model": None, "batch": None})
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens, usage.requests,
            usage.details) == (1000, 4000, 1000, 5, {"input_audio_tokens": 300,
                                                     "output_audio_tokens": 200})
    anthropic_cost = anthropic_admin._cost_row(DAY, {
        "amount": "123.45", "currency": "USD", "cost_type": "tokens",
        "description": "Claude Sonnet 4 Usage - Input Tokens", "model": "claude-sonnet-4",
        "service_tier": "standard", "token_type": "uncached_input_tokens",
        "context_window": "0-200k", "workspace_id": None})
    assert (anthropic_cost.amount_usd, anthropic_cost.token_type, anthropic_cost.model) == (
        D("1.2345"), "input", "claude-sonnet-4")
    with pytest.raises(AdminApiError):
        openai_admin._cost_row(DAY, {"amount": {"value": 1, "currency": "eur"}})


@pytest.mark.parametrize(("answer", "error"), [
    ({"data": [], "has_more": True, "next_page": "page_same"}, "came back twice"),
    ({"object": "page"}, "without a data list"),
    ("not json at all", "not JSON"),
])
async def test_reports_not_in_the_documented_shape_are_errors(answer: object,
                                                              error: str) -> None:
    from aiohttp import web

    from gateway.sync.client import pages

    async def report(request: web.Request) -> web.Response:
        if isinstance(answer, str):
            return web.Response(text=answer)
        return web.json_response(answer)

    app = web.Application()
    app.router.add_get("/report", report)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/report"
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(AdminApiError, match=error):
                async for _ in pages(session, url, [], {"x-api-key": "k"}, 5):
                    pass
    finally:
        await runner.cleanup()


async def test_the_standalone_fake_reads_its_script() -> None:
    from gateway.testing.fake_admin import load_script

    state = load_script("""{"admin_keys": {"openai": "sk-admin-x"}, "page_size": 2,
        "prices": {"gpt-4.1": {"input": 2.0, "cache_read": 0.5, "output": 8.0}},
        "spend": [{"provider": "openai", "day": "2026-11-03", "model": "gpt-4.1",
                   "input": 1000, "output": 10, "requests": 1}],
        "charges": [{"provider": "openai", "day": "2026-11-03", "line_item": "Image models",
                     "amount_usd": 0.06}]}""")
    runner, url = await start_fake_admin(state)
    try:
        async with aiohttp.ClientSession() as session:
            usage, costs = await openai_admin.fetch(
                session, Integration("openai", "gateway", "sk-admin-x", f"{url}/v1"), DAY, DAY,
                timeout_s=5)
    finally:
        await runner.cleanup()
    assert [(u.model, u.input_tokens, u.output_tokens) for u in usage] == [("gpt-4.1", 1000, 10)]
    assert sorted((c.line_item, c.amount_usd) for c in costs) == [
        ("Image models", D("0.06")), ("gpt-4.1, input", D("0.002")),
        ("gpt-4.1, output", D("0.00008"))]
