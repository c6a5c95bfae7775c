"""Streams without a usage report, and streams cut short, are metered by counting."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import tiktoken
from aiohttp.test_utils import TestClient
from conftest import FakeUpstream, chat_body, create_project, wait_for_rows

from gateway.keys import TOKENS


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(1, n + 1))


async def _input_tokens(gateway: TestClient, body: dict, model: str) -> int:
    return (await gateway.app[TOKENS].count_chat(body, model)).tokens


async def test_stream_without_usage_is_counted_exactly(
        gateway: TestClient, fake_upstream: FakeUpstream,
        encodings: dict[str, tiktoken.Encoding]) -> None:
    _, key = await create_project(gateway)
    fake_upstream.script({"no_usage": True, "reply_tokens": 7})
    body = chat_body(stream=True)
    resp = await gateway.post("/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {key}"})
    text = await resp.text()
    assert resp.status == 200 and text.endswith("data: [DONE]\n\n")
    [row] = await wait_for_rows(gateway, 1)
    expected_in = await _input_tokens(gateway, body, "gpt-4o-mini")
    expected_out = len(encodings["o200k_base"].encode_ordinary(words(7)))
    assert (row["input_source"], row["output_source"], row["usage_source"]) == (
        "counted", "counted", "counted")
    assert (row["input_tokens"], row["output_tokens"]) == (expected_in, expected_out)
    cost = (expected_in * Decimal("0.15") + expected_out * Decimal("0.60")) / 10**6
    assert row["cost_usd"] == cost
    assert f": x-ai-cost-gateway-cost {cost.normalize():f}" in text


async def test_completion_without_usage_is_counted(
        gateway: TestClient, fake_upstream: FakeUpstream,
        encodings: dict[str, tiktoken.Encoding]) -> None:
    _, key = await create_project(gateway)
    fake_upstream.script({"no_usage": True, "reply": "Hello there, how are you?"})
    resp = await gateway.post("/v1/chat/completions", json=chat_body(),
                              headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200
    [row] = await wait_for_rows(gateway, 1)
    assert row["output_tokens"] == len(
        encodings["o200k_base"].encode_ordinary("Hello there, how are you?"))
    assert row["input_source"] == row["output_source"] == "counted"
    assert Decimal(resp.headers["X-AI-Cost-Gateway-Cost"]) == row["cost_usd"] > 0


async def test_stream_cut_by_the_client_is_settled_at_the_tokens_sent(
        gateway: TestClient, fake_upstream: FakeUpstream,
        encodings: dict[str, tiktoken.Encoding]) -> None:
    _, key = await create_project(gateway)
    fake_upstream.script({"chunk_delay_ms": 150, "reply_tokens": 40})
    body = chat_body(stream=True)
    resp = await gateway.post("/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {key}"})
    received = b""
    while received.count(b'"content":"w') < 3:  # three words, then hang up
        received += await resp.content.readuntil(b"\n\n")
    resp.close()
    [row] = await wait_for_rows(gateway, 1)
    assert row["status"] == 499
    assert row["input_source"] == "counted" and row["output_source"] == "counted"
    assert row["input_tokens"] == await _input_tokens(gateway, body, "gpt-4o-mini")
    enc = encodings["o200k_base"]
    # the gateway notices the hang-up at its next write: it sent 3 or 4 words by then
    assert row["output_tokens"] in {len(enc.encode_ordinary(words(n) + " ")) for n in (3, 4)}
    assert row["cost_usd"] > 0
    await asyncio.sleep(0.2)
    assert fake_upstream.state.received == 1


async def test_an_estimated_model_is_flagged(gateway: TestClient,
                                             fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    fake_upstream.script({"no_usage": True})
    resp = await gateway.post("/v1/chat/completions",
                              json=chat_body(model="openai/claude-sonnet-4-5", stream=True),
                              headers={"Authorization": f"Bearer {key}"})
    await resp.read()
    [row] = await wait_for_rows(gateway, 1)
    assert row["input_source"] == row["output_source"] == row["usage_source"] == "estimated"
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0


async def test_provider_usage_wins(gateway: TestClient) -> None:
    _, key = await create_project(gateway)
    resp = await gateway.post("/v1/chat/completions", json=chat_body(stream=True),
                              headers={"Authorization": f"Bearer {key}"})
    await resp.read()
    [row] = await wait_for_rows(gateway, 1)
    assert row["input_source"] == row["output_source"] == "provider"
