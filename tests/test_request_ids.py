"""Request ids: unique, and their text made without the uuid module is str(uuid)."""

from __future__ import annotations

import itertools

from gateway.middlewares import request_ids, request_ids_and_texts


def test_the_text_of_every_request_id_is_its_uuid_text() -> None:
    pairs = list(itertools.islice(request_ids_and_texts(), 70_000))  # past 0xffff
    assert all(str(request_id) == text for request_id, text in pairs)
    assert len({request_id for request_id, _ in pairs}) == len(pairs)


def test_each_process_counter_starts_from_its_own_random_prefix() -> None:
    a, b = next(request_ids()), next(request_ids())
    assert a != b and a.int & (2**64 - 1) == b.int & (2**64 - 1) == 1
