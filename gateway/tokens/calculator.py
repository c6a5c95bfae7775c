"""The token calculator behind `POST /api/tokens/count`: counts, and their cost as input."""

from __future__ import annotations

from typing import Any

from gateway.domain import Usage
from gateway.errors import BadRequest
from gateway.pricing import PriceTable
from gateway.tokens.encodings import ENCODINGS
from gateway.tokens.models import Tokenizer
from gateway.tokens.service import TokenService, scale

MAX_TEXTS = 10_000
SHAPES = ("text", "texts", "messages")


async def count_request(body: dict[str, Any], tokens: TokenService,
                        prices: PriceTable) -> dict[str, Any]:
    """Answer a calculator request; 400 names whatever is wrong with it."""
    unknown = sorted(set(body) - {"model", "encoding", "tools", "functions", *SHAPES})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}",
                         details={"allowed": ["model", "encoding", *SHAPES, "tools"]})
    shapes = [s for s in SHAPES if s in body]
    if len(shapes) != 1:
        raise BadRequest("give exactly one of text, texts or messages",
                         details={"given": shapes})
    model, tokenizer = _tokenizer(body, tokens)
    shape = shapes[0]
    answer: dict[str, Any] = {"model": model, "encoding": tokenizer.encoding,
                              "exact": tokenizer.exact,
                              "estimate_factor": _factor(tokenizer)}
    if shape == "messages":
        if not isinstance(body["messages"], list) or not all(
                isinstance(m, dict) for m in body["messages"]):
            raise BadRequest("messages must be an array of message objects",
                             details={"field": "messages"})
        if "tools" in body and not isinstance(body["tools"], list):
            raise BadRequest("tools must be an array", details={"field": "tools"})
        request: dict[str, Any] = {
            k: body[k] for k in ("messages", "tools", "functions") if k in body}
        counted = await tokens.count_chat(request, model or "", tokenizer=tokenizer)
        answer.update(tokens=counted.tokens, total=counted.tokens, exact=counted.exact)
    elif shape == "text":
        if not isinstance(body["text"], str):
            raise BadRequest("text must be a string", details={"field": "text"})
        [n] = await tokens.count([body["text"]], tokenizer.encoding)
        total = scale(n, tokenizer.factor)
        answer.update(tokens=total, total=total)
    else:
        texts = body["texts"]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise BadRequest("texts must be an array of strings", details={"field": "texts"})
        if len(texts) > MAX_TEXTS:
            raise BadRequest(f"texts holds {len(texts)} strings; the limit is {MAX_TEXTS}",
                             details={"field": "texts", "limit": MAX_TEXTS})
        counts = [scale(n, tokenizer.factor)
                  for n in await tokens.count(texts, tokenizer.encoding)]
        answer.update(counts=counts, total=sum(counts))
    answer.update(_cost(prices, model, answer["total"]))
    return answer


def _tokenizer(body: dict[str, Any], tokens: TokenService) -> tuple[str | None, Tokenizer]:
    model, encoding = body.get("model"), body.get("encoding")
    if model is not None and (not isinstance(model, str) or not model):
        raise BadRequest("model must be a non-empty string", details={"field": "model"})
    if encoding is not None:
        if encoding not in ENCODINGS:
            raise BadRequest(f"unknown encoding {encoding!r}; known: {', '.join(ENCODINGS)}",
                             details={"field": "encoding", "known": list(ENCODINGS)})
        return model, Tokenizer(encoding)  # an explicit encoding is counted exactly
    if model is None:
        raise BadRequest("give a model or an encoding", details={"field": "model"})
    tokenizer = tokens.tokenizer(model)
    if not tokenizer.known:
        raise BadRequest(f"unknown model {model!r}: its tokenizer is not configured; give an "
                         f"encoding ({', '.join(ENCODINGS)}) to count with",
                         details={"field": "model"})
    return model, tokenizer


def _factor(tokenizer: Tokenizer) -> float | None:
    return float(tokenizer.factor) if tokenizer.factor is not None else None


def _cost(prices: PriceTable, model: str | None, total: int) -> dict[str, Any]:
    price = prices.get(model) if model else None
    if price is None:
        return {"input_cost_usd": None, "price_model": None}
    quote = prices.quote(price.provider, price.model, Usage(input_tokens=total))
    return {"input_cost_usd": quote.cost, "price_model": price.model}
