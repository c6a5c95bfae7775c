"""The faces' answers: meterr's error shape, and CodingVibez's `{success, data, timestamp,
requestId}` envelope with its error codes and camelCase fields."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from gateway.entries.base import ErrorShape
from gateway.http.analytics import exact_json
from gateway.http.faces import CODINGVIBEZ, METERR, face_of
from gateway.keys import REQUEST_ID

# CodingVibez's codes by status (its list: VALIDATION_ERROR, AUTHENTICATION_ERROR, ...).
CODINGVIBEZ_CODES = {400: "VALIDATION_ERROR", 401: "AUTHENTICATION_ERROR",
                     402: "PAYMENT_REQUIRED", 403: "AUTHORIZATION_ERROR", 404: "NOT_FOUND",
                     405: "METHOD_NOT_ALLOWED", 408: "VALIDATION_ERROR", 409: "CONFLICT",
                     413: "VALIDATION_ERROR", 429: "RATE_LIMIT_EXCEEDED",
                     502: "INTEGRATION_ERROR", 504: "INTEGRATION_ERROR"}
FRESH = timedelta(minutes=15)
STALE = timedelta(minutes=60)
_CAMEL = re.compile(r"_([a-z0-9])")


class MeterrErrors:
    """meterr's error shape: `{"error": {"code", "message", "details"}}`."""

    def body(self, request_id: str, status: int, code: str, message: str, openai_type: str,
             details: dict[str, Any]) -> bytes:
        return orjson.dumps({"error": {"code": code, "message": message, "details": details}},
                            default=str)


class CodingVibezErrors:
    """CodingVibez's error shape: `{success: false, error, code, requestId}`; the gateway's
    own code and details ride along as `reason` and `details`."""

    def body(self, request_id: str, status: int, code: str, message: str, openai_type: str,
             details: dict[str, Any]) -> bytes:
        if code == "database_unavailable":
            face_code = "DATABASE_ERROR"
        else:
            face_code = CODINGVIBEZ_CODES.get(status, "INTERNAL_ERROR" if status >= 500
                                              else "VALIDATION_ERROR")
        return orjson.dumps({"success": False, "error": message, "code": face_code,
                             "requestId": request_id, "reason": code, "details": details},
                            default=str)


SHAPES: dict[str, ErrorShape] = {METERR: MeterrErrors(), CODINGVIBEZ: CodingVibezErrors()}


def face_error_shape(path: str) -> ErrorShape | None:
    """The error shape of the face `path` belongs to, or None (the gateway's own choice)."""
    face = face_of(path)
    return None if face is None else SHAPES[face]


def camel(value: Any) -> Any:
    """The same data with snake_case keys in camelCase, recursively."""
    if isinstance(value, dict):
        return {_CAMEL.sub(lambda m: m.group(1).upper(), str(k)) if isinstance(k, str) else k:
                camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [camel(v) for v in value]
    return value


def envelope(request: web.Request, data: Any, status: int = 200) -> web.Response:
    """A CodingVibez success: `{success: true, data, timestamp, requestId}`."""
    return exact_json({"success": True, "data": data, "timestamp": datetime.now(UTC),
                       "requestId": str(request[REQUEST_ID])}, status=status)


def freshness(last: datetime | None, now: datetime) -> str:
    """CodingVibez's data freshness: fresh under 15 minutes, stale to 60, very_stale beyond,
    no_data without a record."""
    if last is None:
        return "no_data"
    age = now - last
    return "fresh" if age < FRESH else "stale" if age <= STALE else "very_stale"
