"""The official `openai` SDK, with base_url set to a running gateway, gets real answers."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest
from aiohttp.test_utils import TestClient
from conftest import create_project, wait_for_rows

from gateway.testing.fake_upstream import count_prompt_tokens

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three colours."}]
PROMPT = count_prompt_tokens(MESSAGES)


def cost(prompt: int, completion: int) -> Decimal:  # gpt-4o-mini list price
    return (prompt * Decimal("0.15") + completion * Decimal("0.60")) / 10**6


def sdk(gateway: TestClient, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=key, max_retries=0)


async def test_completion(gateway: TestClient) -> None:
    project, key = await create_project(gateway)
    client = sdk(gateway, key)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=6)
    completion = raw.parse()
    assert completion.choices[0].message.content == "w1 w2 w3 w4 w5 w6"
    assert completion.usage is not None and completion.usage.prompt_tokens == PROMPT
    assert Decimal(raw.headers["x-ai-cost-gateway-cost"]) == cost(PROMPT, 6)
    [row] = await wait_for_rows(gateway, 1)
    assert (row["project_id"], row["input_tokens"], row["output_tokens"]) == (
        project["id"], PROMPT, 6)
    assert row["cost_usd"] == cost(PROMPT, 6)
    assert str(row["request_id"]) == raw.headers["x-ai-cost-gateway-request-id"]


@pytest.mark.parametrize("include_usage", [False, True])
async def test_streamed_completion(gateway: TestClient, include_usage: bool) -> None:
    _, key = await create_project(gateway)
    client = sdk(gateway, key)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=5, stream=True, **options)
    text, usages = "", []
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usages.append(chunk.usage)
    assert text == "w1 w2 w3 w4 w5"
    if include_usage:
        assert [(u.prompt_tokens, u.completion_tokens) for u in usages] == [(PROMPT, 5)]
    else:
        assert usages == []  # the usage chunk the gateway asked for was removed
    [row] = await wait_for_rows(gateway, 1)
    assert row["streamed"] is True and row["status"] == 200
    assert (row["input_tokens"], row["output_tokens"]) == (PROMPT, 5)
    assert row["cost_usd"] == cost(PROMPT, 5)


async def test_sdk_sees_gateway_errors_as_api_errors(gateway: TestClient) -> None:
    _, key = await create_project(gateway, allowed_models=["gpt-4o"])
    client = sdk(gateway, key)
    with pytest.raises(openai.PermissionDeniedError, match="not allowed"):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        await sdk(gateway, "gw_nope").chat.completions.create(model="gpt-4o", messages=MESSAGES)
