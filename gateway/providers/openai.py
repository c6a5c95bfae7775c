"""OpenAI Chat Completions, and any server that speaks it (`kind = "openai_compatible"`:
vLLM, Ollama, DeepSeek, Groq, OpenRouter, ...). Azure and Mistral adapt it in their own files.

On this wire the OpenAI-shaped body is the request: it is sent as it is (with usage asked for
on streams), and answers need no translation for the OpenAI entry shapes.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.domain import NO_USAGE, ChatRequest, Usage
from gateway.errors import BadGateway, UpstreamStatusError
from gateway.providers.base import (
    Credential,
    UpstreamCall,
    body_message,
    require_key,
    upstream_error,
    url_host,
)
from gateway.providers.openai_responses import RESPONSES_WIRE, OpenAIResponsesAdapter
from gateway.settings import ProviderSettings

# Hosts that certainly need a key: calling them without one is answered 400 here, at once.
_KEYED_HOSTS = {"api.openai.com": "OPENAI_API_KEY", "api.mistral.ai": "MISTRAL_API_KEY"}


class OpenAIAdapter:
    wire = "openai"
    key_env = "OPENAI_API_KEY"

    def __init__(self, settings: ProviderSettings, name: str = "openai") -> None:
        self.name = name
        self.settings = settings

    def build_call(self, chat: ChatRequest, credential: Credential) -> UpstreamCall:
        self.require_key(credential)
        return UpstreamCall(self.url(credential, chat), self.headers(credential),
                            orjson.dumps(self.request_body(chat)))

    def relay(self, wire: str) -> OpenAIResponsesAdapter | None:
        """OpenAI's own API also serves the Responses wire (compatible servers, Azure and
        Mistral get Responses requests translated to chat completions)."""
        if wire == RESPONSES_WIRE and self.settings.kind == "openai":
            return OpenAIResponsesAdapter(self)
        return None

    def require_key(self, credential: Credential) -> None:
        env = _KEYED_HOSTS.get(url_host(credential.base_url), self.key_env)
        require_key(self.name, credential, _KEYED_HOSTS, env)

    def url(self, credential: Credential, chat: ChatRequest) -> str:
        return credential.base_url.rstrip("/") + (chat.upstream_path or "/chat/completions")

    def headers(self, credential: Credential) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if credential.api_key:
            headers["Authorization"] = f"Bearer {credential.api_key}"
        return headers

    def request_body(self, chat: ChatRequest) -> dict[str, Any]:
        body = chat.body
        if (self.settings.kind == "openai_compatible" and chat.entry_wire != "openai"
                and "max_completion_tokens" in body):
            # A translated request: servers such as Ollama know only the older name.
            body = {k: v for k, v in body.items() if k != "max_completion_tokens"}
            body["max_tokens"] = chat.body["max_completion_tokens"]
        if chat.stream:
            # Always ask for usage so streams are metered; the usage chunk is removed again
            # before the client sees it when the client did not ask for it itself.
            options = body.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            options["include_usage"] = True
            body = {**body, "stream_options": options}
        return body

    def parse_response(self, body: bytes) -> tuple[Usage, str | None]:
        data = self._completion(body)
        model = data.get("model")
        return self.stream_usage(data) or NO_USAGE, model if isinstance(model, str) else None

    def to_openai(self, body: bytes, chat: ChatRequest) -> dict[str, Any]:
        return self._completion(body)

    def _completion(self, body: bytes) -> dict[str, Any]:
        data = orjson.loads(body)  # JSONDecodeError is a ValueError
        if not isinstance(data, dict) or not (isinstance(data.get("choices"), list)
                                              or isinstance(data.get("results"), list)):
            raise ValueError("not a completion or moderation object")
        return data

    def stream_translator(self, chat: ChatRequest) -> OpenAIStreamTranslator:
        return OpenAIStreamTranslator(self)

    def stream_usage(self, event: dict[str, Any]) -> Usage | None:
        usage = event.get("usage")
        if not isinstance(usage, dict):
            return None
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        # Positional (input, cached input, output tokens): every OpenAI answer makes one.
        return Usage(_count(usage.get("prompt_tokens")), _count(cached),
                     _count(usage.get("completion_tokens")))

    def map_error(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamStatusError:
        error: Any = None
        try:
            error = orjson.loads(body).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            pass
        if isinstance(error, dict):
            message = str(error.get("message") or f"upstream answered {status}")
            kind = str(error.get("type") or "api_error")
        elif isinstance(error, str):  # some compatible servers answer {"error": "text"}
            message, kind = error, "api_error"
        else:
            message, kind, error = body_message(body, status), "api_error", None
        return upstream_error(self.name, status, message, kind, error, headers)


class OpenAIStreamTranslator:
    """OpenAI chunks are already the pivot: pass them on, keep usage and model."""

    def __init__(self, adapter: OpenAIAdapter) -> None:
        self._adapter = adapter
        self.usage: Usage = NO_USAGE
        self.model: str | None = None

    def feed(self, event: str | None, data: Any) -> list[dict[str, Any]]:
        if not isinstance(data, dict):
            return []
        if isinstance(data.get("error"), dict | str):
            raise BadGateway(f"{self._adapter.name} upstream stream failed: {data['error']}",
                             code="upstream_stream_error",
                             details={"provider": self._adapter.name})
        if isinstance(data.get("model"), str) and data["model"]:
            self.model = data["model"]
        usage = self._adapter.stream_usage(data)
        if usage is not None:
            self.usage = usage
        if not data.get("choices") and usage is None:
            return []  # Azure's content-filter preamble: nothing a client needs
        return [data]

    def close(self) -> list[dict[str, Any]]:
        return []


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
