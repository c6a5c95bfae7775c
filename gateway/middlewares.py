"""Request ids and error rendering: the only place errors become HTTP responses."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import GatewayError
from gateway.keys import REQUEST_ID, SETTINGS

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER = "X-AI-Cost-Gateway-Request-Id"
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def error_body(path: str, request_id: str, status: int, code: str, message: str,
               openai_type: str, details: dict[str, Any]) -> bytes:
    """The OpenAI error shape on `/v1/*`, the gateway shape everywhere else."""
    if path.startswith("/v1/"):
        return orjson.dumps({"error": {"message": message, "type": openai_type, "code": code,
                                       "param": details.get("field")}})
    return orjson.dumps({"error": message, "code": code, "requestId": request_id,
                         "details": details}, default=str)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = uuid.uuid4()
    request[REQUEST_ID] = request_id
    structlog.contextvars.bind_contextvars(request_id=str(request_id))
    try:
        return await handler(request)
    except GatewayError as exc:
        if exc.status >= 500:
            log.warning("request_failed", status=exc.status, code=exc.code, error=exc.message)
        return _render(request, exc.status, exc.code, exc.message, exc.openai_type,
                       exc.details, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.text or exc.reason
        if exc.status == 404:
            message = f"no route for {request.method} {request.path}"
        elif exc.status == 413:
            limit = request.app[SETTINGS].server.max_body_bytes
            message = f"request body is too large; the limit is {limit} bytes"
        kind = "not_found_error" if exc.status == 404 else (
            "invalid_request_error" if exc.status < 500 else "api_error")
        return _render(request, exc.status, code, message, kind, {}, {})
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return _render(request, 500, "internal_error", "internal gateway error", "api_error",
                       {}, {})
    finally:
        structlog.contextvars.unbind_contextvars("request_id")


def _render(request: web.Request, status: int, code: str, message: str, openai_type: str,
            details: dict[str, Any], headers: dict[str, str]) -> web.Response:
    body = error_body(request.path, str(request[REQUEST_ID]), status, code, message,
                      openai_type, details)
    return web.Response(status=status, body=body, content_type="application/json",
                        headers=headers)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every response, streamed ones too, carries the request id."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = str(request_id)
