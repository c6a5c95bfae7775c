"""`POST /v1/messages/count_tokens`: a free call, admitted like every proxied one (key,
allow-lists, idempotency, rate limits; no budget), answered in Anthropic's shape and
recorded once at cost 0."""

from __future__ import annotations

from functools import partial

import orjson
from aiohttp import web

from gateway.domain import Usage
from gateway.entries.anthropic_count_tokens import ANTHROPIC_COUNT_TOKENS
from gateway.errors import BadGateway
from gateway.http.json import read_limited
from gateway.http.proxy import COST_HEADER, settled
from gateway.keys import PIPELINE, REQUEST_ID, SETTINGS
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.price import price

ANTHROPIC_WIRE = "anthropic"


async def count_tokens(request: web.Request) -> web.Response:
    pipeline = request.app[PIPELINE]
    limit = request.app[SETTINGS].server.max_body_bytes
    ex = Exchange(request[REQUEST_ID], request.path, ANTHROPIC_COUNT_TOKENS)
    async with settled(request, ex):
        chat = await pipeline.admit(ex, request.headers, partial(read_limited, request, limit))
        relayed = [r for r in ex.chain
                   if pipeline.upstreams[r.provider].adapter.wire == ANTHROPIC_WIRE]
        if relayed and relayed[0] == ex.chain[0]:  # the routed model is Anthropic's
            ex.chain = relayed  # a fallback of another wire could not count it
            body = await pipeline.relay(ex, chat)
            _input_tokens(body, chat.provider)
            ex.usage = Usage()
        else:
            counted = await pipeline.tokens.count_chat(chat.body, chat.model)
            body = orjson.dumps({"input_tokens": counted.tokens})
            ex.usage = Usage(input_source="counted", output_source="counted")
        price(ex, pipeline.prices)  # 0 tokens: cost 0
        return web.Response(body=body, content_type="application/json", headers={
            **ex.response_headers, COST_HEADER: "0"})


def _input_tokens(body: bytes, provider: str) -> int:
    """Anthropic's `{"input_tokens": N}` (502 if the answer is not one)."""
    try:
        tokens = orjson.loads(body).get("input_tokens")
    except (orjson.JSONDecodeError, AttributeError):
        tokens = None
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        raise BadGateway(f"{provider} upstream answered no input_tokens count",
                         code="upstream_invalid_response", details={"provider": provider})
    return tokens
