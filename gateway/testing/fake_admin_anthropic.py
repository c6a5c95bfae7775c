"""Anthropic's Admin API usage and cost reports, as the fake admin server answers them.

Shapes follow Anthropic's Admin API reference (Usage and Cost API):
https://docs.anthropic.com/en/api/usage-cost-api,
https://platform.claude.com/docs/en/api/admin-api/usage-cost/get-messages-usage-report and
https://platform.claude.com/docs/en/api/admin-api/usage-cost/get-cost-report

* ``GET /v1/organizations/usage_report/messages`` with ``starting_at`` and ``ending_at``
  (RFC 3339), ``bucket_width=1d``, ``group_by[]`` (``model``), ``limit`` (1 to 31 daily
  buckets) and ``page``; answers ``{"data": [{"starting_at", "ending_at", "results":
  [...]}], "has_more", "next_page"}``, each result ``{"uncached_input_tokens",
  "cache_creation": {"ephemeral_1h_input_tokens", "ephemeral_5m_input_tokens"},
  "cache_read_input_tokens", "output_tokens", "server_tool_use": {"web_search_requests"},
  "model", "api_key_id", "workspace_id", "service_tier", "context_window"}``.
* ``GET /v1/organizations/cost_report`` with ``starting_at``, ``ending_at``,
  ``group_by[]`` (``description``), ``limit`` and ``page``; results ``{"currency": "USD",
  "amount"`` (a decimal string in cents: "123.45" is $1.23)``, "description", "cost_type",
  "model", "token_type", "context_window", "service_tier", "workspace_id"}``; token types
  ``uncached_input_tokens``, ``output_tokens``, ``cache_read_input_tokens``,
  ``cache_creation.ephemeral_5m_input_tokens``, ``cache_creation.ephemeral_1h_input_tokens``.

Requests need ``x-api-key: <admin key>`` (401 otherwise) and ``anthropic-version`` (400).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from gateway.testing.fake_admin import (
    ADMIN_STATE,
    AdminState,
    admit,
    bad_request,
    buckets,
    by_day,
    dumps,
    json_response,
    limit_param,
    page_of,
)

TOKEN_TYPES = {"input": "uncached_input_tokens", "cache_read": "cache_read_input_tokens",
               "cache_write_5m": "cache_creation.ephemeral_5m_input_tokens",
               "cache_write_1h": "cache_creation.ephemeral_1h_input_tokens",
               "output": "output_tokens"}
_WORDS = {"input": "Input Tokens", "cache_read": "Cache Read Tokens",
          "cache_write_5m": "5m Cache Write Tokens", "cache_write_1h": "1h Cache Write Tokens",
          "output": "Output Tokens"}


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/organizations/usage_report/messages", usage_report)
    router.add_get("/v1/organizations/cost_report", cost_report)


def _error(status: type[web.HTTPException], kind: str, message: str) -> web.HTTPException:
    return status(text=dumps({"type": "error", "error": {"type": kind,
                                                                "message": message}}),
                  content_type="application/json")


def _authorize(request: web.Request) -> None:
    if not request.headers.get("anthropic-version"):
        raise _error(web.HTTPBadRequest, "invalid_request_error",
                     "anthropic-version: header is required")
    key = request.app[ADMIN_STATE].admin_keys.get("anthropic")
    if request.headers.get("x-api-key") != key:
        raise _error(web.HTTPUnauthorized, "authentication_error", "invalid x-api-key")


def _window(request: web.Request) -> tuple[datetime, datetime]:
    try:
        start = datetime.fromisoformat(request.query["starting_at"].replace("Z", "+00:00"))
        raw_end = request.query.get("ending_at")
        end = (datetime.fromisoformat(raw_end.replace("Z", "+00:00")) if raw_end
               else datetime.now(UTC))
    except (KeyError, ValueError):
        raise bad_request("starting_at (RFC 3339) is required") from None
    if request.query.get("bucket_width", "1d") != "1d":
        raise bad_request("this fake serves bucket_width=1d only")
    return start, end


def _iso(day: date) -> str:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _page(data: list[dict[str, Any]], cursor: str | None) -> web.Response:
    return json_response({"data": data, "has_more": cursor is not None, "next_page": cursor})


def _bucket(day: date, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"starting_at": _iso(day), "ending_at": _iso(day + timedelta(days=1)),
            "results": results}


async def usage_report(request: web.Request) -> web.Response:
    _authorize(request)
    start, end = _window(request)
    page, cursor = page_of(request, buckets(start, end), limit_param(request, 7, 31))
    await admit(request, page[0] if page else start.date())
    by_model = "model" in request.query.getall("group_by[]", [])
    spent = by_day(request.app[ADMIN_STATE].spend_of("anthropic"))
    data = []
    for day in page:
        totals: dict[str | None, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for s in spent.get(day, []):
            t = totals[s.model if by_model else None]
            for kind in TOKEN_TYPES:
                t[kind] += getattr(s, kind)
        data.append(_bucket(day, [
            {"uncached_input_tokens": t["input"],
             "cache_creation": {"ephemeral_1h_input_tokens": t["cache_write_1h"],
                                "ephemeral_5m_input_tokens": t["cache_write_5m"]},
             "cache_read_input_tokens": t["cache_read"], "output_tokens": t["output"],
             "server_tool_use": {"web_search_requests": 0}, "model": model,
             "api_key_id": None, "workspace_id": None, "service_tier": None,
             "context_window": None}
            for model, t in sorted(totals.items(), key=lambda kv: str(kv[0]))]))
    return _page(data, cursor)


async def cost_report(request: web.Request) -> web.Response:
    _authorize(request)
    start, end = _window(request)
    page, cursor = page_of(request, buckets(start, end), limit_param(request, 7, 31))
    await admit(request, page[0] if page else start.date())
    described = "description" in request.query.getall("group_by[]", [])
    lines = _cost_lines(request.app[ADMIN_STATE])
    data = []
    for day in page:
        grouped: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
        for (line_day, *rest), amount in lines.items():
            if line_day == day:
                grouped[tuple(rest) if described else (None, None, None, None)] += amount
        data.append(_bucket(day, [
            {"currency": "USD", "amount": f"{(amount * 100).normalize():f}",
             "description": description, "cost_type": cost_type, "model": model,
             "token_type": token_type, "context_window": "0-200k" if model else None,
             "service_tier": "standard" if model else None, "workspace_id": None}
            for (description, cost_type, model, token_type), amount in sorted(
                grouped.items(), key=lambda kv: str(kv[0]))]))
    return _page(data, cursor)


def _cost_lines(state: AdminState) -> dict[tuple[Any, ...], Decimal]:
    """(day, description, cost_type, model, token_type) -> USD, at the provider's prices."""
    out: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
    for s in state.spend_of("anthropic"):
        price = state.price(s.model)
        for kind, token_type in TOKEN_TYPES.items():
            tokens = getattr(s, kind)
            if tokens:
                out[(s.day, f"{s.model} Usage - {_WORDS[kind]}", "tokens", s.model,
                     token_type)] += price.cost(kind, tokens)
    for c in state.charges:
        if c.provider == "anthropic":
            out[(c.day, c.line_item, "web_search", None, None)] += c.amount_usd
    return out
