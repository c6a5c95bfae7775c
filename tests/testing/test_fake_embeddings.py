"""The fake's embeddings routes, read as each provider's wire (no SDK here)."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.testing.fake_embeddings import DEFAULT_DIMENSIONS, billed_tokens, vector
from gateway.testing.fake_upstream import build_app

GEMINI = "/v1beta/models/gemini-embedding-001"
KEY = {"x-goog-api-key": "gk"}


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(build_app())


def test_vectors_are_deterministic_and_float32_exact() -> None:
    first = vector("a text", 5)
    assert first == vector("a text", 5) != vector("another", 5)
    assert list(struct.unpack("<5f", struct.pack("<5f", *first))) == first
    assert all(-1 <= x <= 1 for x in first)


async def test_openai_float_base64_and_token_arrays(client: TestClient) -> None:
    resp = await client.post("/v1/embeddings", json={
        "model": "text-embedding-3-small", "input": ["hello world", [5, 6, 7]],
        "encoding_format": "base64"})
    answer = await resp.json()
    assert resp.status == 200 and answer["object"] == "list"
    raw = base64.b64decode(answer["data"][0]["embedding"])
    assert list(struct.unpack(f"<{DEFAULT_DIMENSIONS}f", raw)) == vector("hello world", 8)
    assert answer["usage"] == {"prompt_tokens": billed_tokens(["hello world", [5, 6, 7]]),
                               "total_tokens": billed_tokens(["hello world", [5, 6, 7]])}
    assert billed_tokens([[5, 6, 7]]) == 3
    resp = await client.post("/v1/embeddings", json={
        "model": "mistral-embed", "input": "x", "output_dimension": 3, "dimensions": 5})
    assert len((await resp.json())["data"][0]["embedding"]) == 3  # Mistral's own name


async def test_azure_needs_api_version_and_key(client: TestClient) -> None:
    path = "/openai/deployments/emb/embeddings"
    body = {"input": "x"}
    assert (await client.post(path, json=body, headers={"api-key": "k"})).status == 404
    assert (await client.post(path + "?api-version=2024-10-21", json=body)).status == 401
    resp = await client.post(path + "?api-version=2024-10-21", json=body,
                             headers={"api-key": "k"})
    assert (await resp.json())["model"] == "emb"


async def test_gemini_single_and_batch(client: TestClient) -> None:
    resp = await client.post(GEMINI + ":embedContent", headers=KEY, json={
        "content": {"parts": [{"text": "one"}]}, "outputDimensionality": 4})
    assert await resp.json() == {"embedding": {"values": vector("one", 4)}}
    resp = await client.post(GEMINI + ":batchEmbedContents", headers=KEY, json={"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": t}]}}
        for t in ("one", "two")]})
    assert await resp.json() == {"embeddings": [{"values": vector(t, 8)} for t in ("one", "two")]}
    resp = await client.post(GEMINI + ":embedContent", json={
        "content": {"parts": [{"text": "one"}]}})
    assert resp.status == 403


async def test_cohere_embed(client: TestClient) -> None:
    body = {"model": "embed-v4.0", "texts": ["one"], "embedding_types": ["float"]}
    assert (await client.post("/v2/embed", json=body)).status == 400  # input_type required
    resp = await client.post("/v2/embed", json={**body, "input_type": "search_query"})
    answer = await resp.json()
    assert answer["embeddings"] == {"float": [vector("one", 8)]}
    assert answer["meta"]["billed_units"] == {"input_tokens": billed_tokens(["one"])}
