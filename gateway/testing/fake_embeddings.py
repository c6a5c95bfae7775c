"""Embeddings in each provider's wire format, for the fake upstream.

* ``POST /v1/embeddings``: OpenAI (and Mistral, which shares the path, names the size
  ``output_dimension`` and has no ``dimensions``); ``encoding_format`` float or base64
  (little-endian float32).
* ``POST /openai/deployments/{deployment}/embeddings?api-version=...``: Azure OpenAI.
* ``POST /v1beta/models/{model}:embedContent`` and ``:batchEmbedContents``: Gemini, which
  reports no usage (dispatched from ``fake_gemini.models_action``).
* ``POST /v2/embed``: Cohere v2, usage in ``meta.billed_units.input_tokens``.

Vectors are deterministic: component j of a text's vector is drawn from SHA-256 of
"{j}:{text}" (token arrays: their ids joined by commas), ``DEFAULT_DIMENSIONS`` long unless
the request asks for another size. Token rule (what the fake bills): cl100k_base tokens of each
string (as OpenAI's embedding models count), plus the length of each token array.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import struct
import uuid
from typing import Any

import tiktoken
from aiohttp import web

from gateway.testing import fake_gemini
from gateway.testing.fake_behaviour import Turn, body_response, open_turn
from gateway.testing.fake_cohere import cohere_error
from gateway.testing.fake_gemini import google_error
from gateway.testing.fake_openai import MISTRAL_PREFIXES, open_azure_turn, openai_error

DEFAULT_DIMENSIONS = 8


@functools.cache
def cl100k() -> tiktoken.Encoding:
    from gateway.tokens.encodings import load_encoding  # offline, from the bundled BPE file

    return load_encoding("cl100k_base")


def items_of(value: Any) -> list[str | list[int]]:
    """An OpenAI ``input`` as its items: strings and token arrays."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [value]
    return list(value) if isinstance(value, list) else []


def billed_tokens(items: list[str | list[int]]) -> int:
    """What the fake bills for these inputs (the module's token rule)."""
    encode = cl100k().encode_ordinary
    return sum(len(encode(i)) if isinstance(i, str) else len(i) for i in items)


def vector(item: str | list[int], dimensions: int) -> list[float]:
    """The item's deterministic vector, each component exact in float32."""
    text = item if isinstance(item, str) else ",".join(map(str, item))
    out = []
    for j in range(dimensions):
        digest = hashlib.sha256(f"{j}:{text}".encode()).digest()
        out.append(round(int.from_bytes(digest[:2]) / 65535 * 2 - 1, 4))
    return [struct.unpack("<f", struct.pack("<f", x))[0] for x in out]


def _size(value: Any) -> int | str:
    if value is None:
        return DEFAULT_DIMENSIONS
    if type(value) is not int or not 1 <= value <= 4096:
        return "dimensions must be a whole number from 1 to 4096."
    return value


def openai_answer(body: Any, model: str, size_field: str) -> dict[str, Any] | str:
    """OpenAI's embeddings answer for a request body, or the problem with it."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request."
    items = items_of(body.get("input"))
    if not items:
        return "'input' is required."
    size = _size(body.get(size_field))
    if isinstance(size, str):
        return size
    fmt = body.get("encoding_format", "float")
    data = []
    for n, item in enumerate(items):
        values = vector(item, size)
        embedding: Any = values
        if fmt == "base64":
            embedding = base64.b64encode(struct.pack(f"<{size}f", *values)).decode()
        data.append({"object": "embedding", "index": n, "embedding": embedding})
    tokens = billed_tokens(items)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


async def embeddings(request: web.Request) -> web.StreamResponse:
    """``POST /v1/embeddings`` (OpenAI and Mistral)."""
    turn = await open_turn(request, openai_error)
    if not isinstance(turn, Turn):
        return turn
    model = turn.body.get("model") if isinstance(turn.body, dict) else None
    if not isinstance(model, str) or not model:
        return openai_error(400, "'model' is required.")
    mistral = model.startswith(MISTRAL_PREFIXES)  # Mistral shares the path
    answer = openai_answer(turn.body, model, "output_dimension" if mistral else "dimensions")
    if isinstance(answer, str):
        return openai_error(400, answer)
    if turn.behaviour.get("no_usage"):
        del answer["usage"]
    return body_response(answer, turn.behaviour)


async def azure_embeddings(request: web.Request) -> web.StreamResponse:
    """``POST /openai/deployments/{deployment}/embeddings?api-version=...``."""
    turn = await open_azure_turn(request)
    if not isinstance(turn, Turn):
        return turn
    deployment = request.match_info["deployment"]
    model = turn.body.get("model") if isinstance(turn.body, dict) else None
    answer = openai_answer(turn.body, model or deployment, "dimensions")
    if isinstance(answer, str):
        return openai_error(400, answer)
    return body_response(answer, turn.behaviour)


async def gemini_embed(request: web.Request, model: str, *, batch: bool) -> web.StreamResponse:
    """``:embedContent`` ({"embedding": {"values"}}) and ``:batchEmbedContents``."""
    turn = await open_turn(request, google_error)
    if not isinstance(turn, Turn):
        return turn
    if "x-goog-api-key" not in request.headers and "key" not in request.query:
        return google_error(403, "Method doesn't allow unregistered callers.")
    body = turn.body if isinstance(turn.body, dict) else {}
    requests = body.get("requests") if batch else [body]
    if not isinstance(requests, list) or not requests:
        return google_error(400, "requests must not be empty.")
    vectors = []
    for req in requests:
        parts = (req.get("content") or {}).get("parts") if isinstance(req, dict) else None
        texts = [p.get("text") for p in parts or () if isinstance(p, dict)]
        if not texts or not all(isinstance(t, str) for t in texts):
            return google_error(400, "content must hold text parts.")
        text = "".join(str(t) for t in texts)
        if batch and req.get("model") != f"models/{model}":
            return google_error(400, "Each request's model must match the batch's model.")
        size = _size(req.get("outputDimensionality"))
        if isinstance(size, str):
            return google_error(400, size)
        vectors.append({"values": vector(text, size)})
    answer = {"embeddings": vectors} if batch else {"embedding": vectors[0]}
    return body_response(answer, turn.behaviour)


async def cohere_embed(request: web.Request) -> web.StreamResponse:
    """``POST /v2/embed``."""
    turn = await open_turn(request, cohere_error)
    if not isinstance(turn, Turn):
        return turn
    body = turn.body if isinstance(turn.body, dict) else {}
    texts = body.get("texts")
    if not isinstance(body.get("model"), str):
        return cohere_error(400, "model is required")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return cohere_error(400, "texts must be a non-empty list of strings")
    if body.get("input_type") not in ("search_document", "search_query", "classification",
                                      "clustering"):
        return cohere_error(400, "input_type is required for embed models v3 and higher")
    size = _size(body.get("output_dimension"))
    if isinstance(size, str):
        return cohere_error(400, size)
    answer: dict[str, Any] = {
        "id": str(uuid.uuid4()), "response_type": "embeddings_by_type",
        "embeddings": {"float": [vector(t, size) for t in texts]}, "texts": texts,
        "meta": {"api_version": {"version": "2"},
                 "billed_units": {"input_tokens": billed_tokens(list(texts))}}}
    if turn.behaviour.get("no_usage"):
        del answer["meta"]
    return body_response(answer, turn.behaviour)


async def gemini_models_action(request: web.Request) -> web.StreamResponse:
    """``POST /v1beta/models/{model}:{method}``: the embedding methods here, the rest as
    ``fake_gemini`` answers them."""
    model, _, method = request.match_info["target"].rpartition(":")
    if method in ("embedContent", "batchEmbedContents") and model:
        return await gemini_embed(request, model, batch=method == "batchEmbedContents")
    return await fake_gemini.models_action(request)
