"""One contract, every provider route of the fake: the shared script, reply and faults.

Each provider is described once (how to ask, how to read its answer and its stream); a new
provider route is proven by adding a row to PROVIDERS.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.testing.fake_upstream import STATE, build_app
from tests.testing.fake_wire import DEFAULT_REPLY, read_until_cut, script, sse_events

Json = Any


@dataclass(frozen=True)
class Provider:
    name: str
    path: str
    stream_path: str
    headers: dict[str, str]
    body: Callable[[int | None, bool], dict[str, Any]]  # (max output tokens, stream)
    text: Callable[[Json], str]
    has_usage: Callable[[Json], bool]
    stream_text: Callable[[bytes], str]
    stream_usage: Callable[[bytes], bool]
    stream_complete: Callable[[bytes], bool]
    error_kind: Callable[[Json], str]  # what kind of error the provider's own body says
    rate_limit_kind: str
    garbage_prefix: bytes = b"data: {not json"

    async def call(
        self, client: TestClient, *, stream: bool = False, max_tokens: int | None = None
    ) -> aiohttp.ClientResponse:
        path = self.stream_path if stream else self.path
        body = self.body(max_tokens, stream)
        return await client.post(path, json=body, headers=self.headers)


def _openai_body(max_tokens: int | None, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def _openai_chunks(raw: bytes) -> list[Json]:
    return [json.loads(e["data"]) for e in sse_events(raw) if e["data"] != "[DONE]"]


def _openai_stream_text(raw: bytes) -> str:
    chunks = _openai_chunks(raw)
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


OPENAI = Provider(
    name="openai",
    path="/v1/chat/completions",
    stream_path="/v1/chat/completions",
    headers={"Authorization": "Bearer sk-test"},
    body=_openai_body,
    text=lambda j: j["choices"][0]["message"]["content"],
    has_usage=lambda j: "usage" in j,
    stream_text=_openai_stream_text,
    stream_usage=lambda raw: any(c.get("usage") for c in _openai_chunks(raw)),
    stream_complete=lambda raw: raw.endswith(b"data: [DONE]\n\n"),
    error_kind=lambda j: j["error"]["type"],
    rate_limit_kind="rate_limit_error",
)
AZURE_PATH = "/openai/deployments/dep/chat/completions?api-version=2024-10-21"
AZURE = Provider(
    name="azure",
    path=AZURE_PATH,
    stream_path=AZURE_PATH,
    headers={"api-key": "azure-key"},
    body=_openai_body,
    text=OPENAI.text,
    has_usage=OPENAI.has_usage,
    stream_text=_openai_stream_text,
    stream_usage=OPENAI.stream_usage,
    stream_complete=OPENAI.stream_complete,
    error_kind=lambda j: j["error"]["code"] if set(j["error"]) == {"code", "message"} else "",
    rate_limit_kind="429",
)


def _anthropic_body(max_tokens: int | None, stream: bool) -> dict[str, Any]:
    body = {
        "model": "claude-test",
        "max_tokens": 1024 if max_tokens is None else max_tokens,
        "messages": [{"role": "user", "content": "hi"}],
    }
    return {**body, "stream": True} if stream else body


def _anthropic_events(raw: bytes) -> list[Json]:
    events = sse_events(raw)
    assert all(json.loads(e["data"])["type"] == e["event"] for e in events[1:])
    return [json.loads(e["data"]) for e in events]


ANTHROPIC = Provider(
    name="anthropic",
    path="/v1/messages",
    stream_path="/v1/messages",
    headers={"x-api-key": "ak", "anthropic-version": "2023-06-01"},
    body=_anthropic_body,
    text=lambda j: "".join(block["text"] for block in j["content"]),
    has_usage=lambda j: "usage" in j,
    stream_text=lambda raw: "".join(
        e["delta"]["text"] for e in _anthropic_events(raw) if e["type"] == "content_block_delta"
    ),
    stream_usage=lambda raw: "usage" in _anthropic_events(raw)[0]["message"],
    stream_complete=lambda raw: _anthropic_events(raw)[-1]["type"] == "message_stop",
    error_kind=lambda j: j["error"]["type"] if j["type"] == "error" else "",
    rate_limit_kind="rate_limit_error",
    garbage_prefix=b"event: content_block_delta\ndata: {not json",
)


def _gemini_body(max_tokens: int | None, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    if max_tokens is not None:
        body["generationConfig"] = {"maxOutputTokens": max_tokens}
    return body


def _gemini_chunks(raw: bytes) -> list[Json]:
    return [json.loads(e["data"]) for e in sse_events(raw, b"\r\n\r\n")]


def _gemini_text(response: Json) -> str:
    return "".join(part["text"] for part in response["candidates"][0]["content"]["parts"])


GEMINI = Provider(
    name="gemini",
    path="/v1beta/models/gemini-2.0-flash:generateContent",
    stream_path="/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
    headers={"x-goog-api-key": "gk"},
    body=_gemini_body,
    text=_gemini_text,
    has_usage=lambda j: "usageMetadata" in j,
    stream_text=lambda raw: "".join(_gemini_text(c) for c in _gemini_chunks(raw)),
    stream_usage=lambda raw: any("usageMetadata" in c for c in _gemini_chunks(raw)),
    stream_complete=lambda raw: "finishReason" in _gemini_chunks(raw)[-1]["candidates"][0],
    error_kind=lambda j: j["error"]["status"] if j["error"]["code"] in (429, 503) else "",
    rate_limit_kind="RESOURCE_EXHAUSTED",
)


def _cohere_body(max_tokens: int | None, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "command-a", "messages": [{"role": "user", "content": "hi"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return {**body, "stream": True} if stream else body


def _cohere_events(raw: bytes) -> list[Json]:
    return [json.loads(e["data"]) for e in sse_events(raw) if e["data"] != "[DONE]"]


COHERE = Provider(
    name="cohere",
    path="/v2/chat",
    stream_path="/v2/chat",
    headers={"Authorization": "Bearer ck"},
    body=_cohere_body,
    text=lambda j: j["message"]["content"][0]["text"],
    has_usage=lambda j: "usage" in j,
    stream_text=lambda raw: "".join(
        e["delta"]["message"]["content"]["text"]
        for e in _cohere_events(raw)
        if e["type"] == "content-delta"
    ),
    stream_usage=lambda raw: "usage" in _cohere_events(raw)[-1].get("delta", {}),
    stream_complete=lambda raw: raw.endswith(b"data: [DONE]\n\n"),
    error_kind=lambda j: j["message"] if set(j) == {"message"} else "",
    rate_limit_kind="Rate limit reached (fake).",
    garbage_prefix=b"event: content-delta\ndata: {not json",
)

PROVIDERS = [OPENAI, AZURE, ANTHROPIC, GEMINI, COHERE]
by_name = pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(build_app())


@by_name
async def test_default_reply_and_token_limit(client: TestClient, provider: Provider) -> None:
    resp = await provider.call(client)
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    assert provider.text(data) == DEFAULT_REPLY
    assert provider.has_usage(data)
    cut = await (await provider.call(client, max_tokens=3)).json()
    assert provider.text(cut) == "w1 w2 w3"


@by_name
async def test_stream_reply(client: TestClient, provider: Provider) -> None:
    resp = await provider.call(client, stream=True, max_tokens=4)
    assert resp.status == 200
    raw = await resp.read()
    assert provider.stream_text(raw) == "w1 w2 w3 w4"
    assert provider.stream_usage(raw)
    assert provider.stream_complete(raw)


@by_name
async def test_scripted_reply_and_reply_tokens(client: TestClient, provider: Provider) -> None:
    await script(client, {"reply": "Hello big world"}, {"reply_tokens": 2})
    assert provider.text(await (await provider.call(client)).json()) == "Hello big world"
    raw = await (await provider.call(client, stream=True)).read()
    assert provider.stream_text(raw) == "w1 w2"


@by_name
async def test_scripted_rate_limit_in_provider_shape(
    client: TestClient, provider: Provider
) -> None:
    await script(client, {"status": 429, "retry_after": 3}, {"status": 503})
    resp = await provider.call(client)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "3"
    assert provider.error_kind(await resp.json()) == provider.rate_limit_kind
    resp = await provider.call(client, stream=True)
    assert resp.status == 503
    assert provider.error_kind(await resp.json()) not in ("", provider.rate_limit_kind)


@by_name
async def test_one_script_queue_for_all_providers(client: TestClient, provider: Provider) -> None:
    await script(client, {"status": 500}, {"reply": "second"})
    assert (await provider.call(client)).status == 500
    other = await OPENAI.call(client)
    assert OPENAI.text(await other.json()) == "second"


@by_name
async def test_drop_and_delay(client: TestClient, provider: Provider) -> None:
    await script(client, {"drop": True}, {"delay_ms": 150})
    with pytest.raises(aiohttp.ClientConnectionError):
        await provider.call(client)
    started = time.monotonic()
    assert (await provider.call(client)).status == 200
    assert time.monotonic() - started >= 0.15


@by_name
async def test_hang_outlasts_the_client(client: TestClient, provider: Provider) -> None:
    await script(client, {"hang": True})
    with pytest.raises(asyncio.TimeoutError):
        await client.post(
            provider.path,
            json=provider.body(None, False),
            headers=provider.headers,
            timeout=aiohttp.ClientTimeout(total=0.2),
        )
    assert (await provider.call(client)).status == 200


@by_name
@pytest.mark.parametrize("mode", ["garbage", "truncated", "empty"])
async def test_broken_bodies(client: TestClient, provider: Provider, mode: str) -> None:
    await script(client, {"body": mode}, {"body": mode})
    for stream in (False, True):  # a broken body wins over streaming
        resp = await provider.call(client, stream=stream)
        assert resp.status == 200
        assert resp.content_type == "application/json"
        raw = await resp.read()
        assert (raw == b"") if mode == "empty" else raw
        with pytest.raises(ValueError):
            json.loads(raw)


@by_name
async def test_stream_cut_after(client: TestClient, provider: Provider) -> None:
    await script(client, {"stream_cut_after": 2})
    raw = await read_until_cut(await provider.call(client, stream=True))
    assert provider.stream_text(raw) == "w1 w2 "
    assert not provider.stream_complete(raw)
    assert (await provider.call(client)).status == 200


@by_name
async def test_stream_garbage(client: TestClient, provider: Provider) -> None:
    await script(client, {"stream_garbage": True, "reply_tokens": 2})
    raw = await (await provider.call(client, stream=True)).read()
    assert raw.startswith(provider.garbage_prefix)
    _garbage, rest = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)
    assert provider.stream_text(rest) == "w1 w2"


@by_name
async def test_no_usage(client: TestClient, provider: Provider) -> None:
    await script(client, {"no_usage": True}, {"no_usage": True})
    assert not provider.has_usage(await (await provider.call(client)).json())
    raw = await (await provider.call(client, stream=True)).read()
    assert provider.stream_text(raw) == DEFAULT_REPLY
    assert not provider.stream_usage(raw)


@by_name
async def test_chunk_delay(client: TestClient, provider: Provider) -> None:
    await script(client, {"chunk_delay_ms": 30, "reply_tokens": 3})
    started = time.monotonic()
    raw = await (await provider.call(client, stream=True)).read()
    assert provider.stream_text(raw) == "w1 w2 w3"
    assert time.monotonic() - started >= 0.09  # at least 4 events, 3 gaps


@by_name
async def test_request_log(client: TestClient, provider: Provider) -> None:
    await provider.call(client, stream=True)
    path, _, query = provider.stream_path.partition("?")
    log = await (await client.get("/_fake/requests")).json()
    assert client.app is not None
    assert log["count"] == 1 == client.app[STATE].received
    (entry,) = log["requests"]
    assert (entry["method"], entry["path"], entry["query"]) == ("POST", path, query)
    assert entry["body"] == provider.body(None, True)
    for name, value in provider.headers.items():
        assert entry["headers"][name] == value
