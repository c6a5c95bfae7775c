"""`POST /api/smart-router`: which model to use for a task, in meterr's shape.

In: `task`, `max_cost` (USD per request), `max_latency` (ms), `quality`, and optionally
`strategy`, `requires`, and the size of the request: `input_tokens` / `output_tokens`, or
`messages` (counted exactly, per candidate's tokenizer). Out: `recommended_model`,
`provider`, `estimated_cost`, `estimated_latency` (and where it came from), `alternatives`
ranked. A project key sees only what its project may use; the admin token, the gateway's.
"""

from __future__ import annotations

from decimal import Decimal
from functools import partial
from typing import Any

from aiohttp import web

from gateway import checks
from gateway.errors import ServiceUnavailable
from gateway.http.access import Access, caller
from gateway.http.json import json_response, read_json
from gateway.keys import PIPELINE, TOKENS
from gateway.pipeline.authorize import enabled
from gateway.pipeline.smart_route import counted_tokens, no_model_fits
from gateway.settings import CAPABILITIES, QUALITY_TIERS, STRATEGIES, TASK_CLASSES
from gateway.smart_router import Need, describe

FIELDS = ("task", "max_cost", "max_latency", "quality", "strategy", "requires",
          "input_tokens", "output_tokens", "messages")
MAX_TOKENS = 100_000_000


async def smart_router(request: web.Request) -> web.Response:
    who = await caller(request, allow=Access.PROJECT_OR_ADMIN)
    pipeline = request.app[PIPELINE]
    if pipeline.smart is None:
        raise ServiceUnavailable("the smart router has no model catalogue",
                                 code="router_unavailable")
    routing = pipeline.routing
    need, body = parse(checks.body_object(await read_json(request)), routing.default_task,
                       routing.default_quality)
    project = None if who.admin else who.key.project
    if project is not None:
        enabled(project)
    messages = body.get("messages")
    tokens = counted_tokens(
        request.app[TOKENS], None if messages is None else {"messages": messages},
        body.get("input_tokens", routing.default_input_tokens),
        body.get("output_tokens", routing.default_output_tokens))
    decision = await pipeline.smart.decide(need, tokens,
                                           partial(pipeline.access.refusal, project, None, None))
    best = decision.chosen
    if best is None:
        raise no_model_fits(decision)
    best_described = describe(best)
    observed = {k: best_described[k] for k in ("latency_p95", "first_token_latency",
                                               "first_token_p95", "error_rate")
                if k in best_described}
    return json_response({
        "recommended_model": best.model, "provider": best.provider,
        "estimated_cost": best.cost, "estimated_latency": round(best.latency_ms),
        "latency_source": best.latency_source, **observed, "strategy": need.strategy,
        "task": need.task, "quality": need.quality, "input_tokens": best.input_tokens,
        "output_tokens": best.output_tokens,
        "alternatives": [describe(c) for c in decision.ranked[1:]]})


def parse(body: dict[str, Any], default_task: str, default_quality: str
          ) -> tuple[Need, dict[str, Any]]:
    """The request's need, and its checked fields; one 400 names every problem."""
    problems = checks.Problems()
    checks.unknown_fields(body, FIELDS, problems)
    checked: dict[str, Any] = {}
    task = _choice(body, "task", TASK_CLASSES, default_task, problems)
    quality = _choice(body, "quality", QUALITY_TIERS, default_quality, problems)
    strategy = _choice(body, "strategy", STRATEGIES, "balanced", problems)
    max_cost = max_latency = None
    if body.get("max_cost") is not None:
        max_cost = checks.money(body["max_cost"], "max_cost", problems, high=Decimal(10_000))
    if body.get("max_latency") is not None:
        max_latency = checks.number(body["max_latency"], "max_latency", problems, 1, 3.6e6)
    requires = checks.strings(body.get("requires", []), "requires", problems,
                              max_items=len(CAPABILITIES), max_chars=20) or []
    for i, need in enumerate(requires):
        if need not in CAPABILITIES:
            problems.add(f"requires[{i}]", f"must be one of {', '.join(CAPABILITIES)}")
    for name in ("input_tokens", "output_tokens"):
        if name in body:
            checked[name] = checks.whole(body[name], name, problems, 0, MAX_TOKENS)
    if "messages" in body:
        if "input_tokens" in body:
            problems.add("messages", "give either messages or input_tokens, not both")
        elif not isinstance(body["messages"], list) or not all(
                isinstance(m, dict) for m in body["messages"]):
            problems.add("messages", "must be an array of message objects")
        else:
            checked["messages"] = body["messages"]
    problems.raise_if_any()
    assert task is not None and quality is not None and strategy is not None
    return Need(strategy, task, quality, max_cost, max_latency, frozenset(requires)), checked


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...], default: str,
            problems: checks.Problems) -> str | None:
    value = body.get(name, default)
    if value in allowed:
        return str(value)
    problems.add(name, f"must be one of {', '.join(allowed)}")
    return None
