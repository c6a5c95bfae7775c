"""What the fake provider tests share: scripting the fake and reading its raw wire formats."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.tokens.encodings import load_encoding

O200K = load_encoding("o200k_base")  # offline, from the bundled BPE file
DEFAULT_REPLY = " ".join(f"w{i}" for i in range(1, 13))


def toks(*texts: str) -> int:
    """o200k tokens of each text, summed (the fakes' counting unit)."""
    return sum(len(O200K.encode_ordinary(text)) for text in texts)


async def script(client: TestClient, *behaviours: dict[str, Any]) -> None:
    resp = await client.post("/_fake/script", json=list(behaviours))
    assert resp.status == 200, await resp.text()


def sse_events(raw: bytes, separator: bytes = b"\n\n") -> list[dict[str, str]]:
    """Each SSE event as its fields (``event``, ``data``), split strictly on ``separator``."""
    line_end = separator[: len(separator) // 2]
    events = []
    for block in raw.split(separator):
        if not block:
            continue
        fields: dict[str, str] = {}
        for line in block.split(line_end):
            name, _, value = line.decode().partition(": ")
            assert name in ("event", "data"), block
            fields[name] = value
        events.append(fields)
    return events


async def read_until_cut(resp: aiohttp.ClientResponse) -> bytes:
    """The body of a response whose connection the fake closes mid-stream."""
    received = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async for data in resp.content.iter_any():
            received += data
    return bytes(received)
