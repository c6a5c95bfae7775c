"""Model routing: which provider serves a model, and `GET /v1/models`."""

from __future__ import annotations

from aiohttp.test_utils import TestClient
from conftest import FakeUpstream, chat_body, create_project

from gateway.keys import PRICES
from gateway.routing import Route, Router


def test_routes(gateway: TestClient) -> None:
    router = Router(gateway.app[PRICES])
    assert router.route("gpt-4o-mini") == Route("openai", "gpt-4o-mini")
    assert router.route("gpt-4o-mini-2024-07-18") == Route("openai", "gpt-4o-mini-2024-07-18")
    assert router.route("claude-sonnet-4-5") == Route("anthropic", "claude-sonnet-4-5")
    assert router.route("gemini-2.5-flash") == Route("gemini", "gemini-2.5-flash")
    assert router.route("mistral/open-mixtral-8x22b") == Route("mistral", "open-mixtral-8x22b")
    assert router.route("my-local-llama") == Route("openai", "my-local-llama")
    assert router.route("org/model-with-slash") == Route("openai", "org/model-with-slash")


async def test_a_model_of_an_unconfigured_provider_is_400(gateway: TestClient,
                                                          fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    resp = await gateway.post("/v1/chat/completions", json=chat_body(model="claude-sonnet-4-5"),
                              headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "provider_not_configured" and "anthropic" in error["message"]
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
    assert all(m["owned_by"] == "openai" for m in data["data"])  # only openai is configured
    _, key = await create_project(gateway, allowed_models=["gpt-4o*"])
    data = await (await gateway.get("/v1/models",
                                    headers={"Authorization": f"Bearer {key}"})).json()
    assert {m["id"] for m in data["data"]} == {i for i in ids if i.startswith("gpt-4o")}
    resp = await gateway.get("/v1/models")
    assert resp.status == 401
