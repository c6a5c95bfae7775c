"""OpenAI Chat Completions (and any server that speaks it)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.domain import NO_USAGE, ChatRequest, Usage
from gateway.errors import BadRequest, UpstreamStatusError
from gateway.providers.base import UpstreamCall
from gateway.settings import ProviderSettings

_OFFICIAL_HOSTS = frozenset({"api.openai.com"})


class OpenAIAdapter:
    name = "openai"

    def __init__(self, settings: ProviderSettings) -> None:
        self._url = settings.base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if settings.api_key:
            self._headers["Authorization"] = f"Bearer {settings.api_key}"
        self._needs_key = urlsplit(settings.base_url).hostname in _OFFICIAL_HOSTS
        self._has_key = bool(settings.api_key)

    def build_call(self, chat: ChatRequest) -> UpstreamCall:
        if self._needs_key and not self._has_key:
            raise BadRequest("no credential is configured for provider openai: set OPENAI_API_KEY",
                             code="missing_provider_credential")
        body = chat.body
        if chat.stream:
            # Always ask for usage so streams are metered; the usage chunk is removed again
            # before the client sees it when the client did not ask for it itself.
            options = body.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            options["include_usage"] = True
            body = {**body, "stream_options": options}
        return UpstreamCall(self._url, self._headers, orjson.dumps(body))

    def parse_response(self, body: bytes) -> tuple[Usage, str | None]:
        data = orjson.loads(body)  # JSONDecodeError is a ValueError
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise ValueError("not a chat completion object")
        usage = self.stream_usage(data)
        model = data.get("model")
        return usage or NO_USAGE, model if isinstance(model, str) else None

    def stream_usage(self, event: dict[str, Any]) -> Usage | None:
        usage = event.get("usage")
        if not isinstance(usage, dict):
            return None
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        return Usage(input_tokens=_count(usage.get("prompt_tokens")),
                     cached_input_tokens=_count(cached),
                     output_tokens=_count(usage.get("completion_tokens")))

    def map_error(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamStatusError:
        error: Any = None
        try:
            error = orjson.loads(body).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            pass
        if isinstance(error, dict):
            message = str(error.get("message") or f"upstream answered {status}")
            kind = str(error.get("type") or "api_error")
        else:
            message = body[:500].decode("utf-8", "replace").strip() or f"upstream answered {status}"
            kind, error = "api_error", None
        relay = {k: v for k, v in headers.items() if k.lower() == "retry-after"}
        return UpstreamStatusError(
            status, f"openai upstream error {status}: {message}", openai_type=kind,
            details={"provider": self.name, "upstream_status": status, "upstream_error": error},
            headers=relay)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
