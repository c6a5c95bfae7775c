"""Embeddings, one adapter per provider API, behind the same `ProviderAdapter` protocol as
chat: the request is OpenAI's embeddings body (`ChatRequest.body`), the answer OpenAI's
`{"object": "list", "data": [...], "model", "usage"}`.

- OpenAI, OpenAI-compatible servers, Azure (deployment URLs) and Mistral speak OpenAI's
  embeddings wire: the body is sent as it is (Mistral names `dimensions` `output_dimension`)
  and the answer is relayed byte for byte.
- Gemini (`:embedContent`, `:batchEmbedContents`) and Cohere (`/v2/embed`) are translated;
  their float vectors are encoded as little-endian float32 base64 when the client asked for
  base64 (as the OpenAI SDK does by default). Token arrays cannot be sent to them (400).
- Anthropic has no embeddings API: 400 before anything is sent.

`EndpointUpstream` is a provider's `Upstream` with one of these adapters, sharing the
provider's session, settings, credentials and circuit breaker.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson

from gateway.domain import NO_USAGE, ChatRequest, Usage
from gateway.errors import BadRequest, UpstreamStatusError
from gateway.providers.base import (
    Credential,
    ProviderAdapter,
    StreamTranslator,
    Upstream,
    UpstreamCall,
    untranslatable,
)
from gateway.providers.http1 import Http1Client
from gateway.providers.openai import OpenAIAdapter

DEFAULT_INPUT_TYPE = "search_document"  # Cohere requires one; what an index stores


class EndpointUpstream(Upstream):
    """A provider's upstream reached through another adapter (another endpoint of its API)."""

    def __init__(self, base: Upstream, adapter: ProviderAdapter) -> None:
        super().__init__(adapter, base.settings, base.credentials)
        self._base = base

    @property
    def session(self) -> Any:
        return self._base.session

    @property
    def http1(self) -> Http1Client:
        return self._base.http1


def embeddings_upstream(upstream: Upstream) -> Upstream:
    """The provider's upstream as an embeddings endpoint."""
    return EndpointUpstream(upstream, embeddings_adapter(upstream.adapter))


def embeddings_adapter(chat: ProviderAdapter) -> ProviderAdapter:
    """The embeddings adapter of the provider that `chat` (its chat adapter) talks to."""
    if isinstance(chat, OpenAIAdapter):
        return OpenAIEmbeddings(chat)
    if chat.wire == "gemini":
        return GeminiEmbeddings(chat)
    if chat.wire == "cohere":
        return CohereEmbeddings(chat)
    return NoEmbeddings(chat)


def texts_of(body: dict[str, Any]) -> list[str] | None:
    """The input as strings, or None when it holds token arrays."""
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def encode_vector(values: list[float], encoding_format: Any) -> list[float] | str:
    """A vector as the client asked for it: floats, or little-endian float32 base64."""
    if encoding_format != "base64":
        return values
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def embedding_list(vectors: list[list[float]], chat: ChatRequest) -> dict[str, Any]:
    """OpenAI's embeddings answer (usage is added by the entry, from the metered usage)."""
    fmt = chat.body.get("encoding_format")
    return {"object": "list", "model": str(chat.body.get("model") or chat.model),
            "data": [{"object": "embedding", "index": n, "embedding": encode_vector(v, fmt)}
                     for n, v in enumerate(vectors)]}


class _Translated:
    """What every embeddings adapter shares: no streams, errors as the chat adapter maps them."""

    def __init__(self, chat: ProviderAdapter) -> None:
        self._chat = chat
        self.name = chat.name
        self.wire = chat.wire

    def stream_translator(self, chat: ChatRequest) -> StreamTranslator:
        raise BadRequest("embeddings are not streamed", code="invalid_request")

    def stream_usage(self, event: dict[str, Any]) -> Usage | None:
        return None

    def map_error(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamStatusError:
        return self._chat.map_error(status, body, headers)

    def _strings(self, chat: ChatRequest) -> list[str]:
        texts = texts_of(chat.body)
        if texts is None:
            raise untranslatable("input token arrays", self.name,
                                 "its embeddings API takes text only")
        return texts


class OpenAIEmbeddings(_Translated):
    """OpenAI's `/embeddings`, which Azure, Mistral and compatible servers share."""

    def __init__(self, chat: OpenAIAdapter) -> None:
        super().__init__(chat)
        self._openai = chat

    def build_call(self, chat: ChatRequest, credential: Credential) -> UpstreamCall:
        adapter = self._openai
        adapter.require_key(credential)
        url = adapter.url(credential, chat).replace("/chat/completions", "/embeddings", 1)
        body = chat.body
        if adapter.settings.kind == "mistral":  # no `user`; the size is `output_dimension`
            body = {k: v for k, v in body.items() if k not in ("dimensions", "user")}
            if chat.body.get("dimensions") is not None:
                body["output_dimension"] = chat.body["dimensions"]
        return UpstreamCall(url, adapter.headers(credential), orjson.dumps(body))

    def parse_response(self, body: bytes) -> tuple[Usage, str | None]:
        data = _embedding_object(body)
        usage = data.get("usage")
        model = data.get("model")
        model = model if isinstance(model, str) else None
        if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
            return Usage(input_source="none"), model  # a server that reports none: counted
        return Usage(input_tokens=max(usage["prompt_tokens"], 0)), model

    def to_openai(self, body: bytes, chat: ChatRequest) -> dict[str, Any]:
        return _embedding_object(body)


class GeminiEmbeddings(_Translated):
    """Gemini's `models/{model}:embedContent` (one text) and `:batchEmbedContents`."""

    def build_call(self, chat: ChatRequest, credential: Credential) -> UpstreamCall:
        # The chat adapter checks the key and builds the URL and headers; only the method
        # and the body differ.
        base = self._chat.build_call(_stub(chat), credential)
        texts = self._strings(chat)
        model = str(chat.body.get("model") or chat.model).removeprefix("models/")
        dims = chat.body.get("dimensions")
        single = isinstance(chat.body.get("input"), str)

        def request(text: str) -> dict[str, Any]:
            req: dict[str, Any] = {"model": f"models/{model}",
                                   "content": {"parts": [{"text": text}]}}
            if dims is not None:
                req["outputDimensionality"] = dims
            return req

        prefix = base.url.rpartition(":")[0]
        if single:
            req = request(texts[0])
            del req["model"]
            return UpstreamCall(f"{prefix}:embedContent", base.headers, orjson.dumps(req))
        payload = {"requests": [request(t) for t in texts]}
        return UpstreamCall(f"{prefix}:batchEmbedContents", base.headers,
                            orjson.dumps(payload))

    def parse_response(self, body: bytes) -> tuple[Usage, str | None]:
        data = _vectors(body, _gemini_vectors)[0]
        meta = data.get("usageMetadata")
        if isinstance(meta, dict) and isinstance(meta.get("promptTokenCount"), int):
            return Usage(input_tokens=meta["promptTokenCount"]), None
        return Usage(input_source="none"), None  # Gemini reports none: counted

    def to_openai(self, body: bytes, chat: ChatRequest) -> dict[str, Any]:
        return embedding_list(_vectors(body, _gemini_vectors)[1], chat)


class CohereEmbeddings(_Translated):
    """Cohere's `POST /v2/embed`; its usage is `meta.billed_units.input_tokens`."""

    def build_call(self, chat: ChatRequest, credential: Credential) -> UpstreamCall:
        base = self._chat.build_call(_stub(chat), credential)
        headers = {**base.headers, "Accept": "application/json"}
        payload: dict[str, Any] = {
            "model": str(chat.body.get("model") or chat.model), "texts": self._strings(chat),
            "input_type": DEFAULT_INPUT_TYPE, "embedding_types": ["float"]}
        if chat.body.get("dimensions") is not None:
            payload["output_dimension"] = chat.body["dimensions"]
        url = base.url.removesuffix("/v2/chat") + "/v2/embed"
        return UpstreamCall(url, headers, orjson.dumps(payload))

    def parse_response(self, body: bytes) -> tuple[Usage, str | None]:
        data = _vectors(body, _cohere_vectors)[0]
        meta = data.get("meta")
        billed = meta.get("billed_units") if isinstance(meta, dict) else None
        if isinstance(billed, dict) and isinstance(billed.get("input_tokens"), int | float):
            return Usage(input_tokens=int(billed["input_tokens"])), None
        return Usage(input_source="none"), None

    def to_openai(self, body: bytes, chat: ChatRequest) -> dict[str, Any]:
        return embedding_list(_vectors(body, _cohere_vectors)[1], chat)


class NoEmbeddings(_Translated):
    """A provider without an embeddings API (Anthropic)."""

    def build_call(self, chat: ChatRequest, credential: Credential) -> UpstreamCall:
        raise BadRequest(f"provider {self.name} has no embeddings API; use a model of OpenAI, "
                         "Azure, Gemini, Mistral, Cohere or an OpenAI-compatible server",
                         code="unsupported_endpoint",
                         details={"provider": self.name, "model": chat.model})

    def parse_response(self, body: bytes) -> tuple[Usage, str | None]:
        return NO_USAGE, None

    def to_openai(self, body: bytes, chat: ChatRequest) -> dict[str, Any]:
        raise ValueError("no embeddings API")


def _stub(chat: ChatRequest) -> ChatRequest:
    """A one-message chat to the same model, so a chat adapter builds its URL and headers."""
    return ChatRequest(entry=chat.entry, provider=chat.provider, model=chat.model,
                       body={"model": chat.body.get("model") or chat.model,
                             "messages": [{"role": "user", "content": "-"}]},
                       stream=False, include_usage=False, max_output_tokens=None)


def _embedding_object(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)  # JSONDecodeError is a ValueError
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError("not an embeddings list object")
    return data


def _vectors(body: bytes, pick: Any) -> tuple[dict[str, Any], list[list[float]]]:
    data = orjson.loads(body)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    vectors = pick(data)
    if not isinstance(vectors, list) or not all(
            isinstance(v, list) and all(isinstance(x, int | float) for x in v) for v in vectors):
        raise ValueError("no embedding vectors in the answer")
    return data, vectors


def _gemini_vectors(data: dict[str, Any]) -> Any:
    if isinstance(data.get("embedding"), dict):
        return [data["embedding"].get("values")]
    items = data.get("embeddings")
    return [e.get("values") if isinstance(e, dict) else None for e in items] if isinstance(
        items, list) else None


def _cohere_vectors(data: dict[str, Any]) -> Any:
    embeddings = data.get("embeddings")
    return embeddings.get("float") if isinstance(embeddings, dict) else embeddings
