"""Routing by the smart router, for a request that names `router:cheapest|fastest|balanced`
or a `[routing.routes]` route instead of a model: the pick replaces the model, the next
ranked models follow its own fallbacks, and the client and the usage row are told why.

Also the token estimates the router prices candidates with: a request's input counted
exactly per candidate's tokenizer (once per encoding), its output the `max_tokens` it asked
for, else `routing.default_output_tokens`.
"""

from __future__ import annotations

from typing import Any

from gateway.catalogue import ModelInfo
from gateway.domain import ChatRequest
from gateway.errors import BadRequest, Unprocessable
from gateway.pipeline.exchange import Exchange
from gateway.smart_router import Admissible, Decision, Need, SmartRouter, Tokens, describe
from gateway.tokens.service import TokenService

ROUTE_REASON_HEADER = "X-AI-Cost-Gateway-Route-Reason"
MODEL_HEADER = "X-AI-Cost-Gateway-Model"
# Entry shapes whose requests a catalogued chat model can serve.
CHAT_ENTRIES = frozenset({"openai", "anthropic", "native", "openai_responses"})

def counted_tokens(tokens: TokenService, body: dict[str, Any] | None, input_tokens: int,
                   output_tokens: int) -> Tokens:
    """Per candidate: (input, output) tokens. With a chat `body`, the input is counted with
    each candidate's own tokenizer, once per encoding; without, `input_tokens` as given."""
    counted: dict[tuple[str, object], int] = {}

    async def estimate(info: ModelInfo) -> tuple[int, int]:
        if body is None:
            return input_tokens, output_tokens
        tokenizer = tokens.tokenizer(info.name)
        key = (tokenizer.encoding, tokenizer.factor)
        if key not in counted:
            counted[key] = (await tokens.count_chat(body, info.name,
                                                    tokenizer=tokenizer)).tokens
        return counted[key], output_tokens

    return estimate

def no_model_fits(decision: Decision) -> Unprocessable:
    """422 naming the constraints and the closest candidates, each with what it lacks."""
    need = decision.need
    return Unprocessable(
        f"no model meets the constraints (task {need.task}, quality >= {need.quality}"
        f"{f', max_cost {need.max_cost}' if need.max_cost is not None else ''}"
        f"{f', max_latency {need.max_latency_ms:g} ms' if need.max_latency_ms else ''}); "
        + ("the closest are in details.closest" if decision.closest else
           "no catalogued model is both allowed to this caller and reachable"),
        code="no_model_fits", details={"closest": [describe(c) for c in decision.closest]})

async def route_request(ex: Exchange, chat: ChatRequest, smart: SmartRouter,
                        tokens: TokenService, admissible: Admissible, default_output: int,
                        alternatives: int) -> list[str]:
    """Replace the request's model by the router's pick; answers the next-ranked models
    (at most `alternatives`) to try after the pick's own fallbacks."""
    if chat.entry not in CHAT_ENTRIES:
        raise BadRequest(f"model {chat.model!r} asks the smart router, which picks chat "
                         f"models; the {chat.entry} endpoint cannot use it",
                         code="router_not_supported", details={"model": chat.model})
    need: Need = smart.need_for(chat.model)
    output = chat.max_output_tokens or default_output
    decision = await smart.decide(need, counted_tokens(tokens, chat.body, 0, output),
                                  admissible)
    chosen = decision.chosen
    if chosen is None:
        raise no_model_fits(decision)
    reason = decision.reason()
    ex.requested_model, ex.route_reason = chat.model, reason
    ex.response_headers[ROUTE_REASON_HEADER] = reason
    ex.response_headers[MODEL_HEADER] = chosen.model
    chat.model = chosen.model
    chat.body = {**chat.body, "model": chosen.model}  # adapters send native bodies with it
    return [c.model for c in decision.ranked[1:1 + alternatives]]
