"""A fake of the providers' organisation admin APIs: OpenAI's Usage and Costs APIs
(``fake_admin_openai``) and Anthropic's usage and cost reports (``fake_admin_anthropic``),
one server for both, as ``fake_upstream`` serves every provider's wire.

The reports are generated from a script, not stored: ``AdminScript.spend`` lists what was
used (one ``Spend`` per provider, day, model and provider project), ``prices`` what the
provider bills per million tokens (set one 10% above ``prices.toml`` and the gateway's
price is wrong by 10%), and ``charges`` costs that are not tokens (images, web search). A
test scripts the ledger it sent through the gateway, adds spend made around it, and reads
back what the gateway imported and reconciled.

Faults and timing (all in-process, on ``AdminState``): ``fail_from`` with ``fail_times``
answers 500 to that many report requests whose window starts on or after that day;
``gate`` (an asyncio.Event) holds every report request until it is set, and ``entered`` is
set as soon as one arrives. ``log`` keeps every request (path, query, headers).

Standalone: ``python -m gateway.testing.fake_admin --script script.json --port 9100``, the
script ``{"admin_keys": {"openai": "...", "anthropic": "..."}, "prices": {MODEL: {"input",
"cache_read", "output", "cache_write_5m"?, "cache_write_1h"?}}, "spend": [Spend fields,
"day" as YYYY-MM-DD], "charges": [Charge fields], "page_size"?}`` (USD per million tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Spend:
    """Tokens one provider billed for one model on one UTC day (input is uncached)."""

    provider: str
    day: date
    model: str
    project: str = ""
    input: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    output: int = 0
    requests: int = 0
    source: str = "completions"  # OpenAI's usage endpoint that reports it


@dataclass(frozen=True)
class Charge:
    """A cost that is not tokens (OpenAI line item, Anthropic description)."""

    provider: str
    day: date
    line_item: str
    amount_usd: Decimal
    project: str = ""


@dataclass(frozen=True)
class ProviderPrice:
    """What the provider bills, USD per million tokens."""

    input: Decimal
    cache_read: Decimal
    output: Decimal
    cache_write_5m: Decimal | None = None  # None: the input price
    cache_write_1h: Decimal | None = None

    def cost(self, kind: str, tokens: int) -> Decimal:
        price = getattr(self, kind)
        if price is None:
            price = self.input
        return Decimal(tokens) * price / MILLION


@dataclass
class AdminState:
    admin_keys: dict[str, str]  # provider -> the admin key it accepts
    spend: list[Spend] = field(default_factory=list)
    charges: list[Charge] = field(default_factory=list)
    prices: dict[str, ProviderPrice] = field(default_factory=dict)  # model -> price
    page_size: int = 31  # the most buckets one page holds, whatever limit asks
    fail_from: date | None = None
    fail_times: int = 0
    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    log: list[dict[str, Any]] = field(default_factory=list)

    def spend_of(self, provider: str) -> list[Spend]:
        return [s for s in self.spend if s.provider == provider]

    def price(self, model: str) -> ProviderPrice:
        try:
            return self.prices[model]
        except KeyError:
            raise web.HTTPInternalServerError(text=f"fake admin: no price for {model}") from None


ADMIN_STATE = web.AppKey("admin_state", AdminState)


async def admit(request: web.Request, first_day: date) -> None:
    """Log the request, wait at the gate, and fail it when a failure is scripted."""
    state = request.app[ADMIN_STATE]
    state.log.append({"path": request.path, "query": list(request.query.items()),
                      "headers": dict(request.headers), "first_day": first_day})
    state.entered.set()
    if state.gate is not None:
        await state.gate.wait()
    if state.fail_times > 0 and state.fail_from is not None and first_day >= state.fail_from:
        state.fail_times -= 1
        raise web.HTTPInternalServerError(
            text=dumps({"error": {"message": "scripted failure", "type": "server_error"}}),
            content_type="application/json")


def buckets(start: datetime, end: datetime) -> list[date]:
    """The UTC days whose 1d buckets start in [start, end)."""
    day = start.astimezone(UTC).date()
    if datetime(day.year, day.month, day.day, tzinfo=UTC) < start:
        day += timedelta(days=1)
    out = []
    while datetime(day.year, day.month, day.day, tzinfo=UTC) < end:
        out.append(day)
        day += timedelta(days=1)
    return out


def page_of(request: web.Request, days: list[date], limit: int) -> tuple[list[date], str | None]:
    """This page's days and the next page's cursor (an opaque token, as the APIs give)."""
    state = request.app[ADMIN_STATE]
    size = max(1, min(limit, state.page_size))
    token = request.query.get("page")
    offset = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
    chunk = days[offset:offset + size]
    more = offset + size < len(days)
    cursor = base64.urlsafe_b64encode(str(offset + size).encode()).decode() if more else None
    return chunk, cursor


def limit_param(request: web.Request, default: int, maximum: int) -> int:
    try:
        limit = int(request.query.get("limit", default))
    except ValueError:
        raise bad_request("limit must be an integer") from None
    if not 1 <= limit <= maximum:
        raise bad_request(f"limit must be between 1 and {maximum}")
    return limit


def bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=dumps({"error": {"message": message,
                                                            "type": "invalid_request_error"}}),
                              content_type="application/json")


def dumps(body: Any) -> str:
    return orjson.dumps(body).decode()


def number(amount: Decimal) -> orjson.Fragment:
    """A JSON number with the amount's exact digits."""
    return orjson.Fragment(f"{amount.normalize():f}".encode() if amount else b"0")


def json_response(body: Any) -> web.Response:
    return web.Response(text=dumps(body), content_type="application/json")


def build_app(state: AdminState) -> web.Application:
    from gateway.testing import fake_admin_anthropic, fake_admin_openai

    app = web.Application()
    app[ADMIN_STATE] = state
    fake_admin_openai.add_routes(app.router)
    fake_admin_anthropic.add_routes(app.router)
    return app


async def start_fake_admin(state: AdminState, host: str = "127.0.0.1",
                           port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve the fake in the running loop; returns the runner and its ``http://host:port``
    (OpenAI's base URL is that plus ``/v1``, Anthropic's that alone)."""
    runner = web.AppRunner(build_app(state), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, f"http://{host}:{runner.addresses[0][1]}"


def load_script(text: str) -> AdminState:
    """An `AdminState` from the standalone server's JSON script."""
    raw = json.loads(text, parse_float=Decimal)

    def dated(item: dict[str, Any]) -> dict[str, Any]:
        return {**item, "day": date.fromisoformat(item["day"])}

    return AdminState(
        admin_keys=dict(raw["admin_keys"]), page_size=int(raw.get("page_size", 31)),
        prices={m: ProviderPrice(**{k: Decimal(str(v)) for k, v in p.items()})
                for m, p in raw.get("prices", {}).items()},
        spend=[Spend(**dated(s)) for s in raw.get("spend", [])],
        charges=[Charge(**{**dated(c), "amount_usd": Decimal(str(c["amount_usd"]))})
                 for c in raw.get("charges", [])])


async def _serve(state: AdminState, host: str, port: int) -> None:
    runner, url = await start_fake_admin(state, host, port)
    print(f"fake admin APIs listening on {url} (OpenAI: {url}/v1)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: serve a scripted fake until interrupted."""
    parser = argparse.ArgumentParser(description="Fake OpenAI and Anthropic admin APIs.")
    parser.add_argument("--script", required=True, help="JSON script file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with open(args.script, encoding="utf-8") as f:
        state = load_script(f.read())
    asyncio.run(_serve(state, args.host, args.port))


def by_day(items: Iterable[Any]) -> dict[date, list[Any]]:
    out: dict[date, list[Any]] = {}
    for item in items:
        out.setdefault(item.day, []).append(item)
    return out


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy's: the provider modules key the
    # state by the imported module's ADMIN_STATE.
    from gateway.testing import fake_admin

    fake_admin.main()
