"""`POST /v1/messages/count_tokens` with the real `anthropic` SDK: relayed to Anthropic for
its models, counted by the gateway for the others; free (no budget reserved, one row at
cost 0), but authenticated like any call."""

from __future__ import annotations

import anthropic
import pytest
from aiohttp.test_utils import TestClient
from anthropic.types import MessageParam
from conftest import FakeUpstream, create_project, wait_for_rows

from gateway.testing.fake_anthropic import count_input_tokens
from gateway.testing.fake_openai import count_prompt_tokens

MESSAGES: list[MessageParam] = [{"role": "user", "content": "How many tokens is this sentence?"}]
SYSTEM = "You are terse."


def sdk(gateway: TestClient, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(gateway.make_url("")), api_key=key,
                                    max_retries=0)


async def test_an_anthropic_model_is_counted_by_anthropic(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    # Free: a budget too small for any call does not stop a count.
    project, key = await create_project(gateway, monthly_budget_usd="0.000001")
    raw = await sdk(gateway, key).messages.with_raw_response.count_tokens(
        model="claude-sonnet-4-5", system=SYSTEM, messages=MESSAGES)
    count = await raw.parse()
    assert count.input_tokens == count_input_tokens({"system": SYSTEM, "messages": MESSAGES})
    assert raw.headers["x-ai-cost-gateway-cost"] == "0"
    sent = fake_upstream.state.log[-1]
    assert sent["path"] == "/v1/messages/count_tokens"
    assert "max_tokens" not in sent["body"]  # relayed as the client sent it
    [row] = await wait_for_rows(gateway, 1)
    assert (row["project_id"], row["endpoint"], row["status"], row["provider"]) == (
        project["id"], "/v1/messages/count_tokens", 200, "anthropic")
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (0, 0, 0)


async def test_another_model_is_counted_by_the_gateway(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    count = await sdk(gateway, key).messages.count_tokens(
        model="gpt-4o-mini", system=SYSTEM, messages=MESSAGES)
    # OpenAI bills the same conversation as these prompt tokens (o200k, chat framing).
    assert count.input_tokens == count_prompt_tokens(
        [{"role": "system", "content": SYSTEM}, *MESSAGES])
    assert not fake_upstream.state.log  # nothing forwarded
    [row] = await wait_for_rows(gateway, 1)
    assert (row["endpoint"], row["provider"], row["cost_usd"]) == (
        "/v1/messages/count_tokens", "openai", 0)


async def test_without_a_key_it_is_a_401_in_anthropics_shape(gateway: TestClient) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await sdk(gateway, "gw_wrong").messages.count_tokens(
            model="claude-sonnet-4-5", messages=MESSAGES)
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "error"


async def test_a_model_outside_the_allow_list_is_a_403(gateway: TestClient) -> None:
    _, key = await create_project(gateway, allowed_models=["gpt-4o-mini"])
    with pytest.raises(anthropic.PermissionDeniedError):
        await sdk(gateway, key).messages.count_tokens(
            model="claude-sonnet-4-5", messages=MESSAGES)
