"""`POST /api/track`: usage of a call made outside the proxy, priced and written durably.

The body is the seed's (`provider`, `model`, `input_tokens`, `output_tokens`, optional
`cached_tokens`, `cost`, `endpoint`, `metadata`; the camelCase names of the other seed are
accepted too, and so is the meterr SDK's `tokens`: a total with no split, recorded and priced
as output tokens so it is never under-charged). Provider `google` is `gemini`.
Without a `cost` the call is priced from the price table; a model the table
does not know is priced by the fallback rule and flagged. With `X-Request-Id` the row's id is
derived from the project and that id, so a retry can never count twice: a reuse answers 409
with the first tracking id. The row is committed (rollups and ledger hooks included) before
the answer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from gateway import checks, projects
from gateway.budgets import DB_ERRORS
from gateway.domain import Usage, UsageRecord, canonical_provider
from gateway.errors import Conflict, Forbidden, ServiceUnavailable
from gateway.http.access import Access, Caller, caller
from gateway.http.analytics import exact_json
from gateway.http.database import connection
from gateway.http.json import read_json
from gateway.keys import BUDGETS, LEDGER, PRICES, REQUEST_ID
from gateway.pipeline import validate

log = structlog.get_logger(__name__)

# Fixed forever: tracking ids derived from X-Request-Id must not change between releases.
TRACK_NAMESPACE = uuid.UUID("0b9d3c1e-6f2a-5e47-9c1d-8a4f7e2b6d30")
DEFAULT_ENDPOINT = "/api/track"
MAX_TOKENS = 2**31 - 1  # the ledger's integer columns
MAX_COST = Decimal(1_000_000)
MAX_METADATA_BYTES = 16_384
ALIASES = {"inputTokens": "input_tokens", "outputTokens": "output_tokens",
           "cachedTokens": "cached_tokens", "cached_input_tokens": "cached_tokens",
           "cacheWriteTokens": "cache_write_tokens", "projectId": "project_id"}
FIELDS = ("provider", "model", "input_tokens", "output_tokens", "tokens", "cached_tokens",
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
    total_only: bool = False  # only a total (`tokens`) was given: recorded as output tokens


def tracking_id(request_id: uuid.UUID) -> str:
    return f"track_{request_id.hex}"


def parse_track(body: Any) -> TrackedCall:
    """Check a tracking body; one 400 names every problem."""
    body = checks.body_object(body)
    problems = checks.Problems()
    fields: dict[str, Any] = {}
    for name, value in body.items():
        canonical = ALIASES.get(name, name)
        if canonical not in FIELDS:
            problems.add(name, "is not a tracking field")
        elif canonical in fields:
            problems.add(name, f"repeats {canonical}")
        else:
            fields[canonical] = value

    def text(name: str, limit: int, default: str | None = None) -> str:
        value = fields.get(name, default)
        return checks.text(value, name, problems, max_chars=limit, strip=True, message=(
            "is required" if value is None
            else f"must be 1 to {limit} characters without NUL")) or ""

    def count(name: str, required: bool) -> int:
        value = fields.get(name)
        if value is None and not required:
            return 0
        return checks.whole(value, name, problems, 0, MAX_TOKENS, "is required" if value is None
                            else f"must be a whole number from 0 to {MAX_TOKENS}") or 0

    provider, model = canonical_provider(text("provider", 100)), text("model", 200)
    endpoint = text("endpoint", 500, DEFAULT_ENDPOINT)
    total_only = "tokens" in fields and "input_tokens" not in fields \
        and "output_tokens" not in fields
    if total_only:  # the SDK's `tokens`: a total with no split, priced as output (never under)
        tokens_in, tokens_out = 0, count("tokens", True)
    else:
        tokens_in, tokens_out = count("input_tokens", True), count("output_tokens", True)
        if "tokens" in fields and count("tokens", True) != tokens_in + tokens_out:
            problems.add("tokens", "must equal input_tokens + output_tokens when both are "
                                   "given")
    cached, written = count("cached_tokens", False), count("cache_write_tokens", False)
    if cached + written > tokens_in:
        problems.add("cached_tokens",
                     "cached_tokens + cache_write_tokens cannot exceed input_tokens")
    cost = None
    if fields.get("cost") is not None:
        cost = checks.money(fields["cost"], "cost", problems, high=MAX_COST,
                            message=f"must be a number of USD from 0 to {MAX_COST}")
    metadata = fields.get("metadata")
    if metadata is not None:
        metadata = checks.json_object(metadata, "metadata", problems,
                                      max_bytes=MAX_METADATA_BYTES)
    project_id = fields.get("project_id")
    if project_id is not None:
        project_id = checks.ident(project_id, "project_id", problems)
    if fields.get("flush") is not None:
        checks.flag(fields["flush"], "flush", problems)
    problems.raise_if_any("invalid tracking body: ")
    return TrackedCall(provider, model, Usage(tokens_in, cached, tokens_out,
                                              cache_write_tokens=written),
                       cost, endpoint, metadata or {}, project_id, total_only)


async def track(request: web.Request) -> web.Response:
    who = await caller(request, allow=Access.PROJECT_OR_ADMIN)
    call = parse_track(await read_json(request))
    return exact_json(await record_tracked(request, who, call), status=201)


async def record_tracked(request: web.Request, who: Caller, call: TrackedCall) -> dict[str, Any]:
    """Price and write one tracked call for the caller's project; answers what was recorded."""
    client_id = validate.client_request_id(request.headers.get("X-Request-Id"))
    project_id, key_id = who.project_id(call.project_id, denied="tracks only for it"), who.key_id
    if who.principal is None:
        async with connection(request) as conn:
            await projects.get_project(conn, project_id)  # 404 when missing
    elif not who.principal.project.enabled:
        project = who.principal.project
        raise Forbidden(f"project {project.name!r} is disabled", code="project_disabled")
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
        metadata=call.metadata, started_at=now, finished_at=now, origin="track")
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
    await _count_against_budgets(request, project_id)
    usage = call.usage
    return {
        "id": tracking_id(request_id), "request_id": str(request_id), "timestamp": now,
        "total_cost": cost, "status": "tracked", "project_id": project_id,
        "provider": call.provider, "model": call.model, "endpoint": call.endpoint,
        "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
        "cached_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "cost_source": source, "priced_by_fallback": fallback, "price_model": price_model,
        "token_split": "total_only" if call.total_only else "reported",
    }


async def _count_against_budgets(request: web.Request, project_id: int) -> None:
    """The ledger hook added the tracked cost to the project's budgets and told every process
    on commit; this one hands back its own leases now, so a call right after this answer
    already leases against the new spend. A failure only delays that until the next sync."""
    book = request.app[BUDGETS]
    for account in book.accounts:
        if account.scope == "project" and account.scope_id != project_id:
            continue
        try:
            await book.hand_back(account.scope, account.scope_id, account.period)
        except DB_ERRORS as exc:
            log.warning("budget_hand_back_failed", scope=account.scope,
                        scope_id=account.scope_id, error=str(exc))
