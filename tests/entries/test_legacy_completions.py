"""`POST /v1/completions` and `POST /v1/moderations` through the whole pipeline: the real
`openai` SDK's answers, the usage the fake billed = the ledger row, the cost = the header =
the price arithmetic, and the endpoint recorded."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient
from conftest import FakeUpstream, GatewayFactory, create_project, wait_for_rows

from gateway.testing.fake_openai_legacy import count_prompt_tokens

MODEL = "gpt-3.5-turbo-instruct"
PROMPT = "Say this is a test"
BILLED_PROMPT = count_prompt_tokens({"model": MODEL, "prompt": PROMPT})


def cost(prompt: int, completion: int) -> Decimal:  # gpt-3.5-turbo-instruct list price
    return (prompt * Decimal("1.50") + completion * Decimal("2.00")) / 10**6


def sdk(gateway: TestClient, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key=key, max_retries=0)


def parse_sse(raw: bytes) -> tuple[list[Any], Decimal | None]:
    events, header_cost = [], None
    for block in raw.decode().split("\n\n"):
        if block.startswith(": x-ai-cost-gateway-cost "):
            header_cost = Decimal(block.split()[-1])
        elif block.startswith("data: ") and block != "data: [DONE]":
            events.append(orjson.loads(block[6:]))
    return events, header_cost


async def test_the_sdk_completion_is_relayed_metered_and_priced(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    project, key = await create_project(gateway)
    raw = await sdk(gateway, key).completions.with_raw_response.create(
        model=MODEL, prompt=PROMPT, max_tokens=5, echo=True, logprobs=1, suffix="!")
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.choices[0].text == PROMPT + "w1 w2 w3 w4 w5"
    assert completion.choices[0].logprobs is not None
    billed = count_prompt_tokens({"model": MODEL, "prompt": PROMPT, "suffix": "!"})
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (billed, 5)
    assert Decimal(raw.headers["x-ai-cost-gateway-cost"]) == cost(billed, 5)
    sent = fake_upstream.state.log[-1]
    assert sent["path"] == "/v1/completions"
    assert {k: sent["body"][k] for k in ("echo", "logprobs", "suffix")} == {
        "echo": True, "logprobs": 1, "suffix": "!"}
    [row] = await wait_for_rows(gateway, 1)
    assert (row["project_id"], row["endpoint"], row["provider"], row["model"]) == (
        project["id"], "/v1/completions", "openai", MODEL)
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (
        billed, 5, cost(billed, 5))


@pytest.mark.parametrize("include_usage", [False, True])
async def test_the_sdk_stream_is_metered_from_its_usage_chunk(
        gateway: TestClient, fake_upstream: FakeUpstream, include_usage: bool) -> None:
    _, key = await create_project(gateway)
    options: dict[str, Any] = (
        {"stream_options": {"include_usage": True}} if include_usage else {})
    stream = await sdk(gateway, key).completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=4, stream=True, **options)
    text, usages = "", []
    async for chunk in stream:
        text += "".join(c.text for c in chunk.choices)
        if chunk.usage is not None:
            usages.append((chunk.usage.prompt_tokens, chunk.usage.completion_tokens))
    assert text == "w1 w2 w3 w4"
    assert usages == ([(BILLED_PROMPT, 4)] if include_usage else [])
    # The gateway asked for usage itself, whatever the client asked.
    assert fake_upstream.state.log[-1]["body"]["stream_options"] == {"include_usage": True}
    [row] = await wait_for_rows(gateway, 1)
    assert (row["endpoint"], row["streamed"], row["input_tokens"], row["output_tokens"]) == (
        "/v1/completions", True, BILLED_PROMPT, 4)
    assert row["cost_usd"] == cost(BILLED_PROMPT, 4)


async def test_a_stream_without_usage_is_counted_and_ends_with_the_cost_line(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    fake_upstream.script({"no_usage": True})
    resp = await gateway.post("/v1/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": MODEL, "prompt": PROMPT, "max_tokens": 3,
                                    "stream": True})
    assert resp.status == 200
    events, streamed_cost = parse_sse(await resp.read())
    assert "".join(c["text"] for e in events for c in e["choices"]) == "w1 w2 w3"
    [row] = await wait_for_rows(gateway, 1)
    # cl100k counts: the prompt exactly as billed; "w1 w2 w3" is 6 tokens of cl100k text.
    assert row["input_tokens"] == BILLED_PROMPT
    assert row["output_tokens"] > 0 and row["usage_source"] != "provider"
    assert streamed_cost == row["cost_usd"] == cost(row["input_tokens"], row["output_tokens"])


async def test_many_prompts_and_choices_are_billed_and_reserved_for_all(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    gateway = await make_gateway()
    _, key = await create_project(gateway, monthly_budget_usd="1.00")
    completion = await sdk(gateway, key).completions.create(
        model="davinci-002", prompt=["one", "two"], n=2, max_tokens=3)
    assert len(completion.choices) == 4
    assert completion.usage is not None and completion.usage.completion_tokens == 12
    [row] = await wait_for_rows(gateway, 1)
    assert row["output_tokens"] == 12
    assert row["cost_usd"] == (row["input_tokens"] + 12) * Decimal("2.00") / 10**6


async def test_an_openai_compatible_server_serves_completions(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    gateway = await make_gateway(providers={"vllm": {
        "kind": "openai_compatible", "base_url": fake_upstream.url}})
    _, key = await create_project(gateway)
    completion = await sdk(gateway, key).completions.create(
        model="vllm/meta-llama/Llama-3-8B", prompt=PROMPT, max_tokens=2)
    assert completion.choices[0].text == "w1 w2"
    assert fake_upstream.state.log[-1]["body"]["model"] == "meta-llama/Llama-3-8B"
    [row] = await wait_for_rows(gateway, 1)
    assert (row["provider"], row["endpoint"], row["output_tokens"]) == (
        "vllm", "/v1/completions", 2)


async def test_a_model_of_another_wire_is_a_400_naming_the_providers(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(gateway, key).completions.create(model="claude-sonnet-4-5", prompt="hi")
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "unsupported_provider"
    assert "openai, openai_compatible" in error["message"]
    assert "/v1/completions" in error["message"]
    assert fake_upstream.state.log == type(fake_upstream.state.log)()  # nothing forwarded


async def test_without_a_key_completions_answer_401(gateway: TestClient) -> None:
    resp = await gateway.post("/v1/completions", json={"model": MODEL, "prompt": "hi"})
    assert resp.status == 401
    assert (await resp.json())["error"]["type"]


async def test_over_budget_completions_answer_402(gateway: TestClient,
                                                  fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway, monthly_budget_usd="0.000001")
    resp = await gateway.post("/v1/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": MODEL, "prompt": PROMPT, "max_tokens": 100})
    assert resp.status == 402, await resp.text()
    assert (await resp.json())["error"]["code"] == "budget_exceeded"
    assert not fake_upstream.state.log
    [row] = await wait_for_rows(gateway, 1)
    assert (row["status"], row["endpoint"], row["cost_usd"]) == (402, "/v1/completions", 0)


async def test_a_bad_prompt_is_a_400_naming_it(gateway: TestClient) -> None:
    _, key = await create_project(gateway)
    resp = await gateway.post("/v1/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": MODEL, "prompt": [{"x": 1}], "logprobs": 9})
    assert resp.status == 400
    message = (await resp.json())["error"]["message"]
    assert "prompt[0]" in message and "logprobs" in message


async def test_the_sdk_moderation_is_free_and_leaves_one_row(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    project, key = await create_project(gateway, monthly_budget_usd="0.000001")
    raw = await sdk(gateway, key).moderations.with_raw_response.create(
        input=["I like cake", "and tea"])
    moderation = raw.parse()
    assert moderation.model == "omni-moderation-latest"
    assert [r.flagged for r in moderation.results] == [False, False]
    assert raw.headers["x-ai-cost-gateway-cost"] == "0"
    assert fake_upstream.state.log[-1]["path"] == "/v1/moderations"
    [row] = await wait_for_rows(gateway, 1)
    assert (row["project_id"], row["endpoint"], row["status"], row["cost_usd"]) == (
        project["id"], "/v1/moderations", 200, 0)
    assert row["input_tokens"] > 0 and not row["priced_by_fallback"]


async def test_moderations_are_for_openai_only(gateway: TestClient) -> None:
    _, key = await create_project(gateway)
    resp = await gateway.post("/v1/moderations", headers={"Authorization": f"Bearer {key}"},
                              json={"model": "mistral-small-latest", "input": "hi"})
    assert resp.status == 400
    assert "served by openai providers only" in (await resp.json())["error"]["message"]


async def test_another_v1_path_is_a_404_naming_the_endpoints(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    resp = await gateway.post("/v1/images/generations",
                              headers={"Authorization": f"Bearer {key}"}, json={"prompt": "x"})
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == "not_found"
    for endpoint in ("POST /v1/chat/completions", "POST /v1/completions",
                     "POST /v1/moderations", "POST /v1/messages", "GET /v1/models"):
        assert endpoint in error["message"]
    assert not fake_upstream.state.log


async def test_the_clamp_policy_lowers_max_tokens_only_where_it_bounds_the_answer(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream) -> None:
    gateway = await make_gateway(budgets={"policy": "clamp", "clamp_min_output_tokens": 5})
    budget = cost(BILLED_PROMPT, 100)  # only 100 output tokens fit
    _, key = await create_project(gateway, monthly_budget_usd=str(budget))
    fake_upstream.script({"reply_tokens": 2000})
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 1000}
    resp = await gateway.post("/v1/completions", json=body,
                              headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-AI-Cost-Gateway-Max-Tokens-Clamped"] == "100"
    assert fake_upstream.state.log[-1]["body"]["max_tokens"] == 100
    assert (await resp.json())["usage"]["completion_tokens"] == 100
    # With two choices max_tokens holds for each: no single limit fits, so 402.
    _, key = await create_project(gateway, monthly_budget_usd=str(budget))
    resp = await gateway.post("/v1/completions", json={**body, "n": 2},
                              headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 402


async def test_tokens_per_minute_reserve_the_prompt_and_the_default_max_tokens(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    # One call's worst case: the prompt as billed plus the API's default max_tokens (16).
    _, key = await create_project(gateway, tokens_per_minute=BILLED_PROMPT + 16 - 1)
    resp = await gateway.post("/v1/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": MODEL, "prompt": PROMPT})
    assert resp.status == 429
    assert not fake_upstream.state.log
    _, key = await create_project(gateway, tokens_per_minute=BILLED_PROMPT + 16)
    resp = await gateway.post("/v1/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": MODEL, "prompt": PROMPT})
    assert resp.status == 200, await resp.text()


async def test_a_reused_request_id_is_a_409(gateway: TestClient,
                                           fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    headers = {"Authorization": f"Bearer {key}", "X-Request-Id": "legacy-once"}
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2}
    assert (await gateway.post("/v1/completions", headers=headers, json=body)).status == 200
    resp = await gateway.post("/v1/completions", headers=headers, json=body)
    assert resp.status == 409
    assert len(fake_upstream.state.log) == 1
