"""Model routing: which provider serves a model, and `GET /v1/models`."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient
from conftest import FakeUpstream, GatewayFactory, admin_headers, chat_body, create_project

from gateway.keys import PRICES, SETTINGS
from gateway.routing import Route, Router


def test_routes(gateway: TestClient) -> None:
    router = Router(gateway.app[PRICES], gateway.app[SETTINGS].providers)
    assert router.route("gpt-4o-mini") == Route("openai", "gpt-4o-mini")
    assert router.route("gpt-4o-mini-2024-07-18") == Route("openai", "gpt-4o-mini-2024-07-18")
    assert router.route("claude-sonnet-4-5") == Route("anthropic", "claude-sonnet-4-5")
    assert router.route("gemini-2.5-flash") == Route("gemini", "gemini-2.5-flash")
    assert router.route("mistral/open-mixtral-8x22b") == Route("mistral", "open-mixtral-8x22b")
    assert router.route("my-local-llama") == Route("openai", "my-local-llama")
    assert router.route("org/model-with-slash") == Route("openai", "org/model-with-slash")


async def test_a_provider_without_a_credential_is_400(make_gateway: GatewayFactory,
                                                      fake_upstream: FakeUpstream) -> None:
    client = await make_gateway(providers={"anthropic": {
        "base_url": "https://api.anthropic.com", "api_key": ""}})
    _, key = await create_project(client)
    resp = await client.post("/v1/chat/completions", json=chat_body(model="claude-sonnet-4-5"),
                             headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "missing_provider_credential"
    assert "ANTHROPIC_API_KEY" in error["message"]
    assert fake_upstream.state.received == 0


async def test_provider_prefix_is_stripped_upstream(gateway: TestClient,
                                                   fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    resp = await gateway.post("/v1/chat/completions", json=chat_body(model="openai/gpt-4o"),
                              headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200
    assert fake_upstream.state.log[-1]["body"]["model"] == "gpt-4o"


async def test_models_lists_what_the_project_may_use(gateway: TestClient) -> None:
    _, key = await create_project(gateway)
    resp = await gateway.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    data = await resp.json()
    assert resp.status == 200 and data["object"] == "list"
    ids = {m["id"] for m in data["data"]}
    assert {"gpt-4o", "gpt-4o-mini", "o3"} <= ids
    owners = {m["owned_by"] for m in data["data"]}
    assert owners == {"openai", "anthropic", "gemini", "mistral", "cohere"}
    _, key = await create_project(gateway, allowed_providers=["anthropic"])
    data = await (await gateway.get("/v1/models",
                                    headers={"Authorization": f"Bearer {key}"})).json()
    assert {m["owned_by"] for m in data["data"]} == {"anthropic"}
    assert "claude-sonnet-4-5" in {m["id"] for m in data["data"]}
    _, key = await create_project(gateway, allowed_models=["gpt-4o*"])
    data = await (await gateway.get("/v1/models",
                                    headers={"Authorization": f"Bearer {key}"})).json()
    assert {m["id"] for m in data["data"]} == {i for i in ids if i.startswith("gpt-4o")}
    resp = await gateway.get("/v1/models")
    assert resp.status == 401


def test_aliases_globs_and_fallback_chains(gateway: TestClient) -> None:
    from gateway.settings import settings_from_mapping

    settings = settings_from_mapping({
        "providers": {"deepseek": {"kind": "openai_compatible",
                                   "base_url": "http://127.0.0.1:9/v1",
                                   "models": ["deepseek-*"]}},
        "routing": {"aliases": {"fast": "gemini/gemini-2.5-flash", "smart": "best",
                                "best": "claude-sonnet-4-5", "loop": "loop"},
                    "fallbacks": {"gpt-4o": ["claude-sonnet-4-5", "gpt-4o", "fast"],
                                  "deepseek/deepseek-chat": ["gpt-4o-mini"]}}}, {})
    router = Router(gateway.app[PRICES], settings.providers, settings.routing)
    assert router.route("fast") == Route("gemini", "gemini-2.5-flash")
    assert router.route("smart") == Route("anthropic", "claude-sonnet-4-5")  # alias of alias
    assert router.route("loop") == Route("openai", "loop")  # a loop is cut short, not hung
    assert router.route("deepseek-chat") == Route("deepseek", "deepseek-chat")
    assert router.route("deepseek/deepseek-reasoner") == Route("deepseek", "deepseek-reasoner")
    assert router.route("anything", provider="mistral") == Route("mistral", "anything")
    assert router.chain("gpt-4o") == [Route("openai", "gpt-4o"),
                                      Route("anthropic", "claude-sonnet-4-5"),
                                      Route("gemini", "gemini-2.5-flash")]  # no repeats
    assert router.chain("deepseek-chat") == [Route("deepseek", "deepseek-chat"),
                                             Route("openai", "gpt-4o-mini")]
    assert router.chain("gpt-4o-mini") == [Route("openai", "gpt-4o-mini")]
    assert ("fast", "gemini") in set(router.catalogue())


def test_a_chain_is_worked_out_once_and_each_caller_gets_its_own_list(
        gateway: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    router = Router(gateway.app[PRICES], gateway.app[SETTINGS].providers)
    first = router.chain("gpt-4o-mini")
    first.append(Route("anthropic", "claude-sonnet-4-5"))  # the caller's own list
    assert router.chain("gpt-4o-mini") == [Route("openai", "gpt-4o-mini")]
    routed: list[str] = []
    route = router.route
    monkeypatch.setattr(router, "route", lambda model, provider=None: (
        routed.append(model), route(model, provider))[1])
    for _ in range(3):
        assert router.chain("gpt-4o-mini") == [Route("openai", "gpt-4o-mini")]
    assert routed == []  # known: not routed again
    monkeypatch.setattr("gateway.routing.MAX_CHAINS", 2)
    for n in range(5):  # past the bound, chains are still right, only not kept
        assert router.chain(f"m-{n}", "mistral") == [Route("mistral", f"m-{n}")]
        assert router.chain(f"m-{n}", "mistral") == [Route("mistral", f"m-{n}")]
    assert routed.count("m-4") == 2 and routed.count("m-0") == 1


async def test_models_lists_only_providers_the_project_can_reach(
        make_gateway: GatewayFactory) -> None:
    client = await make_gateway(
        secrets={"key": "k" * 40},
        providers={"anthropic": {"base_url": "https://api.anthropic.com", "api_key": ""}})
    project, key = await create_project(client)
    auth = {"Authorization": f"Bearer {key}"}
    owners = {m["owned_by"] for m in (await (await client.get("/v1/models",
                                                            headers=auth)).json())["data"]}
    assert "anthropic" not in owners and "openai" in owners  # no key for api.anthropic.com
    resp = await client.put(f"/api/admin/projects/{project['id']}/providers/anthropic",
                            headers=admin_headers(), json={"api_key": "sk-ant-project-own"})
    assert resp.status == 200, await resp.text()
    ids = {m["id"] for m in (await (await client.get("/v1/models",
                                                     headers=auth)).json())["data"]}
    assert "claude-sonnet-4-5" in ids  # the project's own key reaches it
    _, other = await create_project(client)
    ids = {m["id"] for m in (await (await client.get(
        "/v1/models", headers={"Authorization": f"Bearer {other}"})).json())["data"]}
    assert "claude-sonnet-4-5" not in ids  # not for a project without one
