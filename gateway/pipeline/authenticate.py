"""Stage 1, authenticate: the project key in the request -> `Principal` (401 otherwise)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.domain import Principal
from gateway.errors import Unauthorized
from gateway.keystore import KeyStore


def extract_key(headers: Mapping[str, str]) -> str:
    """`Authorization: Bearer <key>` (OpenAI SDKs) or `x-api-key: <key>` (Anthropic SDKs)."""
    authorization = headers.get("Authorization")
    if authorization:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("Authorization header must be 'Bearer <project API key>'",
                               code="missing_api_key")
        return key.strip()
    other = headers.get("x-api-key") or headers.get("api-key")
    if other:
        return other.strip()
    raise Unauthorized("missing API key: send 'Authorization: Bearer <project API key>'",
                       code="missing_api_key")


async def authenticate(keys: KeyStore, headers: Mapping[str, str]) -> Principal:
    return await keys.authenticate(extract_key(headers))
