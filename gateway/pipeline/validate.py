"""Stage 2, validate: what every entry's request shares (413 when too big, 400 otherwise).

The body must be one JSON object; each entry shape (`gateway/entries/`) checks its own fields
into the canonical `ChatRequest`. The `X-Request-Id` idempotency key and the metadata header
are read here, for every entry alike.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway import checks
from gateway.checks import Problems, kind
from gateway.errors import BadRequest, PayloadTooLarge

MAX_REQUEST_ID = 128


def parse_json_object(body: bytes, max_bytes: int) -> dict[str, Any]:
    """A request body that must be one JSON object of at most `max_bytes` (413 / 400)."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {max_bytes}",
                              details={"limit_bytes": max_bytes})
    if not body:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"request body must be a JSON object, not {kind(data)}")
    return data


def client_request_id(value: str | None) -> str | None:
    """`X-Request-Id`: the client's idempotency key, at most 128 characters."""
    if value is None:
        return None
    if not value.strip() or len(value) > MAX_REQUEST_ID:
        raise BadRequest(f"X-Request-Id must be 1 to {MAX_REQUEST_ID} characters",
                         details={"field": "X-Request-Id", "length": len(value)})
    return value


def parse_metadata_header(value: str | None) -> dict[str, Any]:
    """`X-AI-Cost-Gateway-Metadata: {json}`: metadata for SDKs that cannot add body fields."""
    if not value:
        return {}
    errors = Problems()
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise checks.invalid("X-AI-Cost-Gateway-Metadata", "must be a JSON object") from None
    checks.json_object(data, "X-AI-Cost-Gateway-Metadata", errors,
                       max_bytes=checks.MAX_METADATA_BYTES, nul_ok=True)
    errors.raise_if_any()
    return dict(data)
