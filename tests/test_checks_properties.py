"""Property tests: every body parser and query reader either answers a value or raises a
GatewayError with a 4xx status, whatever JSON (or query string) it is handed (issue 12)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from gateway import alerts, checks, projects
from gateway.entries.anthropic import validate_messages
from gateway.entries.base import Limits
from gateway.entries.native import validate_native
from gateway.entries.openai_chat import validate_openai
from gateway.errors import GatewayError
from gateway.http import analytics, credentials, teams, track, webhooks
from gateway.http.access import Caller
from gateway.pipeline.validate import parse_json_object, parse_metadata_header

LIMITS = Limits(max_body_bytes=1_000_000, max_messages=100, max_content_chars=32_000)
PROVIDERS = frozenset({"openai", "anthropic"})
FAST = settings(derandomize=True, max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# What orjson can hand a parser: integers of 64 bits (signed or not), finite floats.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, 2**63]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
    st.sampled_from(["", "\x00", "user", "openai", "2025-01-01", "9999-12-31", "1e999999",
                     "NaN", "http://h", "json", "budget.alert", "monthly"]))
json_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                     st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)


def bodies(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Objects holding some of `fields` (each a likely value or any JSON), some other keys,
    and now and then not an object at all."""
    known = st.fixed_dictionaries({}, optional={name: st.one_of(likely, json_values)
                                                for name, likely in fields.items()})
    extra = st.dictionaries(st.text(max_size=8), json_values, max_size=2)
    return st.one_of(st.builds(lambda a, b: {**b, **a}, known, extra), json_values)


def message(roles: list[str]) -> st.SearchStrategy[Any]:
    content = st.one_of(st.text(max_size=20), json_values, st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image", "tool_use",
                                                        "tool_result", "x"])},
                              optional={"text": json_values, "source": json_values,
                                        "id": json_values, "name": json_values,
                                        "input": json_values, "tool_use_id": json_values,
                                        "content": json_values}), max_size=3))
    return st.fixed_dictionaries({"role": st.one_of(st.sampled_from(roles), json_values)},
                                 optional={"content": content, "tool_call_id": json_values,
                                           "tool_calls": json_values})


def messages(roles: list[str]) -> st.SearchStrategy[Any]:
    return st.lists(st.one_of(message(roles), json_values), max_size=3)


def holds(parse: Callable[[], Any]) -> None:
    """`parse()` answers, or refuses with a client error; any other outcome fails."""
    try:
        parse()
    except GatewayError as exc:
        assert exc.status < 500, exc.message


CHAT = {"model": st.sampled_from(["gpt-4o", ""]), "messages": messages(["user", "tool"]),
        "temperature": st.floats(-1, 3), "max_tokens": st.integers(-5, 2**40),
        "stream": st.booleans(), "stream_options": json_values, "stop": json_values,
        "metadata": st.dictionaries(st.text(max_size=70), json_values, max_size=18),
        "logit_bias": st.dictionaries(st.text(max_size=4), json_values, max_size=3),
        "seed": st.integers(-(2**64), 2**64), "n": st.integers(-1, 200)}


@FAST
@given(bodies(CHAT))
def test_validate_openai(body: Any) -> None:
    holds(lambda: validate_openai(body if isinstance(body, dict) else {"b": body}, LIMITS))


@FAST
@given(bodies({**CHAT, "provider": st.sampled_from(["openai", "nope"]),
               "maxOutputTokens": st.integers(-1, 2**40), "topP": st.floats(-1, 2)}))
def test_validate_native(body: Any) -> None:
    holds(lambda: validate_native(body if isinstance(body, dict) else {"b": body}, LIMITS,
                                  PROVIDERS))


@FAST
@given(bodies({"model": st.just("claude"), "max_tokens": st.integers(-1, 2**40),
               "messages": messages(["user", "assistant"]), "system": json_values,
               "tools": st.lists(st.fixed_dictionaries({}, optional={
                   "name": json_values, "type": json_values, "input_schema": json_values}),
                   max_size=2),
               "tool_choice": st.fixed_dictionaries({"type": st.sampled_from(
                   ["auto", "any", "tool", "none", "x"])}, optional={"name": json_values}),
               "metadata": json_values, "output_config": json_values,
               "stop_sequences": json_values, "top_k": st.integers(-1, 2**40)}))
def test_anthropic_messages_body(body: Any) -> None:
    holds(lambda: validate_messages(body if isinstance(body, dict) else {"b": body}, LIMITS))


PROJECT = {"name": st.text(max_size=210), "team": st.text(max_size=5),
           "plan": st.sampled_from(["free", "pro", "gold"]),
           "monthly_budget_usd": st.one_of(st.decimals(allow_nan=True).map(str), scalars),
           "allowed_models": st.lists(json_values, max_size=3),
           "requests_per_minute": st.integers(-1, 2**40), "metadata": json_values,
           "enabled": json_values}


@FAST
@given(bodies(PROJECT), st.booleans())
def test_project_fields(body: Any, partial: bool) -> None:
    holds(lambda: projects.parse_project_fields(body, partial=partial))
    holds(lambda: teams.parse_team_fields(body, partial=partial))


@FAST
@given(bodies({"provider": st.text(max_size=5), "model": st.text(max_size=5),
               "input_tokens": st.integers(-1, 2**40), "output_tokens": st.integers(-1, 2**40),
               "cachedTokens": st.integers(-1, 2**40), "cost": st.decimals().map(str),
               "project_id": st.integers(-1, 2**64), "metadata": json_values,
               "flush": json_values}))
def test_track_body(body: Any) -> None:
    holds(lambda: track.parse_track(body))


@FAST
@given(bodies({"url": st.sampled_from(["http://h/x", "ftp://h", "http://", "http://h/\x00"]),
               "events": st.lists(st.sampled_from(["budget.alert", "x"]), max_size=3),
               "format": st.sampled_from(["json", "slack", "x"]),
               "project_id": st.integers(-1, 2**64), "secret": st.text(max_size=300),
               "description": st.text(max_size=600)}), st.booleans())
def test_webhook_body(body: Any, partial: bool) -> None:
    holds(lambda: webhooks.parse_webhook_body(body, partial=partial))


@FAST
@given(bodies({"limit": st.one_of(st.decimals().map(str), scalars),
               "alert_at": st.lists(st.one_of(st.floats(), scalars), max_size=22),
               "notify": st.lists(st.sampled_from(["webhook", "email", "x"]), max_size=3),
               "period": st.sampled_from(["monthly", "weekly"]), "name": st.text(max_size=5),
               "project_id": st.integers(-1, 2**64)}))
def test_budget_body(body: Any) -> None:
    holds(lambda: webhooks._budget_fields(body if isinstance(body, dict) else {"b": body}))
    holds(lambda: alerts.parse_thresholds(body.get("alert_at") if isinstance(body, dict)
                                          else body))


@FAST
@given(bodies({"api_key": st.text(max_size=20), "name": st.text(max_size=70),
               "base_url": st.sampled_from(["http://h", "x", "http://h/\x00"]),
               "weight": st.integers(-1, 2**40),
               "options": st.dictionaries(st.text(max_size=5), json_values, max_size=3)}),
       st.sampled_from(["openai", "nope", "\x00"]))
def test_credential_body(body: Any, provider: str) -> None:
    holds(lambda: credentials.parse_credential_body(body, provider, {"openai": object()}))


@FAST
@given(st.one_of(st.binary(max_size=60), json_values.map(lambda v: repr(v).encode())),
       st.text(max_size=60))
def test_raw_json_and_the_metadata_header(raw: bytes, header: str) -> None:
    holds(lambda: parse_json_object(raw, 1000))
    holds(lambda: parse_metadata_header(header))


QUERY_VALUES = st.one_of(
    st.text(max_size=25),
    st.sampled_from(["1", "0", str(2**63), "²", "1" * 5000, "2025-01-01", "9999-12-31",
                     "0001-01-01T00:00+05:00", "2025-01-01T00:00:00 02:00", "day", "hour",
                     "metadata.feature", "cost", "a\x00"]))
QUERY_NAMES = st.sampled_from([*analytics.USAGE_PARAMS, *analytics.TIMESERIES_PARAMS, "hours",
                               *analytics.ALIASES, "colour"])


@FAST
@given(st.lists(st.tuples(QUERY_NAMES, QUERY_VALUES), max_size=5),
       st.sampled_from([analytics.USAGE_PARAMS, analytics.TIMESERIES_PARAMS,
                        analytics.BURN_RATE_PARAMS, analytics.COSTS_PARAMS]))
def test_analytics_query_readers(pairs: list[tuple[str, str]],
                                 accepted: tuple[str, ...]) -> None:
    def read() -> None:
        query = checks.read_query(MultiDict(pairs), accepted, analytics.ALIASES)
        analytics.scope_of(Caller(), query)
        analytics.read_range(query, datetime.now(UTC))
        checks.choice(query, "metric", analytics.METRICS, "cost")
        checks.whole_param(query, "hours", 1, analytics.MAX_BURN_HOURS, 24)
        analytics._group_by(query.get("group_by", "provider"))

    holds(read)


@pytest.mark.parametrize("value", ["9223372036854775807", "1"])
def test_the_largest_id_is_an_id(value: str) -> None:
    assert checks.id_param({"id": value}, "id") == int(value)
    assert checks.path_id(value, "id") == int(value)
