"""Reading a paged admin report: one place turns HTTP failures into `AdminApiError`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import aiohttp

MAX_PAGES = 10_000  # a cursor that never ends is an error, not a loop
ERROR_CHARS = 300


class AdminApiError(Exception):
    """A report could not be read: the message says which and why (never the key)."""


async def pages(session: aiohttp.ClientSession, url: str,
                params: Sequence[tuple[str, str]], headers: Mapping[str, str],
                timeout_s: float) -> AsyncIterator[dict[str, Any]]:
    """Every page of a report, following `next_page` while `has_more`; numbers are read as
    Decimal, so money stays exact."""
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        query = list(params) + ([("page", cursor)] if cursor else [])
        try:
            async with session.get(url, params=query, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                text = await resp.text()
                for secret in headers.values():  # an error body may echo the key
                    text = text.replace(secret, "[redacted]")
                if resp.status != 200:
                    raise AdminApiError(f"GET {url} answered {resp.status}: "
                                        f"{text[:ERROR_CHARS]}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdminApiError(f"GET {url} failed: {type(exc).__name__}: {exc}") from None
        try:
            page = json.loads(text, parse_float=Decimal)
        except ValueError:
            raise AdminApiError(f"GET {url} answered something that is not JSON") from None
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise AdminApiError(f"GET {url} answered a page without a data list")
        yield page
        cursor = page.get("next_page")
        if not page.get("has_more") or not cursor:
            return
        if cursor in seen:
            raise AdminApiError(f"GET {url}: the page cursor {cursor!r} came back twice")
        seen.add(cursor)
    raise AdminApiError(f"GET {url}: more than {MAX_PAGES} pages")


def whole(value: Any) -> int:
    """A token count as the reports give it (absent or null: 0)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise AdminApiError(f"expected a count, got {value!r}")
    return int(value)
