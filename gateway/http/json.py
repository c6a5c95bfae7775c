"""JSON in and out for the API handlers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from gateway.checks import path_id
from gateway.errors import BadRequest, PayloadTooLarge
from gateway.pricing import format_usd


def json_default(value: Any) -> Any:
    """Money (Decimal) as an exact JSON number: the value's own digits, never a float's."""
    if isinstance(value, Decimal):
        return orjson.Fragment(format_usd(value).encode())
    raise TypeError(f"cannot serialise {type(value).__name__}")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=json_default), status=status,
                        content_type="application/json")


async def read_json(request: web.Request, *, required: bool = True) -> Any:
    body = await request.read()
    if not body:
        if required:
            raise BadRequest("request body is empty; expected a JSON object")
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def int_param(request: web.Request, name: str) -> int:
    """An id in the path; one that names no possible row (not 1 to 2^63 - 1) is a 404."""
    return path_id(request.match_info[name], name)


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The request body, or 413 when it is over `limit` bytes (checked before reading)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"request body is {request.content_length} bytes; the limit is {limit}",
            details={"limit_bytes": limit})
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes",
                              details={"limit_bytes": limit}) from None
