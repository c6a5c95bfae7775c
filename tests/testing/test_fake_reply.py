"""The deterministic reply every fake provider route gives."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.testing.fake_reply import (
    LENGTH,
    STOP,
    STOP_SEQUENCE,
    asks_for_tool,
    json_token_pieces,
    plan_reply,
    tool_arguments,
)
from tests.testing.fake_wire import toks


@pytest.mark.parametrize(
    ("behaviour", "limit", "stops", "words", "finish", "stop"),
    [
        ({}, None, (), [f"w{i}" for i in range(1, 13)], STOP, None),
        ({"reply_tokens": 3}, 3, (), ["w1", "w2", "w3"], STOP, None),
        ({"reply_tokens": 3}, 2, (), ["w1", "w2"], LENGTH, None),
        ({"reply": "a  b c"}, None, ("c",), ["a", "b"], STOP_SEQUENCE, "c"),
        ({}, 5, ("w3", "w9"), ["w1", "w2"], STOP_SEQUENCE, "w3"),
        ({}, 2, ("w3",), ["w1", "w2"], LENGTH, None),  # the limit comes first
        ({}, None, ("w1 w2", "w"), [f"w{i}" for i in range(1, 13)], STOP, None),  # whole words
        ({"reply_tokens": 0}, 4, (), [], STOP, None),
    ],
)
def test_plan_reply(
    behaviour: dict[str, Any],
    limit: int | None,
    stops: tuple[str, ...],
    words: list[str],
    finish: str,
    stop: str | None,
) -> None:
    reply = plan_reply(behaviour, 12, limit, stops)
    assert (reply.words, reply.finish, reply.stop_sequence) == (words, finish, stop)
    assert "".join(reply.pieces()) == reply.text == " ".join(words)


def test_pieces_put_a_space_after_all_but_the_last_word() -> None:
    assert plan_reply({"reply_tokens": 3}, 12).pieces() == ["w1 ", "w2 ", "w3"]


def test_tool_arguments_follow_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "INTEGER"},
            "metric": {"type": "boolean"},
            "tags": {"type": "array"},
            "where": {"anyOf": []},
        },
    }
    assert tool_arguments(schema) == {
        "city": "fake",
        "days": 1,
        "metric": True,
        "tags": [],
        "where": None,
    }
    assert tool_arguments(None) == {} == tool_arguments({"type": "object"})


def test_json_token_pieces() -> None:
    pieces = json_token_pieces({"city": "fake"})
    assert "".join(pieces) == '{"city":"fake"}'
    assert len(pieces) == toks('{"city":"fake"}') > 1


def test_tool_trigger() -> None:
    assert asks_for_tool("Please USE TOOL now")
    assert not asks_for_tool("use the tool")
