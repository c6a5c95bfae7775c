"""The fake's OpenAI-compatible routes beyond OpenAI itself: Azure OpenAI and Mistral."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient

from gateway.testing.fake_openai import count_prompt_tokens
from gateway.testing.fake_upstream import build_app
from tests.testing.fake_wire import DEFAULT_REPLY, script, sse_events

API_VERSION = "2024-10-21"
MESSAGES: Any = [{"role": "user", "content": "hi"}]
PROMPT = count_prompt_tokens(MESSAGES)
SAFE = {"filtered": False, "severity": "safe"}


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(build_app())


@pytest.fixture
async def azure(client: TestClient) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    sdk = openai.AsyncAzureOpenAI(
        azure_endpoint=str(client.make_url("")),
        api_version=API_VERSION,
        api_key="azure-key",
        max_retries=0,
    )
    yield sdk
    await sdk.close()


async def last_request(client: TestClient) -> dict[str, Any]:
    log = await (await client.get("/_fake/requests")).json()
    entry: dict[str, Any] = log["requests"][-1]
    return entry


async def test_azure_sdk(azure: openai.AsyncAzureOpenAI, client: TestClient) -> None:
    completion = await azure.chat.completions.create(model="my-dep", messages=MESSAGES)
    assert completion.model == "my-dep"
    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (PROMPT, 12)
    extra = completion.model_extra or {}
    assert extra["prompt_filter_results"][0]["content_filter_results"]["hate"] == SAFE
    entry = await last_request(client)
    assert entry["path"] == "/openai/deployments/my-dep/chat/completions"
    assert entry["query"] == f"api-version={API_VERSION}"
    assert entry["headers"]["api-key"] == "azure-key"


async def test_azure_sdk_stream(azure: openai.AsyncAzureOpenAI) -> None:
    stream = await azure.chat.completions.create(
        model="my-dep",
        messages=MESSAGES,
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    first, *rest = chunks
    assert (first.choices, first.model, first.id) == ([], "", "")  # Azure's filter chunk
    assert (first.model_extra or {})["prompt_filter_results"]
    text = "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
    assert text == "w1 w2 w3"
    assert [c.choices[0].finish_reason for c in rest if c.choices][-1] == "length"
    assert rest[-1].usage is not None and rest[-1].usage.completion_tokens == 3


async def test_openai_sdk_with_deployment_base_url(client: TestClient) -> None:
    sdk = openai.AsyncOpenAI(
        base_url=str(client.make_url("/openai/deployments/dep")),
        default_query={"api-version": API_VERSION},
        default_headers={"api-key": "k"},
        api_key="x",
        max_retries=0,
    )
    try:
        completion = await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    finally:
        await sdk.close()
    assert completion.model == "gpt-4o"  # the body's model wins over the deployment name
    assert completion.choices[0].message.content == DEFAULT_REPLY


async def test_azure_deployment_name_when_body_has_no_model(client: TestClient) -> None:
    path = f"/openai/deployments/dep-7/chat/completions?api-version={API_VERSION}"
    resp = await client.post(path, json={"messages": MESSAGES}, headers={"api-key": "k"})
    data = await resp.json()
    assert data["model"] == "dep-7"
    assert data["choices"][0]["content_filter_results"]["violence"] == SAFE


@pytest.mark.parametrize(
    ("path", "headers", "status", "error"),
    [
        ("/openai/deployments/d/chat/completions", {"api-key": "k"}, 404,
         {"code": "404", "message": "Resource not found"}),
        (f"/openai/deployments/d/chat/completions?api-version={API_VERSION}", {}, 401,
         {"code": "401", "message": "Access denied due to missing subscription key."}),
    ],
)  # fmt: skip
async def test_azure_refusals(
    client: TestClient, path: str, headers: dict[str, str], status: int, error: dict[str, str]
) -> None:
    resp = await client.post(path, json={"messages": MESSAGES}, headers=headers)
    assert resp.status == status
    assert await resp.json() == {"error": error}


async def test_azure_scripted_rate_limit(
    azure: openai.AsyncAzureOpenAI, client: TestClient
) -> None:
    await script(client, {"status": 429, "retry_after": 6})
    with pytest.raises(openai.RateLimitError) as caught:
        await azure.chat.completions.create(model="my-dep", messages=MESSAGES)
    assert caught.value.response.headers["Retry-After"] == "6"
    assert caught.value.body == {"code": "429", "message": "Rate limit reached (fake)."}


async def test_mistral_request_on_the_openai_route(client: TestClient) -> None:
    # Mistral's chat completions share OpenAI's path, body and answer; its extra fields
    # (random_seed, safe_prompt) are accepted and ignored.
    body = {
        "model": "mistral-small-latest",
        "messages": MESSAGES,
        "max_tokens": 4,
        "random_seed": 7,
        "safe_prompt": False,
    }
    headers = {"Authorization": "Bearer mistral-key"}
    data = await (await client.post("/v1/chat/completions", json=body, headers=headers)).json()
    assert data["model"] == "mistral-small-latest"
    assert data["choices"][0]["message"]["content"] == "w1 w2 w3 w4"
    assert data["choices"][0]["finish_reason"] == "length"
    usage = data["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (PROMPT, 4)
    assert usage["total_tokens"] == PROMPT + 4
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    resp = await client.post("/v1/chat/completions", json=stream, headers=headers)
    events = sse_events(await resp.read())
    assert events[-1] == {"data": "[DONE]"}
    assert json.loads(events[-2]["data"])["usage"]["completion_tokens"] == 4
