"""OpenAI's organisation Usage and Costs APIs, as the fake admin server answers them.

Shapes follow OpenAI's API reference (Administration > Usage, Costs):
https://platform.openai.com/docs/api-reference/usage and
https://platform.openai.com/docs/api-reference/usage/costs

* ``GET /v1/organization/usage/{completions|embeddings|moderations|images|audio_speeches|
  audio_transcriptions|vector_stores|code_interpreter_sessions}`` with ``start_time``
  (unix seconds, inclusive), ``end_time`` (exclusive), ``bucket_width=1d``, ``group_by``
  (``model``, ``project_id``), ``limit`` (1 to 31 daily buckets) and ``page``; answers
  ``{"object": "page", "data": [bucket...], "has_more", "next_page"}``, each bucket
  ``{"object": "bucket", "start_time", "end_time", "results": [...]}``. Completions results
  carry ``input_tokens`` (cached included), ``input_cached_tokens``, ``output_tokens``,
  audio token counts and ``num_model_requests``; embeddings and moderations
  ``input_tokens`` and ``num_model_requests``. Fields not grouped by are null.
* ``GET /v1/organization/costs`` with ``group_by`` (``line_item``, ``project_id``) and
  ``limit`` (1 to 180); results ``{"object": "organization.costs.result", "amount":
  {"value", "currency": "usd"}, "line_item", "project_id"}``. Token line items read
  ``"<model>, input"``, ``"<model>, cached input"``, ``"<model>, cache write"`` and
  ``"<model>, output"``.

``Authorization: Bearer <admin key>`` is required (401 otherwise, in OpenAI's error shape).
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
    number,
    page_of,
)

USAGE_KINDS = ("completions", "embeddings", "moderations", "images", "audio_speeches",
               "audio_transcriptions", "vector_stores", "code_interpreter_sessions")
TOKEN_SOURCES = ("completions", "embeddings", "moderations")
LINE_ITEMS = {"input": "input", "cache_read": "cached input", "cache_write_5m": "cache write",
              "output": "output"}


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/organization/usage/{kind}", usage)
    router.add_get("/v1/organization/costs", costs)


def _authorize(request: web.Request) -> None:
    key = request.app[ADMIN_STATE].admin_keys.get("openai")
    if request.headers.get("Authorization") != f"Bearer {key}":
        raise web.HTTPUnauthorized(text=dumps({"error": {
            "message": "Incorrect API key provided.", "type": "invalid_request_error",
            "code": "invalid_api_key"}}), content_type="application/json")


def _window(request: web.Request) -> tuple[datetime, datetime]:
    try:
        start = int(request.query["start_time"])
        end = int(request.query.get("end_time", int(datetime.now(UTC).timestamp())))
    except (KeyError, ValueError):
        raise bad_request("start_time (unix seconds) is required; end_time is optional") \
            from None
    if request.query.get("bucket_width", "1d") != "1d":
        raise bad_request("this fake serves bucket_width=1d only")
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)


def _group_by(request: web.Request) -> set[str]:
    values = request.query.getall("group_by", []) + request.query.getall("group_by[]", [])
    return {v.strip() for value in values for v in value.split(",") if v.strip()}


def _bucket(day: date, results: list[dict[str, Any]]) -> dict[str, Any]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return {"object": "bucket", "start_time": int(start.timestamp()),
            "end_time": int((start + timedelta(days=1)).timestamp()), "results": results}


def _page(data: list[dict[str, Any]], cursor: str | None) -> web.Response:
    return json_response({"object": "page", "data": data, "has_more": cursor is not None,
                          "next_page": cursor})


async def usage(request: web.Request) -> web.Response:
    _authorize(request)
    kind = request.match_info["kind"]
    if kind not in USAGE_KINDS:
        raise web.HTTPNotFound()
    start, end = _window(request)
    days = buckets(start, end)
    limit = limit_param(request, 7, 31)
    page, cursor = page_of(request, days, limit)
    await admit(request, page[0] if page else start.date())
    group = _group_by(request)
    state = request.app[ADMIN_STATE]
    spent = by_day(s for s in state.spend_of("openai") if s.source == kind)
    return _page([_bucket(day, _usage_results(kind, spent.get(day, []), group))
                  for day in page], cursor)


def _usage_results(kind: str, spend: list[Any], group: set[str]) -> list[dict[str, Any]]:
    totals: dict[tuple[str | None, str | None], dict[str, int]] = defaultdict(
        lambda: defaultdict(int))
    for s in spend:
        key = (s.model if "model" in group else None,
               s.project or None if "project_id" in group else None)
        t = totals[key]
        t["input_tokens"] += s.input + s.cache_read + s.cache_write_5m + s.cache_write_1h
        t["input_cached_tokens"] += s.cache_read
        t["output_tokens"] += s.output
        t["num_model_requests"] += s.requests
    out = []
    for (model, project), t in sorted(totals.items(), key=lambda kv: (str(kv[0][0]),
                                                                       str(kv[0][1]))):
        result: dict[str, Any] = {"object": f"organization.usage.{kind}.result",
                                  "project_id": project, "user_id": None, "api_key_id": None,
                                  "model": model}
        if kind == "completions":
            result.update(input_tokens=t["input_tokens"],
                          input_cached_tokens=t["input_cached_tokens"],
                          output_tokens=t["output_tokens"], input_audio_tokens=0,
                          output_audio_tokens=0, num_model_requests=t["num_model_requests"],
                          batch=None)
        else:
            result.update(input_tokens=t["input_tokens"],
                          num_model_requests=t["num_model_requests"])
        out.append(result)
    return out


async def costs(request: web.Request) -> web.Response:
    _authorize(request)
    start, end = _window(request)
    days = buckets(start, end)
    limit = limit_param(request, 7, 180)
    page, cursor = page_of(request, days, limit)
    await admit(request, page[0] if page else start.date())
    state = request.app[ADMIN_STATE]
    amounts = _cost_lines(state)
    group = _group_by(request)
    data = []
    for day in page:
        grouped: dict[tuple[str | None, str | None], Decimal] = defaultdict(Decimal)
        for (line_day, line_item, project), amount in amounts.items():
            if line_day == day:
                grouped[(line_item if "line_item" in group else None,
                         project or None if "project_id" in group else None)] += amount
        data.append(_bucket(day, [
            {"object": "organization.costs.result",
             "amount": {"value": number(amount), "currency": "usd"},
             "line_item": line_item, "project_id": project}
            for (line_item, project), amount in sorted(grouped.items(),
                                                       key=lambda kv: (str(kv[0][0]),
                                                                       str(kv[0][1])))]))
    return _page(data, cursor)


def _cost_lines(state: AdminState) -> dict[tuple[date, str, str], Decimal]:
    """(day, line item, project) -> USD, from the scripted spend at the provider's prices."""
    out: dict[tuple[date, str, str], Decimal] = defaultdict(Decimal)
    for s in state.spend_of("openai"):
        price = state.price(s.model)
        for kind, label in LINE_ITEMS.items():
            tokens = getattr(s, kind) + (s.cache_write_1h if kind == "cache_write_5m" else 0)
            if tokens:
                out[(s.day, f"{s.model}, {label}", s.project)] += price.cost(kind, tokens)
    for c in state.charges:
        if c.provider == "openai":
            out[(c.day, c.line_item, c.project)] += c.amount_usd
    return out
