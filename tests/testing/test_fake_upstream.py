"""Tests for the fake OpenAI-compatible upstream."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import subprocess
import sys
import time
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from gateway.testing.fake_upstream import (
    STATE,
    build_app,
    count_prompt_tokens,
    start_fake_upstream,
)
from gateway.tokens.encodings import load_encoding

CHAT = "/v1/chat/completions"
O200K = load_encoding("o200k_base")  # offline, from the bundled BPE file


def toks(text: str) -> int:
    return len(O200K.encode_ordinary(text))


MESSAGES = [
    {"role": "system", "content": "hello"},  # 5 bytes -> 2 tokens
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "abcdefghi"},  # 9 bytes -> 3 tokens
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    },
]
PROMPT_TOKENS = (3 + (3 + toks("system") + toks("hello"))
                 + (3 + toks("user") + toks("abcdefghi")))
DEFAULT_REPLY = " ".join(f"w{i}" for i in range(1, 13))


def request(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": MESSAGES, **extra}


@pytest.fixture
async def client(aiohttp_client: Any) -> Any:
    return await aiohttp_client(build_app())


async def script(client: Any, *behaviours: dict[str, Any]) -> None:
    resp = await client.post("/_fake/script", json=list(behaviours))
    assert resp.status == 200, await resp.text()


def parse_sse(text: str) -> list[str]:
    """The data payloads of an SSE body, in order."""
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e.removeprefix("data: ") for e in events]


async def read_events(resp: aiohttp.ClientResponse) -> list[str]:
    """Read SSE data lines until the body ends or the connection breaks."""
    events: list[str] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async for line in resp.content:
            if line.startswith(b"data: "):
                events.append(line[6:].decode().rstrip("\n"))
    return events


def assert_no_server_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_prompt_token_rule() -> None:
    assert count_prompt_tokens(MESSAGES) == PROMPT_TOKENS
    assert count_prompt_tokens([{"role": "user", "content": "é"}]) == 3 + 3 + 1 + toks("é")
    assert count_prompt_tokens([{"role": "assistant", "content": None}]) == 3 + 3 + 1
    named = [{"role": "user", "name": "ana", "content": "hi"}]
    assert count_prompt_tokens(named) == 3 + 3 + toks("user") + toks("ana") + 1 + toks("hi")


async def test_non_stream_shape_and_token_rule(client: Any) -> None:
    resp = await client.post(CHAT, json=request())
    assert resp.status == 200
    assert resp.content_type == "application/json"
    data = await resp.json()
    assert data["id"] == "chatcmpl-fake-1"
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int)
    assert data["model"] == "gpt-4o-mini"
    assert data["service_tier"] == "default"
    assert data["system_fingerprint"] == "fp_fake"
    assert data["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": DEFAULT_REPLY,
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert data["usage"] == {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": 12,
        "total_tokens": PROMPT_TOKENS + 12,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    second = await (await client.post(CHAT, json=request())).json()
    assert second["id"] == "chatcmpl-fake-2"


async def test_build_app_defaults(aiohttp_client: Any) -> None:
    client = await aiohttp_client(build_app(reply_tokens=3, delay_ms=100))
    started = time.monotonic()
    data = await (await client.post(CHAT, json=request())).json()
    assert time.monotonic() - started >= 0.1
    assert data["choices"][0]["message"]["content"] == "w1 w2 w3"
    assert data["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("limits", "content", "finish"),
    [
        ({"max_tokens": 5}, "w1 w2 w3 w4 w5", "length"),
        ({"max_completion_tokens": 3, "max_tokens": 50}, "w1 w2 w3", "length"),
        ({"max_tokens": 12}, DEFAULT_REPLY, "stop"),
        ({"max_completion_tokens": 100}, DEFAULT_REPLY, "stop"),
    ],
)
async def test_max_tokens_cut(
    client: Any, limits: dict[str, int], content: str, finish: str
) -> None:
    data = await (await client.post(CHAT, json=request(**limits))).json()
    choice = data["choices"][0]
    assert choice["message"]["content"] == content
    assert choice["finish_reason"] == finish
    assert data["usage"]["completion_tokens"] == len(content.split())


async def test_stream_without_usage(client: Any) -> None:
    resp = await client.post(CHAT, json=request(stream=True, max_tokens=4))
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    events = parse_sse(await resp.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert contents == ["w1 ", "w2 ", "w3 ", "w4"]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


async def test_stream_with_include_usage(client: Any) -> None:
    body = request(stream=True, stream_options={"include_usage": True})
    events = parse_sse(await (await client.post(CHAT, json=body)).text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    *content_chunks, usage_chunk = chunks
    assert all(c["usage"] is None for c in content_chunks)
    assert content_chunks[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in content_chunks)
    assert text == DEFAULT_REPLY
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert usage_chunk["usage"]["completion_tokens"] == 12
    assert usage_chunk["usage"]["total_tokens"] == PROMPT_TOKENS + 12


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        json.dumps({"messages": MESSAGES}).encode(),
        json.dumps({"model": "m"}).encode(),
        json.dumps({"model": "m", "messages": []}).encode(),
        json.dumps({"model": "m", "messages": MESSAGES, "max_tokens": 0}).encode(),
    ],
)
async def test_invalid_request_is_400(client: Any, raw: bytes) -> None:
    resp = await client.post(CHAT, data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None and error["code"] is None
    assert error["message"]


@pytest.mark.parametrize(
    ("behaviour", "type_", "code", "retry_after"),
    [
        ({"status": 500}, "server_error", None, None),
        ({"status": 503, "retry_after": 1.5}, "server_error", None, "1.5"),
        ({"status": 429, "retry_after": 2}, "rate_limit_error", "rate_limit_exceeded", "2"),
        ({"status": 401}, "invalid_request_error", None, None),
    ],
)
async def test_scripted_status(
    client: Any, behaviour: dict[str, Any], type_: str, code: str | None, retry_after: str | None
) -> None:
    await script(client, behaviour)
    resp = await client.post(CHAT, json=request())
    assert resp.status == behaviour["status"]
    assert resp.headers.get("Retry-After") == retry_after
    error = (await resp.json())["error"]
    assert (error["type"], error["code"], error["param"]) == (type_, code, None)


async def test_script_is_fifo_and_clearable(client: Any) -> None:
    await script(client, {"status": 500}, {"reply": "second"})
    assert (await client.post(CHAT, json=request())).status == 500
    second = await (await client.post(CHAT, json=request())).json()
    assert second["choices"][0]["message"]["content"] == "second"
    third = await (await client.post(CHAT, json=request())).json()
    assert third["choices"][0]["message"]["content"] == DEFAULT_REPLY

    await script(client, {"status": 500})
    assert (await client.delete("/_fake/script")).status == 200
    assert (await client.post(CHAT, json=request())).status == 200


@pytest.mark.parametrize(
    "bad",
    [
        [{"stauts": 500}],
        [{"status": 200}],
        [{"hang": 1}],
        [{"body": "weird"}],
        [{"delay_ms": -1}],
        5,
    ],
)
async def test_script_rejects_bad_behaviours(client: Any, bad: Any) -> None:
    assert (await client.post("/_fake/script", json=bad)).status == 400
    assert len(client.server.app[STATE].script) == 0


async def test_delay_ms(client: Any) -> None:
    await script(client, {"delay_ms": 200})
    started = time.monotonic()
    assert (await client.post(CHAT, json=request())).status == 200
    assert time.monotonic() - started >= 0.2


async def test_chunk_delay_ms_is_visible_to_the_client(client: Any) -> None:
    await script(client, {"chunk_delay_ms": 40, "reply_tokens": 3})
    resp = await client.post(CHAT, json=request(stream=True))
    arrivals: list[float] = []
    async for line in resp.content:
        if line.startswith(b"data: "):
            arrivals.append(time.monotonic())
    # role, 3 words, finish, [DONE]: 6 events with 5 gaps of 40 ms, seen as they happen.
    assert len(arrivals) == 6
    assert arrivals[-1] - arrivals[0] >= 0.15
    assert all(b - a >= 0.02 for a, b in itertools.pairwise(arrivals))


def coroutine_running(name: str) -> bool:
    """Whether any task is currently awaiting (at any depth) a coroutine called ``name``."""
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        while coro is not None:
            if getattr(coro, "__name__", None) == name:
                return True
            coro = getattr(coro, "cr_await", None)
    return False


async def test_hang_times_out_client_and_server_stays_healthy() -> None:
    # start_fake_upstream's runner, unlike aiohttp's test server, does not cancel handlers
    # when the client disconnects, so this checks the fake notices the disconnect itself.
    runner, url = await start_fake_upstream()
    try:
        async with aiohttp.ClientSession() as session:
            await session.post(url.removesuffix("/v1") + "/_fake/script", json=[{"hang": True}])
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await session.post(
                    url + "/chat/completions",
                    json=request(),
                    timeout=aiohttp.ClientTimeout(total=0.3),
                )
            assert time.monotonic() - started < 5
            for _ in range(40):
                if not coroutine_running("_hang"):
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the hanging handler outlived its client")
            async with session.get(url.removesuffix("/v1") + "/_fake/health") as resp:
                assert await resp.json() == {"ok": True}
            async with session.post(url + "/chat/completions", json=request()) as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()


async def test_drop_closes_connection(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    await script(client, {"drop": True})
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.post(CHAT, json=request())
    assert (await client.post(CHAT, json=request())).status == 200
    assert_no_server_errors(caplog)


@pytest.mark.parametrize("mode", ["garbage", "truncated", "empty"])
async def test_body_modes(client: Any, mode: str) -> None:
    await script(client, {"body": mode})
    resp = await client.post(CHAT, json=request())
    assert resp.status == 200
    assert resp.content_type == "application/json"
    raw = await resp.read()
    if mode == "empty":
        assert raw == b""
    else:
        assert raw
        if mode == "truncated":
            assert raw.startswith(b'{"id":"chatcmpl-fake-')
        with pytest.raises(ValueError):
            json.loads(raw)


@pytest.mark.parametrize(("cut", "expected_words"), [(2, 2), (0, 0), (50, 12)])
async def test_stream_cut_after(
    client: Any, caplog: pytest.LogCaptureFixture, cut: int, expected_words: int
) -> None:
    await script(client, {"stream_cut_after": cut})
    resp = await client.post(CHAT, json=request(stream=True))
    assert resp.status == 200
    events = await read_events(resp)
    assert "[DONE]" not in events
    chunks = [json.loads(e) for e in events]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    words = [c for c in chunks[1:] if c["choices"][0]["delta"].get("content")]
    assert len(words) == expected_words
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert (await client.post(CHAT, json=request())).status == 200
    assert_no_server_errors(caplog)


async def test_stream_garbage(client: Any) -> None:
    await script(client, {"stream_garbage": True, "reply_tokens": 2})
    events = parse_sse(await (await client.post(CHAT, json=request(stream=True))).text())
    assert events[0] == "{not json"
    with pytest.raises(ValueError):
        json.loads(events[0])
    chunks = [json.loads(e) for e in events[1:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "w1 w2"
    assert events[-1] == "[DONE]"


async def test_no_usage(client: Any) -> None:
    await script(client, {"no_usage": True}, {"no_usage": True})
    data = await (await client.post(CHAT, json=request())).json()
    assert "usage" not in data
    body = request(stream=True, stream_options={"include_usage": True})
    events = parse_sse(await (await client.post(CHAT, json=body)).text())
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_reply_and_cached_tokens(client: Any) -> None:
    await script(
        client,
        {"reply": "Hello there big world", "cached_tokens": 5},
        {"reply_tokens": 2, "cached_tokens": 10_000},
    )
    data = await (await client.post(CHAT, json=request(max_tokens=2))).json()
    assert data["choices"][0]["message"]["content"] == "Hello there"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 2
    assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 5
    data = await (await client.post(CHAT, json=request())).json()
    assert data["choices"][0]["message"]["content"] == "w1 w2"
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == PROMPT_TOKENS


async def test_request_log(client: Any) -> None:
    headers = {"Authorization": "Bearer sk-secret"}
    await client.post(CHAT, json=request(), headers=headers)
    await client.post(CHAT, data=b"{bad", headers=headers)
    log = await (await client.get("/_fake/requests")).json()
    assert log["count"] == 2
    first, second = log["requests"]
    assert first["method"] == "POST" and first["path"] == CHAT and first["query"] == ""
    assert first["headers"]["Authorization"] == "Bearer sk-secret"
    assert first["body"] == request()
    assert second["body"] is None

    for _ in range(210):
        await client.post(CHAT, json=request())
    log = await (await client.get("/_fake/requests")).json()
    assert log["count"] == 212
    assert len(log["requests"]) == 200

    assert (await client.delete("/_fake/requests")).status == 200
    assert await (await client.get("/_fake/requests")).json() == {"count": 0, "requests": []}


async def test_openai_sdk_against_fake(aiohttp_server: Any) -> None:
    server = await aiohttp_server(build_app())
    sdk = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="x", max_retries=0)
    try:
        completion = await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert completion.choices[0].message.content == "w1 w2 w3 w4"
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage is not None
        assert completion.usage.prompt_tokens == 3 + 3 + toks("user") + toks("hi")
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + 4

        stream = await sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        parts: list[str] = []
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert "".join(parts) == DEFAULT_REPLY
        assert usage is not None and usage.completion_tokens == 12
    finally:
        await sdk.close()
    assert server.app[STATE].received == 2
    assert server.app[STATE].log[0]["headers"]["Authorization"] == "Bearer x"


async def test_start_fake_upstream_in_process() -> None:
    runner, url = await start_fake_upstream(reply_tokens=2)
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/chat/completions", json=request()) as resp:
                data = await resp.json()
        assert data["choices"][0]["message"]["content"] == "w1 w2"
        app: web.Application = runner.app
        assert app[STATE].received == 1
    finally:
        await runner.cleanup()


def test_cli_starts_and_prints_url() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.testing.fake_upstream", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("fake upstream listening on http://127.0.0.1:")
        assert not line.endswith(":0")
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
