"""Admin API for a project's own provider credentials: stored sealed, never answered back."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from yarl import URL

from gateway import checks, credentials, projects
from gateway.errors import BadRequest, NotFound
from gateway.http.access import Access, caller
from gateway.http.database import connection
from gateway.http.json import int_param, json_response, read_json
from gateway.keys import CREDENTIALS, SETTINGS

_FIELDS = ("api_key", "name", "base_url", "weight", "options")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_KEY_CHARS = 8192
MAX_WEIGHT = 1_000_000
MAX_OPTIONS = 32


def parse_credential_body(body: Any, provider: str,
                          providers: Mapping[str, object]) -> dict[str, Any]:
    """Check a PUT body (and the provider in the path), naming every problem at once.

    Answers put_credential's keyword arguments. No message ever echoes the key.
    """
    body = checks.body_object(body)
    problems = checks.Problems()
    if provider not in providers:
        problems.add("provider", f"unknown provider {provider[:100]!r}; configured: "
                                 f"{', '.join(sorted(providers))}")
    checks.unknown_fields(body, _FIELDS, problems)
    api_key = body.get("api_key")
    if not isinstance(api_key, str) or not api_key.strip():
        problems.add("api_key", "is required: a non-empty string")
    elif len(api_key.strip()) > MAX_KEY_CHARS or not all(
            "!" <= c <= "~" for c in api_key.strip()):  # it goes into an HTTP header
        problems.add("api_key", f"must be at most {MAX_KEY_CHARS} printable ASCII characters "
                                "without spaces")
    name = body.get("name", "default")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        problems.add("name", "must be 1 to 64 letters, digits, '.', '_' or '-', starting with "
                             "a letter or digit")
    base_url = body.get("base_url")
    if base_url is not None and not _is_base_url(base_url):
        problems.add("base_url", "must be an http(s) URL with a host, or null for the "
                                 "provider's own")
    weight = checks.whole(body.get("weight", 1), "weight", problems, 0, MAX_WEIGHT)
    options = checks.string_map(
        body.get("options", {}), "options", problems, max_pairs=MAX_OPTIONS, max_key_chars=100,
        max_value_chars=2000, message=f"must be an object of at most {MAX_OPTIONS} string "
        "values under non-empty names, such as {\"api_version\": \"...\"}")
    problems.raise_if_any()
    assert isinstance(api_key, str)
    return {"name": name, "api_key": api_key.strip(), "weight": weight, "options": options,
            "base_url": base_url.rstrip("/") if base_url else None}


def _is_base_url(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 2000 or "\x00" in value:
        return False
    try:
        url = URL(value)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.host)


async def put_provider_credential(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    project_id = int_param(request, "id")
    provider = request.match_info["provider"]
    box = request.app[CREDENTIALS].box
    if box is None:
        raise BadRequest("storing provider credentials needs GATEWAY_SECRET_KEY (a secret of "
                         f"at least {credentials.MIN_SECRET_CHARS} characters) to encrypt "
                         "them; set it on every gateway replica", code="secret_key_missing",
                         details={"setting": "GATEWAY_SECRET_KEY"})
    fields = parse_credential_body(await read_json(request), provider,
                                   request.app[SETTINGS].providers)
    async with connection(request, writes_cached=True) as conn:
        view = await credentials.put_credential(conn, box, project_id, provider, **fields)
    return json_response(view)


async def list_provider_credentials(request: web.Request) -> web.Response:
    await caller(request, allow=Access.ADMIN)
    async with connection(request) as conn:
        views = await credentials.list_credentials(conn, int_param(request, "id"))
    return json_response({"data": views})


async def delete_provider_credential(request: web.Request) -> web.Response:
    """Any provider name is accepted here, so rows of a provider since unconfigured can go."""
    await caller(request, allow=Access.ADMIN)
    project_id = int_param(request, "id")
    provider = request.match_info["provider"]
    name = checks.text_param(checks.read_query(request.query, ("name",)), "name") or "default"
    if "\x00" in provider:
        raise NotFound(f"project {project_id} has no credential for that provider")
    async with connection(request, writes_cached=True) as conn:
        if not await credentials.delete_credential(conn, project_id, provider, name):
            await projects.get_project(conn, project_id)  # 404 naming the project first
            raise NotFound(f"project {project_id} has no {provider} credential named {name!r}")
    return web.Response(status=204)
