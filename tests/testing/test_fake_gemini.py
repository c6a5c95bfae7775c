"""The fake's Gemini generateContent routes, read byte by byte (no Google SDK here)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.testing.fake_gemini import count_prompt_tokens
from gateway.testing.fake_upstream import build_app
from tests.testing.fake_wire import DEFAULT_REPLY, read_until_cut, script, sse_events, toks

MODEL = "/v1beta/models/gemini-2.0-flash"
GENERATE = MODEL + ":generateContent"
STREAM = MODEL + ":streamGenerateContent?alt=sse"
KEY = {"x-goog-api-key": "gk"}
BODY = {
    "systemInstruction": {"parts": [{"text": "Be brief."}]},
    "contents": [
        {"role": "user", "parts": [{"text": "Hello there"}]},
        {"role": "model", "parts": [{"text": "Hi!"}]},
        {"role": "user", "parts": [{"text": "How are you?"}]},
    ],
}
PROMPT = toks("Be brief.", "Hello there", "Hi!", "How are you?")
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city.",
    "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}},
}


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(build_app())


def usage(prompt: int, candidates: int) -> dict[str, Any]:
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }


def test_prompt_token_rule() -> None:
    assert count_prompt_tokens(BODY) == PROMPT
    call = {
        "contents": [
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"b": 2}}}]},
        ]
    }
    assert count_prompt_tokens(call) == toks('{"a":1}', '{"b":2}')


async def test_generate_content(client: TestClient) -> None:
    resp = await client.post(GENERATE, json=BODY, headers=KEY)
    assert resp.status == 200
    assert await resp.json() == {
        "candidates": [
            {
                "content": {"parts": [{"text": DEFAULT_REPLY}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": usage(PROMPT, 12),
        "modelVersion": "gemini-2.0-flash",
        "responseId": "fake-1",
    }


async def test_max_output_tokens_snake_case_and_key_in_query(client: TestClient) -> None:
    body = {
        "system_instruction": {"parts": [{"text": "Be brief."}]},
        "contents": BODY["contents"],
        "generation_config": {"max_output_tokens": 3},
    }
    data = await (await client.post(GENERATE + "?key=gk", json=body)).json()
    candidate = data["candidates"][0]
    assert candidate["content"]["parts"] == [{"text": "w1 w2 w3"}]
    assert candidate["finishReason"] == "MAX_TOKENS"
    assert data["usageMetadata"] == usage(PROMPT, 3)


async def test_stop_sequence_and_cached_tokens(client: TestClient) -> None:
    await script(client, {"cached_tokens": 4})
    body = {**BODY, "generationConfig": {"stopSequences": ["w2"]}}
    data = await (await client.post(GENERATE, json=body, headers=KEY)).json()
    assert data["candidates"][0]["content"]["parts"] == [{"text": "w1"}]
    assert data["candidates"][0]["finishReason"] == "STOP"
    assert data["usageMetadata"] == {**usage(PROMPT, 1), "cachedContentTokenCount": 4}


async def test_sse_stream(client: TestClient) -> None:
    body = {**BODY, "generationConfig": {"maxOutputTokens": 3}}
    resp = await client.post(STREAM, json=body, headers=KEY)
    assert resp.content_type == "text/event-stream"
    raw = await resp.read()
    assert raw.endswith(b"\r\n\r\n") and b"[DONE]" not in raw
    chunks = [json.loads(e["data"]) for e in sse_events(raw, b"\r\n\r\n")]
    assert len(chunks) == 4
    texts = [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks]
    assert texts == ["w1 ", "w2 ", "w3", ""]
    prompt_only = {k: v for k, v in usage(PROMPT, 0).items() if k != "candidatesTokenCount"}
    assert all(c["usageMetadata"] == prompt_only for c in chunks[:-1])
    assert all("finishReason" not in c["candidates"][0] for c in chunks[:-1])
    assert chunks[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert chunks[-1]["usageMetadata"] == usage(PROMPT, 3)
    assert {c["responseId"] for c in chunks} == {"fake-1"}
    assert {c["modelVersion"] for c in chunks} == {"gemini-2.0-flash"}


async def test_stream_without_alt_sse_is_a_json_array(client: TestClient) -> None:
    resp = await client.post(MODEL + ":streamGenerateContent", json=BODY, headers=KEY)
    assert resp.content_type == "application/json"
    chunks = json.loads(await resp.read())
    assert isinstance(chunks, list) and len(chunks) == 13
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    assert text == DEFAULT_REPLY
    assert chunks[-1]["usageMetadata"] == usage(PROMPT, 12)


async def test_stream_cut_keeps_the_finish_reason_away(client: TestClient) -> None:
    await script(client, {"stream_cut_after": 5})
    raw = await read_until_cut(await client.post(STREAM, json=BODY, headers=KEY))
    chunks = [json.loads(e["data"]) for e in sse_events(raw, b"\r\n\r\n")]
    assert len(chunks) == 5
    assert all("finishReason" not in c["candidates"][0] for c in chunks)


@pytest.mark.parametrize("path", [GENERATE, STREAM])
async def test_function_call(client: TestClient, path: str) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "Use tool please"}]}],
        "tools": [{"functionDeclarations": [WEATHER, {**WEATHER, "name": "other"}]}],
    }
    resp = await client.post(path, json=body, headers=KEY)
    if path == STREAM:
        chunks = [json.loads(e["data"]) for e in sse_events(await resp.read(), b"\r\n\r\n")]
        parts = [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]
        assert parts.pop() == {"text": ""}  # the closing chunk
        data = chunks[-1]
    else:
        data = await resp.json()
        parts = data["candidates"][0]["content"]["parts"]
    assert parts == [{"functionCall": {"name": "get_weather", "args": {"city": "fake"}}}]
    assert data["candidates"][0]["finishReason"] == "STOP"
    assert data["usageMetadata"]["candidatesTokenCount"] == toks('{"city":"fake"}')


@pytest.mark.parametrize(
    ("mode", "text", "expected"),
    [("ANY", "hi", "get_weather"), ("NONE", "use tool", None), ("AUTO", "hi", None)],
)
async def test_function_calling_mode(
    client: TestClient, mode: str, text: str, expected: str | None
) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "tools": [{"function_declarations": [WEATHER]}],
        "toolConfig": {"functionCallingConfig": {"mode": mode}},
    }
    data = await (await client.post(GENERATE, json=body, headers=KEY)).json()
    part = data["candidates"][0]["content"]["parts"][0]
    assert part.get("functionCall", {}).get("name") == expected


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (429, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
        (403, "PERMISSION_DENIED"),
    ],
)
async def test_scripted_errors(client: TestClient, status: int, name: str) -> None:
    await script(client, {"status": status})
    resp = await client.post(STREAM, json=BODY, headers=KEY)
    assert resp.status == status
    assert resp.content_type == "application/json"
    error = (await resp.json())["error"]
    assert (error["code"], error["status"]) == (status, name)
    assert error["message"]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "name"),
    [
        (GENERATE, {"contents": []}, KEY, 400, "INVALID_ARGUMENT"),
        (GENERATE, {**BODY, "generationConfig": {"maxOutputTokens": 0}}, KEY, 400,
         "INVALID_ARGUMENT"),
        (GENERATE, BODY, {}, 403, "PERMISSION_DENIED"),
        (MODEL + ":predict", BODY, KEY, 404, "NOT_FOUND"),
    ],
)  # fmt: skip
async def test_invalid_requests(
    client: TestClient,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    status: int,
    name: str,
) -> None:
    resp = await client.post(path, json=body, headers=headers)
    assert resp.status == status
    error = (await resp.json())["error"]
    assert (error["code"], error["status"]) == (status, name)


async def test_count_tokens_and_log(client: TestClient) -> None:
    await script(client, {"status": 500})
    count = MODEL + ":countTokens"
    resp = await client.post(count, json={"contents": BODY["contents"]}, headers=KEY)
    assert (await resp.json())["totalTokens"] == PROMPT - toks("Be brief.")
    nested = {"generateContentRequest": {"model": "models/gemini-2.0-flash", **BODY}}
    resp = await client.post(count, json=nested, headers=KEY)
    assert (await resp.json())["totalTokens"] == PROMPT
    assert (await client.post(STREAM, json=BODY, headers=KEY)).status == 500  # script kept
    log = await (await client.get("/_fake/requests")).json()
    last = log["requests"][-1]
    assert (last["path"], last["query"]) == (MODEL + ":streamGenerateContent", "alt=sse")
    assert last["headers"]["x-goog-api-key"] == "gk"
