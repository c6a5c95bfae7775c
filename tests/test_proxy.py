"""The proxy end to end on real PostgreSQL and the fake upstream: statuses, headers, rows."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import orjson
import pytest
from aiohttp.test_utils import TestClient
from conftest import (
    FakeUpstream,
    GatewayFactory,
    admin_headers,
    chat_body,
    create_project,
    wait_for_rows,
)

from gateway.keys import PRICES
from gateway.testing.fake_upstream import count_prompt_tokens

COST = "X-AI-Cost-Gateway-Cost"
REQUEST_ID = "X-AI-Cost-Gateway-Request-Id"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def parse_sse(text: str) -> tuple[list[dict], list[str], bool]:
    """(data events, comment lines, saw [DONE])."""
    events, comments, done = [], [], False
    for block in text.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith(":"):
                comments.append(line)
            elif line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                events.append(orjson.loads(line[6:]))
    return events, comments, done


async def test_completion_is_relayed_priced_and_recorded(gateway: TestClient) -> None:
    project, key = await create_project(gateway)
    body = chat_body(max_tokens=5)
    resp = await gateway.post("/v1/chat/completions", json=body, headers=bearer(key))
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    assert data["object"] == "chat.completion"
    prompt = count_prompt_tokens(body["messages"])
    assert data["usage"]["prompt_tokens"] == prompt
    assert data["usage"]["completion_tokens"] == 5
    expected = Decimal(prompt) * Decimal("0.15") / 10**6 + 5 * Decimal("0.60") / 10**6
    assert Decimal(resp.headers[COST]) == expected
    request_id = uuid.UUID(resp.headers[REQUEST_ID])

    [row] = await wait_for_rows(gateway, 1)
    assert row["request_id"] == request_id
    assert row["project_id"] == project["id"]
    assert (row["provider"], row["model"], row["endpoint"]) == (
        "openai", "gpt-4o-mini", "/v1/chat/completions")
    assert (row["status"], row["streamed"], row["usage_source"]) == (200, False, "provider")
    assert (row["input_tokens"], row["cached_input_tokens"], row["output_tokens"]) == (
        prompt, 0, 5)
    assert row["cost_usd"] == expected
    assert row["priced_by_fallback"] is False and row["price_model"] == "gpt-4o-mini"
    assert row["upstream_ms"] > 0 and row["overhead_ms"] >= 0
    assert row["finished_at"] >= row["started_at"]


async def test_cached_tokens_are_priced_at_the_cached_rate(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    fake_upstream.script({"cached_tokens": 4, "reply_tokens": 2})
    resp = await gateway.post("/v1/chat/completions", json=chat_body(), headers=bearer(key))
    assert resp.status == 200
    prompt = count_prompt_tokens(chat_body()["messages"])
    price = gateway.app[PRICES].get("gpt-4o-mini")
    assert price is not None
    expected = ((prompt - 4) * price.input + 4 * price.cached_input + 2 * price.output) / 10**6
    assert Decimal(resp.headers[COST]) == expected
    [row] = await wait_for_rows(gateway, 1)
    assert row["cached_input_tokens"] == 4 and row["cost_usd"] == expected


async def test_unknown_model_is_priced_by_fallback_and_flagged(gateway: TestClient) -> None:
    _, key = await create_project(gateway)
    resp = await gateway.post("/v1/chat/completions", json=chat_body(model="gpt-unreleased-9"),
                              headers=bearer(key))
    assert resp.status == 200
    assert Decimal(resp.headers[COST]) > 0
    [row] = await wait_for_rows(gateway, 1)
    assert row["priced_by_fallback"] is True
    assert row["cost_usd"] > 0 and row["price_model"]


async def test_native_endpoint_translates_and_records_metadata(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    body = {"provider": "openai", "model": "gpt-4o-mini", "maxOutputTokens": 3,
            "temperature": 0.2, "topP": 0.9, "stop": ["\n"],
            "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"feature": "search", "userId": "u1"}}
    resp = await gateway.post("/api/proxy/chat", json=body, headers={
        **bearer(key), "X-AI-Cost-Gateway-Metadata": '{"tenantId": "t9"}'})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["usage"]["completion_tokens"] == 3
    sent = fake_upstream.state.log[-1]["body"]
    assert sent == {"model": "gpt-4o-mini", "messages": body["messages"],
                    "max_completion_tokens": 3, "temperature": 0.2, "top_p": 0.9,
                    "stop": ["\n"]}
    [row] = await wait_for_rows(gateway, 1)
    assert row["endpoint"] == "/api/proxy/chat"
    assert row["metadata"] == {"feature": "search", "userId": "u1", "tenantId": "t9"}


async def test_unknown_openai_fields_pass_through(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = chat_body(tools=tools, tool_choice="auto", response_format={"type": "json_object"},
                     some_future_field={"x": 1})
    body["messages"].append({"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]})
    resp = await gateway.post("/v1/chat/completions", json=body, headers=bearer(key))
    assert resp.status == 200, await resp.text()
    assert fake_upstream.state.log[-1]["body"] == body


# -- streaming --------------------------------------------------------------------------------

@pytest.mark.parametrize("client_wants_usage", [False, True])
async def test_stream_passes_through_and_meters(
        gateway: TestClient, fake_upstream: FakeUpstream, client_wants_usage: bool) -> None:
    _, key = await create_project(gateway)
    body = chat_body(stream=True, max_tokens=4)
    if client_wants_usage:
        body["stream_options"] = {"include_usage": True}
    resp = await gateway.post("/v1/chat/completions", json=body, headers=bearer(key))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert REQUEST_ID in resp.headers
    events, comments, done = parse_sse(await resp.text())
    assert done
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "w1 w2 w3 w4"
    usage_events = [e for e in events if e.get("usage")]
    assert len(usage_events) == (1 if client_wants_usage else 0)
    # the gateway always asked the upstream for usage
    assert fake_upstream.state.log[-1]["body"]["stream_options"] == {"include_usage": True}
    prompt = count_prompt_tokens(body["messages"])
    expected = (prompt * Decimal("0.15") + 4 * Decimal("0.60")) / 10**6
    assert comments == [f": x-ai-cost-gateway-cost {expected.normalize():f}"]
    [row] = await wait_for_rows(gateway, 1)
    assert row["streamed"] is True and row["status"] == 200
    assert (row["input_tokens"], row["output_tokens"]) == (prompt, 4)
    assert row["cost_usd"] == expected


async def test_stream_chunks_arrive_before_the_stream_ends(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    fake_upstream.script({"chunk_delay_ms": 150, "reply_tokens": 4})
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await gateway.post("/v1/chat/completions", json=chat_body(stream=True),
                              headers=bearer(key))
    first = await resp.content.readuntil(b"\n\n")
    first_at = loop.time() - started
    rest = await resp.content.read()
    total = loop.time() - started
    assert first.startswith(b"data: ")
    assert rest.endswith(b"data: [DONE]\n\n")
    # not buffered whole: the first event came well before the last (4 x 150 ms apart)
    assert total - first_at > 0.4


async def test_client_disconnect_cancels_upstream_and_still_records(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    fake_upstream.script({"chunk_delay_ms": 200, "reply_tokens": 50})
    resp = await gateway.post("/v1/chat/completions", json=chat_body(stream=True),
                              headers=bearer(key))
    await resp.content.readuntil(b"\n\n")
    resp.close()  # the client goes away mid-stream
    [row] = await wait_for_rows(gateway, 1)
    assert row["status"] == 499 and row["error_code"] == "client_closed"
    assert row["streamed"] is True
    # the upstream connection was closed too: the fake stops being asked for more
    await asyncio.sleep(0.3)
    assert fake_upstream.state.received == 1


# -- errors -----------------------------------------------------------------------------------

async def test_missing_unknown_and_revoked_keys_are_401(gateway: TestClient) -> None:
    project, key = await create_project(gateway)
    cases = {
        "missing": {},
        "malformed": bearer("sk-not-ours"),
        "unknown": bearer("gw_aaaaaaaaaa_" + "x" * 32),
        "wrong secret": bearer(key[:-4] + "zzzz"),
        "basic auth": {"Authorization": "Basic Zm9vOmJhcg=="},
    }
    for name, headers in cases.items():
        resp = await gateway.post("/v1/chat/completions", json=chat_body(), headers=headers)
        assert resp.status == 401, name
        error = (await resp.json())["error"]
        assert error["type"] == "authentication_error" and error["message"], name

    keys = await (await gateway.get(f"/api/admin/projects/{project['id']}/keys",
                                    headers=admin_headers())).json()
    await gateway.delete(f"/api/admin/keys/{keys['keys'][0]['id']}", headers=admin_headers())
    resp = await gateway.post("/v1/chat/completions", json=chat_body(), headers=bearer(key))
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "revoked_api_key"


async def test_authorization_failures_are_403(gateway: TestClient) -> None:
    _, key = await create_project(gateway, allowed_models=["gpt-4o*"],
                                  allowed_providers=["openai"])
    resp = await gateway.post("/v1/chat/completions", json=chat_body(model="o3"),
                              headers=bearer(key))
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "model_not_allowed"
    resp = await gateway.post("/v1/chat/completions", json=chat_body(model="gpt-4o"),
                              headers=bearer(key))
    assert resp.status == 200

    _, key = await create_project(gateway, enabled=False)
    resp = await gateway.post("/api/proxy/chat", headers=bearer(key), json={
        "provider": "openai", "model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    assert resp.status == 403
    data = await resp.json()
    assert data["code"] == "project_disabled" and "disabled" in data["error"]
    assert data["requestId"] == resp.headers[REQUEST_ID]


async def test_provider_outside_allow_list_is_403(gateway: TestClient) -> None:
    _, key = await create_project(gateway, allowed_providers=["anthropic"])
    resp = await gateway.post("/v1/chat/completions", json=chat_body(), headers=bearer(key))
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "provider_not_allowed"


@pytest.mark.parametrize(("body", "status", "needle"), [
    (b"{not json", 400, "not valid JSON"),
    (b'{"model": 5, "messages": []}', 400, "model"),
    (b'{"model": "gpt-4o", "messages": "hi"}', 400, "messages"),
    (orjson.dumps(chat_body(temperature="hot")), 400, "temperature"),
    (orjson.dumps({"model": "gpt-4o",
                   "messages": [{"role": "user", "content": "x"}] * 101}), 400, "100"),
    (orjson.dumps({"model": "gpt-4o",
                   "messages": [{"role": "user", "content": "x" * 32_001}]}), 400, "32000"),
    (orjson.dumps({"model": "gpt-4o",
                   "messages": [{"role": "user", "content": "x" * 1_100_000}]}), 413, "limit"),
])
async def test_bad_bodies(gateway: TestClient, fake_upstream: FakeUpstream, body: bytes,
                          status: int, needle: str) -> None:
    _, key = await create_project(gateway)
    resp = await gateway.post("/v1/chat/completions", data=body,
                              headers={**bearer(key), "Content-Type": "application/json"})
    assert resp.status == status
    error = (await resp.json())["error"]
    assert needle in error["message"]
    assert error["type"] == "invalid_request_error"
    assert fake_upstream.state.received == 0
    [row] = await wait_for_rows(gateway, 1)  # rejected requests of a known project are rows too
    assert row["status"] == status and row["cost_usd"] == 0


async def test_bad_native_body_lists_every_problem(gateway: TestClient) -> None:
    _, key = await create_project(gateway)
    resp = await gateway.post("/api/proxy/chat", headers=bearer(key), json={
        "provider": "openai", "model": "gpt-4o", "maxOutputTokens": 0, "topP": 3,
        "messages": [{"role": "user", "content": ""}], "max_tokens": 5})
    assert resp.status == 400
    data = await resp.json()
    fields = {e["field"] for e in data["details"]["errors"]}
    assert fields == {"max_tokens", "maxOutputTokens", "topP", "messages[0].content"}


async def test_upstream_down_is_502(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(providers={"openai": {"base_url": "http://127.0.0.1:9/v1",
                                                      "connect_timeout_s": 1}})
    _, key = await create_project(client)
    resp = await client.post("/v1/chat/completions", json=chat_body(), headers=bearer(key))
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error["code"] == "upstream_unreachable" and "unreachable" in error["message"]
    [row] = await wait_for_rows(client, 1)
    assert row["status"] == 502 and row["usage_source"] == "none"


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_timeout_is_504(make_gateway: GatewayFactory,
                                       fake_upstream: FakeUpstream, stream: bool) -> None:
    client = await make_gateway(providers={"openai": {"first_byte_timeout_s": 0.3}})
    _, key = await create_project(client)
    fake_upstream.script({"hang": True})
    resp = await client.post("/v1/chat/completions", json=chat_body(stream=stream),
                             headers=bearer(key))
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize(("behaviour", "stream"), [
    ({"body": "garbage"}, False), ({"body": "truncated"}, False), ({"body": "empty"}, False),
    ({"stream_garbage": True}, True),
])
async def test_upstream_garbage_is_502(gateway: TestClient, fake_upstream: FakeUpstream,
                                       behaviour: dict, stream: bool) -> None:
    _, key = await create_project(gateway)
    fake_upstream.script(behaviour)
    resp = await gateway.post("/v1/chat/completions", json=chat_body(stream=stream),
                              headers=bearer(key))
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "upstream_invalid_response"


async def test_stream_cut_mid_way_ends_with_an_error_event(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    fake_upstream.script({"stream_cut_after": 2, "reply_tokens": 6})
    resp = await gateway.post("/v1/chat/completions", json=chat_body(stream=True),
                              headers=bearer(key))
    assert resp.status == 200  # headers were already sent
    events, _, done = parse_sse(await resp.text())
    assert not done
    assert events[-1]["error"]["code"] == "upstream_connection_error"
    [row] = await wait_for_rows(gateway, 1)
    assert row["status"] == 502


@pytest.mark.parametrize(("status", "kind"), [(429, "rate_limit_error"), (500, "server_error"),
                                              (400, "invalid_request_error")])
async def test_upstream_error_status_is_relayed_in_openai_shape(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream, status: int,
        kind: str) -> None:
    gateway = await make_gateway(providers={"openai": {"max_retries": 0}})  # no retry: relay
    _, key = await create_project(gateway)
    fake_upstream.script({"status": status, "retry_after": 7})
    resp = await gateway.post("/v1/chat/completions", json=chat_body(), headers=bearer(key))
    assert resp.status == status
    error = (await resp.json())["error"]
    assert error["type"] == kind and error["code"] == "upstream_error"
    assert f"openai upstream error {status}" in error["message"]
    assert resp.headers["Retry-After"] == "7"
    assert REQUEST_ID in resp.headers and COST not in resp.headers
    [row] = await wait_for_rows(gateway, 1)
    assert row["status"] == status and row["error_code"] == "upstream_error"


async def test_upstream_error_on_native_route_uses_gateway_shape(
        gateway: TestClient, fake_upstream: FakeUpstream) -> None:
    _, key = await create_project(gateway)
    fake_upstream.script({"status": 503}, {"status": 503}, {"status": 503})  # every retry
    resp = await gateway.post("/api/proxy/chat", headers=bearer(key), json={
        "provider": "openai", "model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    assert resp.status == 503
    data = await resp.json()
    assert data["details"]["upstream_status"] == 503
    assert "after 3 attempts" in data["error"]
    assert [a["status"] for a in data["details"]["attempts"]] == [503, 503, 503]
    assert data["requestId"] == resp.headers[REQUEST_ID]


async def test_unknown_route_is_404_in_the_right_shape(gateway: TestClient) -> None:
    resp = await gateway.get("/v1/nothing")
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "not_found_error"
    resp = await gateway.get("/api/nothing")
    assert resp.status == 404 and (await resp.json())["code"] == "not_found"
