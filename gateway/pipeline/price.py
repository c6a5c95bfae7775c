"""Price stage: the exact cost of what the upstream served."""

from __future__ import annotations

from gateway.pipeline.exchange import Exchange
from gateway.pricing import PriceTable


def price(exchange: Exchange, prices: PriceTable) -> None:
    """Quote by the served model when the table knows it, else by the requested one."""
    chat = exchange.chat
    if chat is None:
        return
    model = chat.model
    served = exchange.upstream_model
    if served and served != model and prices.get(served) is not None:
        model = served
    exchange.quote = prices.quote(chat.provider, model, exchange.usage)
