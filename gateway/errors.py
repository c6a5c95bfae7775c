"""One exception tree for everything the gateway answers with an error status.

Handlers and stages raise these; `middlewares.error_middleware` is the only place that turns
them into HTTP responses, in the shape of the path: a seed face's on its paths
(`http/faces/envelope.py`: meterr's on its `/v1` paths, CodingVibez's envelope on its), else
the path's entry's (`entries.error_shape`): Anthropic's on `/v1/messages`, OpenAI's on the
rest of `/v1/*`, the gateway's own on `/api/*`.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    status = 500
    code = "internal_error"
    openai_type = "api_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}
        if code is not None:
            self.code = code


class BadRequest(GatewayError):
    status = 400
    code = "invalid_request"
    openai_type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    code = "invalid_api_key"
    openai_type = "authentication_error"


class PaymentRequired(GatewayError):
    status = 402
    code = "budget_exceeded"
    openai_type = "insufficient_quota"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"
    openai_type = "permission_error"


class NotFound(GatewayError):
    status = 404
    code = "not_found"
    openai_type = "not_found_error"


class Unprocessable(GatewayError):
    status = 422
    code = "unprocessable"
    openai_type = "invalid_request_error"


class Conflict(GatewayError):
    status = 409
    code = "conflict"
    openai_type = "invalid_request_error"


class RequestTimeout(GatewayError):
    status = 408
    code = "request_timeout"
    openai_type = "invalid_request_error"


class TooManyRequests(GatewayError):
    status = 429
    code = "rate_limit_exceeded"
    openai_type = "rate_limit_error"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "request_too_large"
    openai_type = "invalid_request_error"


class ServiceUnavailable(GatewayError):
    status = 503
    code = "service_unavailable"
    openai_type = "api_error"


class BadGateway(GatewayError):
    """The upstream answered something the gateway cannot use, or could not be reached."""

    status = 502
    code = "bad_gateway"
    openai_type = "api_error"


class UpstreamTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"
    openai_type = "timeout_error"


class UpstreamStatusError(GatewayError):
    """The upstream answered an error status; it is relayed with the upstream's message."""

    code = "upstream_error"

    def __init__(self, status: int, message: str, *, openai_type: str = "api_error",
                 details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, details=details, headers=headers)
        self.status = status
        self.openai_type = openai_type
