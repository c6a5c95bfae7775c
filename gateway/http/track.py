"""`POST /api/track`: usage of a call made outside the proxy, priced and written durably.

The body is the seed's (`provider`, `model`, `input_tokens`, `output_tokens`, optional
`cached_tokens`, `cost`, `endpoint`, `metadata`; the camelCase names of the other seed are
accepted too). Without a `cost` the call is priced from the price table; a model the table
does not know is priced by the fallback rule and flagged. With `X-Request-Id` the row's id is
derived from the project and that id, so a retry can never count twice: a reuse answers 409
with the first tracking id. The row is committed (rollups and ledger hooks included) before
the answer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from gateway import projects
from gateway.domain import Usage, UsageRecord
from gateway.errors import BadRequest, Conflict, Forbidden, ServiceUnavailable
from gateway.http.admin import is_admin
from gateway.http.analytics import exact_json
from gateway.http.json import read_json
from gateway.keys import KEYSTORE, LEDGER, POOL, PRICES, REQUEST_ID
from gateway.pipeline import validate
from gateway.pipeline.authenticate import authenticate

# Fixed forever: tracking ids derived from X-Request-Id must not change between releases.
TRACK_NAMESPACE = uuid.UUID("0b9d3c1e-6f2a-5e47-9c1d-8a4f7e2b6d30")
DEFAULT_ENDPOINT = "/api/track"
MAX_TOKENS = 2**31 - 1  # the ledger's integer columns
MAX_COST = Decimal(1_000_000)
MAX_METADATA_BYTES = 16_384
ALIASES = {"inputTokens": "input_tokens", "outputTokens": "output_tokens",
           "cachedTokens": "cached_tokens", "cached_input_tokens": "cached_tokens",
           "cacheWriteTokens": "cache_write_tokens", "projectId": "project_id"}
FIELDS = ("provider", "model", "input_tokens", "output_tokens", "cached_tokens",
          "cache_write_tokens", "cost", "endpoint", "metadata", "project_id", "flush")


@dataclass(frozen=True, slots=True)
class TrackedCall:
    provider: str
    model: str
    usage: Usage
    cost: Decimal | None
    endpoint: str
    metadata: dict[str, Any]
    project_id: int | None


def tracking_id(request_id: uuid.UUID) -> str:
    return f"track_{request_id.hex}"


def parse_track(body: Any) -> TrackedCall:
    """Check a tracking body; one 400 names every problem."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    problems: list[dict[str, str]] = []
    fields: dict[str, Any] = {}
    for name, value in body.items():
        canonical = ALIASES.get(name, name)
        if canonical not in FIELDS:
            problems.append({"field": name, "message": "is not a tracking field"})
        elif canonical in fields:
            problems.append({"field": name, "message": f"repeats {canonical}"})
        else:
            fields[canonical] = value

    def fail(name: str, message: str) -> None:
        problems.append({"field": name, "message": message})

    def text(name: str, limit: int, default: str | None = None) -> str:
        value = fields.get(name, default)
        if not isinstance(value, str) or not 1 <= len(value.strip()) <= limit:
            fail(name, "is required" if value is None else f"must be 1 to {limit} characters")
            return ""
        return value.strip()

    def count(name: str, required: bool) -> int:
        value = fields.get(name)
        if value is None and not required:
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
            fail(name, "is required" if value is None
                 else f"must be a whole number from 0 to {MAX_TOKENS}")
            return 0
        return value

    provider, model = text("provider", 100), text("model", 200)
    endpoint = text("endpoint", 500, DEFAULT_ENDPOINT)
    tokens_in, tokens_out = count("input_tokens", True), count("output_tokens", True)
    cached, written = count("cached_tokens", False), count("cache_write_tokens", False)
    if cached + written > tokens_in:
        fail("cached_tokens", "cached_tokens + cache_write_tokens cannot exceed input_tokens")
    cost = _cost(fields.get("cost"), fail)
    metadata = fields.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        fail("metadata", "must be a JSON object")
    elif len(orjson.dumps(metadata)) > MAX_METADATA_BYTES:
        fail("metadata", f"must be at most {MAX_METADATA_BYTES} bytes of JSON")
    project_id = fields.get("project_id")
    if project_id is not None and (isinstance(project_id, bool)
                                   or not isinstance(project_id, int) or project_id < 1):
        fail("project_id", "must be a positive integer id")
    if not isinstance(fields.get("flush", True), bool):
        fail("flush", "must be true or false")
    if problems:
        listed = "; ".join(f"{p['field']} {p['message']}" for p in problems)
        raise BadRequest(f"invalid tracking body: {listed}",
                         details={"field": problems[0]["field"], "problems": problems})
    return TrackedCall(provider, model, Usage(tokens_in, cached, tokens_out,
                                              cache_write_tokens=written),
                       cost, endpoint, metadata, project_id)


def _cost(value: Any, fail: Any) -> Decimal | None:
    if value is None:
        return None
    amount = None
    if not isinstance(value, bool) and isinstance(value, int | float | str):
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            amount = None
    if amount is None or not amount.is_finite() or not 0 <= amount <= MAX_COST:
        fail("cost", f"must be a number of USD from 0 to {MAX_COST}")
        return None
    return amount


async def track(request: web.Request) -> web.Response:
    admin = is_admin(request)
    principal = None if admin else await authenticate(request.app[KEYSTORE], request.headers)
    call = parse_track(await read_json(request))
    client_id = validate.client_request_id(request.headers.get("X-Request-Id"))
    if principal is None:
        if call.project_id is None:
            raise BadRequest("project_id is required with the admin token",
                             details={"field": "project_id"})
        async with request.app[POOL].acquire() as conn:
            await projects.get_project(conn, call.project_id)  # 404 when missing
        project_id, key_id = call.project_id, None
    else:
        project = principal.project
        if call.project_id not in (None, project.id):
            raise Forbidden(f"this key belongs to project {project.id} and tracks only for it",
                            details={"field": "project_id", "value": call.project_id})
        if not project.enabled:
            raise Forbidden(f"project {project.name!r} is disabled", code="project_disabled")
        project_id, key_id = project.id, principal.key_id
    request_id = (uuid.uuid5(TRACK_NAMESPACE, f"{project_id}:{client_id}") if client_id
                  else request[REQUEST_ID])
    if call.cost is not None:
        cost, fallback, price_model, source = call.cost, False, None, "client"
    else:
        quote = request.app[PRICES].quote(call.provider, call.model, call.usage)
        cost, fallback, price_model = quote.cost, quote.fallback, quote.price.model
        source = "fallback" if fallback else "price_table"
    now = datetime.now(UTC)
    record = UsageRecord(
        request_id=request_id, project_id=project_id, api_key_id=key_id,
        provider=call.provider, model=call.model, endpoint=call.endpoint, status=200,
        streamed=False, usage=call.usage, cost_usd=cost, priced_by_fallback=fallback,
        price_model=price_model, overhead_ms=0.0, upstream_ms=None, error_code=None,
        metadata=call.metadata, started_at=now, finished_at=now)
    try:
        written = await request.app[LEDGER].write_now(record)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ServiceUnavailable("the usage could not be recorded; retrying with the same "
                                 "X-Request-Id is safe", code="ledger_unavailable") from exc
    if not written:
        raise Conflict(f"X-Request-Id {client_id!r} was already tracked for this project",
                       code="duplicate_request_id",
                       details={"request_id": client_id,
                                "first_tracking_id": tracking_id(request_id)})
    usage = call.usage
    return exact_json({
        "id": tracking_id(request_id), "request_id": str(request_id), "timestamp": now,
        "total_cost": cost, "status": "tracked", "project_id": project_id,
        "provider": call.provider, "model": call.model, "endpoint": call.endpoint,
        "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
        "cached_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "cost_source": source, "priced_by_fallback": fallback, "price_model": price_model,
    }, status=201)
