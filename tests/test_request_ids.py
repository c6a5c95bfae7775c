"""Request ids: unique, and their text made without the uuid module is str(uuid)."""

from __future__ import annotations

import copy
import itertools
import pickle
import uuid

import orjson
import pytest
from aiohttp.test_utils import TestClient
from conftest import chat_body, create_project

from gateway.middlewares import REQUEST_ID_HEADER, request_ids, request_ids_and_texts


def test_the_text_of_every_request_id_is_its_uuid_text() -> None:
    pairs = list(itertools.islice(request_ids_and_texts(), 70_000))  # past 0xffff
    assert all(str(request_id) == text for request_id, text in pairs)
    assert len({request_id for request_id, _ in pairs}) == len(pairs)


def test_a_request_id_is_the_uuid_the_uuid_module_makes() -> None:
    request_id, _ = next(request_ids_and_texts())
    made = uuid.UUID(int=request_id.int)
    assert type(request_id) is uuid.UUID and request_id == made and hash(request_id) == hash(made)
    assert (str(request_id), repr(request_id), request_id.bytes, request_id.is_safe) == (
        str(made), repr(made), made.bytes, made.is_safe)
    assert pickle.loads(pickle.dumps(request_id)) == made and copy.copy(request_id) == made
    assert orjson.dumps(request_id) == orjson.dumps(made)
    with pytest.raises(TypeError):
        request_id.int = 0  # type: ignore[misc]  # immutable, as any UUID


def test_each_process_counter_starts_from_its_own_random_prefix() -> None:
    a, b = next(request_ids()), next(request_ids())
    assert a != b and a.int & (2**64 - 1) == b.int & (2**64 - 1) == 1


async def test_every_kind_of_answer_carries_its_own_request_id(gateway: TestClient) -> None:
    """Set by the error middleware (a streamed answer by its handler): a rendered error, a
    redirect, a page, a JSON answer and a stream each carry a distinct id."""
    _, key = await create_project(gateway)
    auth = {"Authorization": f"Bearer {key}"}
    answers = [
        await gateway.get("/no/such/route"),
        await gateway.get("/dashboard", allow_redirects=False),
        await gateway.get("/api/health/live"),
        await gateway.post("/v1/chat/completions", json=chat_body(), headers=auth),
        await gateway.post("/v1/chat/completions", json=chat_body(stream=True), headers=auth),
    ]
    statuses = [resp.status for resp in answers]
    assert statuses == [404, 303, 200, 200, 200]
    ids = [resp.headers[REQUEST_ID_HEADER] for resp in answers]
    assert len({uuid.UUID(text) for text in ids}) == len(ids)
    assert answers[1].headers["Location"].startswith("/dashboard/login")
    not_found = await answers[0].json()
    assert not_found["requestId"] == ids[0]
    for resp in answers:
        await resp.read()
