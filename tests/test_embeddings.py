"""`POST /v1/embeddings` through the whole pipeline, for every provider with an embeddings API.

Each contract case goes through the real gateway to the fake upstream, which speaks that
provider's embeddings wire. Checked every time: the vectors the client sees, its usage = the
usage row = what the fake billed (counted by the gateway where the provider reports none), and
the cost header = the row = the price table's arithmetic.
"""

from __future__ import annotations

import base64
import struct
from decimal import Decimal
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient
from conftest import FakeUpstream, GatewayFactory, create_project, wait_for_rows

from gateway.domain import Usage
from gateway.keys import PRICES, TOKENS
from gateway.pricing import compute_cost
from gateway.testing.fake_embeddings import DEFAULT_DIMENSIONS, billed_tokens, vector

# provider -> the model as the client names it
MODELS = {
    "openai": "text-embedding-3-small",
    "azure": "azure/text-embedding-3-small",
    "gemini": "gemini-embedding-001",
    "mistral": "mistral-embed",
    "cohere": "embed-v4.0",
    "local": "local/nomic-embed-text",  # a generic OpenAI-compatible server
}
TEXTS = ["The quick brown fox", "jumps over the lazy dog"]
PATH = "/v1/embeddings"


@pytest.fixture
async def embed_gateway(make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> TestClient:
    return await make_gateway(providers={"local": {
        "kind": "openai_compatible", "base_url": fake_upstream.url}})


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def floats(embedding: Any) -> list[float]:
    """A float list, or OpenAI's base64 (little-endian float32) decoded."""
    if isinstance(embedding, str):
        raw = base64.b64decode(embedding)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return list(embedding)


async def expected_usage(gateway: TestClient, provider: str, texts: list[str]) -> tuple[int, str]:
    """(input tokens, source) the row must hold: what the fake billed, or, for Gemini (whose
    embeddings API reports no usage), the gateway's own count."""
    if provider != "gemini":
        return billed_tokens(list(texts)), "provider"
    count = await gateway.app[TOKENS].count_chat({"input": texts}, MODELS["gemini"])
    return count.tokens, "estimated"


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
@pytest.mark.parametrize("provider", list(MODELS))
async def test_contract(embed_gateway: TestClient, fake_upstream: FakeUpstream, provider: str,
                        encoding_format: str) -> None:
    _, key = await create_project(embed_gateway)
    resp = await embed_gateway.post(PATH, headers=auth(key), json={
        "model": MODELS[provider], "input": TEXTS, "encoding_format": encoding_format})
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["object"] == "list"
    assert [d["index"] for d in answer["data"]] == [0, 1]
    for item, text in zip(answer["data"], TEXTS, strict=True):
        assert item["object"] == "embedding"
        assert isinstance(item["embedding"], str if encoding_format == "base64" else list)
        assert floats(item["embedding"]) == vector(text, DEFAULT_DIMENSIONS)
    tokens, source = await expected_usage(embed_gateway, provider, TEXTS)
    [row] = await wait_for_rows(embed_gateway, 1)
    assert (row["provider"], row["status"], row["endpoint"]) == (provider, 200, PATH)
    assert (row["input_tokens"], row["output_tokens"]) == (tokens, 0)
    assert row["input_source"] == source
    assert answer["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    price, fallback = embed_gateway.app[PRICES].resolve(provider, row["model"])
    assert row["priced_by_fallback"] == fallback == (provider == "local")
    cost = Decimal(resp.headers["X-AI-Cost-Gateway-Cost"])
    assert row["cost_usd"] == compute_cost(Usage(input_tokens=tokens), price) == cost > 0
    assert fake_upstream.state.received == 1


@pytest.mark.parametrize("provider", ["openai", "mistral", "gemini", "cohere", "azure"])
async def test_dimensions_reach_the_provider(embed_gateway: TestClient, provider: str) -> None:
    _, key = await create_project(embed_gateway)
    resp = await embed_gateway.post(PATH, headers=auth(key), json={
        "model": MODELS[provider], "input": "one text", "dimensions": 3})
    assert resp.status == 200, await resp.text()
    [item] = (await resp.json())["data"]
    assert floats(item["embedding"]) == vector("one text", 3)


async def test_token_arrays_are_metered_by_their_length(embed_gateway: TestClient) -> None:
    _, key = await create_project(embed_gateway)
    resp = await embed_gateway.post(PATH, headers=auth(key), json={
        "model": "text-embedding-3-small", "input": [[1, 2, 3], [4, 5]]})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["usage"]["prompt_tokens"] == 5
    [row] = await wait_for_rows(embed_gateway, 1)
    assert row["input_tokens"] == 5


@pytest.mark.parametrize("provider", ["gemini", "cohere"])
async def test_token_arrays_cannot_reach_a_text_only_api(embed_gateway: TestClient,
                                                         fake_upstream: FakeUpstream,
                                                         provider: str) -> None:
    _, key = await create_project(embed_gateway)
    resp = await embed_gateway.post(PATH, headers=auth(key), json={
        "model": MODELS[provider], "input": [1, 2, 3]})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "untranslatable_feature"
    assert fake_upstream.state.received == 0


async def test_a_provider_without_embeddings_is_400(embed_gateway: TestClient,
                                                    fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(embed_gateway)
    resp = await embed_gateway.post(PATH, headers=auth(key), json={
        "model": "claude-sonnet-4-5", "input": "hello"})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "unsupported_endpoint"
    assert fake_upstream.state.received == 0
    [row] = await wait_for_rows(embed_gateway, 1)
    assert (row["status"], row["cost_usd"]) == (400, 0)


async def test_counted_where_the_server_reports_no_usage(embed_gateway: TestClient,
                                                         fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(embed_gateway)
    fake_upstream.script({"no_usage": True})
    resp = await embed_gateway.post(PATH, headers=auth(key), json={
        "model": "text-embedding-3-small", "input": TEXTS, "encoding_format": "base64"})
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    tokens = billed_tokens(list(TEXTS))  # cl100k, exactly as the gateway counts OpenAI's
    assert answer["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}  # as counted
    assert Decimal(resp.headers["X-AI-Cost-Gateway-Cost"]) == tokens * Decimal("0.02") / 10**6
    assert floats(answer["data"][1]["embedding"]) == vector(TEXTS[1], DEFAULT_DIMENSIONS)
    [row] = await wait_for_rows(embed_gateway, 1)
    assert (row["input_tokens"], row["input_source"]) == (tokens, "counted")


@pytest.mark.parametrize("body, field", [
    ({"model": "text-embedding-3-small"}, "input"),
    ({"model": "text-embedding-3-small", "input": ""}, "input"),
    ({"model": "text-embedding-3-small", "input": []}, "input"),
    ({"model": "text-embedding-3-small", "input": ["ok", 3]}, "input[1]"),
    ({"model": "text-embedding-3-small", "input": [[1, -2]]}, "input[0]"),
    ({"model": "text-embedding-3-small", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": "text-embedding-3-small", "input": "x", "encoding_format": "int8"},
     "encoding_format"),
    ({"input": "x"}, "model"),
])
async def test_bad_bodies_are_400(embed_gateway: TestClient, fake_upstream: FakeUpstream,
                                  body: dict[str, Any], field: str) -> None:
    _, key = await create_project(embed_gateway)
    resp = await embed_gateway.post(PATH, headers=auth(key), data=orjson.dumps(body))
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == field, error
    assert fake_upstream.state.received == 0


async def test_no_key_is_401(embed_gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    resp = await embed_gateway.post(PATH, json={"model": "text-embedding-3-small",
                                                "input": "hello"})
    assert resp.status == 401
    assert "error" in await resp.json()
    assert fake_upstream.state.received == 0


async def test_over_budget_is_402(embed_gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(embed_gateway, monthly_budget_usd="0.0000001")
    text = "many words " * 200  # 401 tokens: $0.00000802 at $0.02 per million
    resp = await embed_gateway.post(PATH, headers=auth(key), json={
        "model": "text-embedding-3-small", "input": text})
    assert resp.status == 402
    assert (await resp.json())["error"]["code"] == "budget_exceeded"
    assert fake_upstream.state.received == 0
    [row] = await wait_for_rows(embed_gateway, 1)
    assert (row["status"], row["endpoint"]) == (402, PATH)


async def test_a_reused_request_id_is_409(embed_gateway: TestClient,
                                          fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(embed_gateway)
    headers = {**auth(key), "X-Request-Id": "embed-once"}
    body = {"model": "text-embedding-3-small", "input": "hello"}
    assert (await embed_gateway.post(PATH, headers=headers, json=body)).status == 200
    resp = await embed_gateway.post(PATH, headers=headers, json=body)
    assert resp.status == 409
    assert fake_upstream.state.received == 1


async def test_the_budget_reserves_the_input_alone(embed_gateway: TestClient) -> None:
    """No output is ever billed, so none is reserved, even at a fallback price that has one."""
    model = MODELS["local"]
    price, fallback = embed_gateway.app[PRICES].resolve("local", "nomic-embed-text")
    assert fallback and price.output > 0
    count = await embed_gateway.app[TOKENS].count_chat({"input": "hello"}, model)
    budget = 2 * compute_cost(Usage(input_tokens=count.tokens), price)
    _, key = await create_project(embed_gateway, monthly_budget_usd=str(budget))
    resp = await embed_gateway.post(PATH, headers=auth(key), json={"model": model,
                                                                   "input": "hello"})
    assert resp.status == 200, await resp.text()


# -- the official openai SDK ----------------------------------------------------------------

def sdk(gateway: TestClient, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=key, max_retries=0)


@pytest.mark.parametrize("model", ["text-embedding-3-small", "gemini-embedding-001"])
async def test_sdk_default_base64(embed_gateway: TestClient, fake_upstream: FakeUpstream,
                                  model: str) -> None:
    _, key = await create_project(embed_gateway)
    raw = await sdk(embed_gateway, key).embeddings.with_raw_response.create(
        model=model, input=TEXTS)
    result = raw.parse()
    assert orjson.loads(raw.content)["data"][0]["embedding"] == base64.b64encode(
        struct.pack(f"<{DEFAULT_DIMENSIONS}f", *vector(TEXTS[0], DEFAULT_DIMENSIONS))).decode()
    assert [e.embedding for e in result.data] == [vector(t, DEFAULT_DIMENSIONS) for t in TEXTS]
    [row] = await wait_for_rows(embed_gateway, 1)
    assert result.usage.prompt_tokens == row["input_tokens"] > 0
    assert Decimal(raw.headers["x-ai-cost-gateway-cost"]) == row["cost_usd"] > 0


async def test_sdk_float_with_dimensions(embed_gateway: TestClient) -> None:
    _, key = await create_project(embed_gateway)
    result = await sdk(embed_gateway, key).embeddings.create(
        model="embed-v4.0", input="one text", encoding_format="float", dimensions=4)
    assert result.data[0].embedding == vector("one text", 4)
    assert result.usage.prompt_tokens == billed_tokens(["one text"])


async def test_sdk_errors(embed_gateway: TestClient) -> None:
    client = openai.AsyncOpenAI(base_url=str(embed_gateway.make_url("/v1")), api_key="nope",
                                max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await client.embeddings.create(model="text-embedding-3-small", input="hello")
