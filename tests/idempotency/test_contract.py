"""One contract for every claim store (the `claims` fixture runs each on its store)."""

from __future__ import annotations

import asyncio

from gateway.idempotency import Claim, ClaimStore

DAY = 86_400.0


async def test_first_claim_wins(claims: ClaimStore) -> None:
    assert await claims.claim(1, "req-1", "gw-a", DAY) == Claim(True, "gw-a")
    assert await claims.claim(1, "req-1", "gw-b", DAY) == Claim(False, "gw-a")
    assert await claims.claim(1, "req-1", "gw-c", DAY) == Claim(False, "gw-a")


async def test_the_same_request_may_claim_again(claims: ClaimStore) -> None:
    assert (await claims.claim(1, "req-1", "gw-a", DAY)).claimed
    assert await claims.claim(1, "req-1", "gw-a", DAY) == Claim(True, "gw-a")


async def test_concurrent_claims_have_one_winner(claims: ClaimStore) -> None:
    results = await asyncio.gather(
        *(claims.claim(1, "req-race", f"gw-{i}", DAY) for i in range(50)))
    winners = [r for r in results if r.claimed]
    assert len(winners) == 1
    assert {r.first_request_id for r in results} == {winners[0].first_request_id}


async def test_projects_and_ids_do_not_collide(claims: ClaimStore) -> None:
    assert (await claims.claim(1, "req-1", "gw-a", DAY)).claimed
    assert (await claims.claim(2, "req-1", "gw-b", DAY)).claimed
    assert (await claims.claim(1, "req-2", "gw-c", DAY)).claimed
    # Ids that could be confused when joined naively.
    assert (await claims.claim(11, "req", "gw-d", DAY)).claimed
    assert (await claims.claim(1, "1:req", "gw-e", DAY)).claimed
    assert await claims.claim(2, "req-1", "gw-f", DAY) == Claim(False, "gw-b")


async def test_an_expired_claim_can_be_claimed_again(claims: ClaimStore) -> None:
    assert (await claims.claim(1, "req-1", "gw-a", 0.05)).claimed
    assert not (await claims.claim(1, "req-1", "gw-b", 0.05)).claimed
    await asyncio.sleep(0.12)
    assert await claims.claim(1, "req-1", "gw-c", DAY) == Claim(True, "gw-c")
    assert await claims.claim(1, "req-1", "gw-d", DAY) == Claim(False, "gw-c")


async def test_unicode_and_long_ids(claims: ClaimStore) -> None:
    request_id = "räksmörgås-" + "x" * 117
    gateway_id = "0b9c6f5e-8a1d-4a57-9d1c-3a0e6f1d2c4b"
    assert await claims.claim(3, request_id, gateway_id, DAY) == Claim(True, gateway_id)
    assert await claims.claim(3, request_id, "other", DAY) == Claim(False, gateway_id)
