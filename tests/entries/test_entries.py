"""The entry seam: every entry fits the protocol, and errors take the shape of their path."""

from __future__ import annotations

import orjson
import pytest

from gateway.entries import ENTRIES, error_shape
from gateway.entries.anthropic import ANTHROPIC_MESSAGES
from gateway.entries.base import Entry, Limits
from gateway.entries.native import NATIVE_CHAT
from gateway.entries.openai_chat import OPENAI_CHAT
from gateway.entries.openai_embeddings import OPENAI_EMBEDDINGS
from gateway.entries.openai_responses import OPENAI_RESPONSES
from gateway.errors import BadRequest

LIMITS = Limits(max_body_bytes=1_000_000, max_messages=8, max_content_chars=200)


def test_each_entry_has_its_own_path_and_name() -> None:
    entries: tuple[Entry, ...] = ENTRIES  # mypy: each fits the protocol
    assert sorted(e.path for e in entries) == ["/api/proxy/chat", "/v1/chat/completions",
                                               "/v1/completions", "/v1/embeddings",
                                               "/v1/messages", "/v1/moderations",
                                               "/v1/responses"]
    assert len({e.name for e in entries}) == len(entries)


# The entries that take no messages: legacy completions' prompt, moderations' input.
_NO_MESSAGES = {"completions": {"prompt": "Hi"}, "moderations": {"input": "Hi"}}


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_parse_records_the_entry_and_its_wire(entry: Entry) -> None:
    message = {"role": "user", "content": "Hi"}
    body = ({"model": "m", "messages": [message], "provider": "openai"} if entry is NATIVE_CHAT
            else {"model": "m", "messages": [message], "max_tokens": 5})
    if entry is OPENAI_EMBEDDINGS:
        body = {"model": "m", "input": "Hi"}
    elif entry is OPENAI_RESPONSES:
        body = {**body, "input": "Hi"}
    body = {**body, **_NO_MESSAGES.get(entry.name, {})}
    chat = entry.parse(body, LIMITS, frozenset({"openai"}))
    assert (chat.entry, chat.entry_wire) == (entry.name, entry.wire)
    with pytest.raises(BadRequest):
        entry.parse({"model": ""}, LIMITS, frozenset({"openai"}))


@pytest.mark.parametrize(("path", "shape"), [
    ("/v1/messages", "anthropic"), ("/v1/messages/count_tokens", "anthropic"),
    ("/v1/chat/completions", "openai"), ("/v1/unknown", "openai"),
    ("/api/proxy/chat", "gateway"), ("/api/admin/projects", "gateway"), ("/", "gateway")])
def test_error_shape_follows_the_path(path: str, shape: str) -> None:
    body = orjson.loads(error_shape(path).body("rid", 400, "invalid_request", "bad",
                                               "invalid_request_error", {"field": "model"}))
    if shape == "anthropic":
        assert body == {"type": "error", "error": {"type": "invalid_request_error",
                                                   "message": "bad"}}
    elif shape == "openai":
        assert body == {"error": {"message": "bad", "type": "invalid_request_error",
                                  "code": "invalid_request", "param": "model"}}
    else:
        assert body == {"error": "bad", "code": "invalid_request", "requestId": "rid",
                        "details": {"field": "model"}}


def test_stream_error_events() -> None:
    assert ANTHROPIC_MESSAGES.error_event(429, "rate_limit_exceeded", "slow down",
                                          "rate_limit_error").startswith(b"event: error\n")
    for entry in (OPENAI_CHAT, NATIVE_CHAT):
        event = entry.error_event(502, "bad_gateway", "oops", "api_error")
        assert orjson.loads(event.removeprefix(b"data: ")) == {
            "error": {"message": "oops", "type": "api_error", "code": "bad_gateway"}}
