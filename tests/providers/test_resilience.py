"""The resilience plan's step: what each upstream outcome says to do next."""

from __future__ import annotations

import pytest

from gateway.errors import BadGateway, GatewayError, UpstreamStatusError, UpstreamTimeout
from gateway.providers.resilience import Step, step


def status(code: int) -> UpstreamStatusError:
    return UpstreamStatusError(code, f"upstream answered {code}")


@pytest.mark.parametrize(("error", "first_route", "expected"), [
    (None, True, Step.SUCCESS),
    (status(500), True, Step.RETRY), (status(429), False, Step.RETRY),
    (BadGateway("unreachable"), True, Step.RETRY), (UpstreamTimeout("slow"), True, Step.RETRY),
    (status(401), True, Step.NEXT_CREDENTIAL), (status(403), False, Step.NEXT_CREDENTIAL),
    (status(400), True, Step.STOP), (status(404), False, Step.NEXT_CREDENTIAL),
])
def test_step(error: GatewayError | None, first_route: bool, expected: Step) -> None:
    assert step(error, first_route) is expected
