"""docs/openapi.json fuzzed against the running gateway with schemathesis: for every documented
operation, generated requests (fixed seed, a bounded number per operation) never get a 5xx, an
undocumented status, or an answer outside the documented schema."""

from __future__ import annotations

import asyncio
from typing import Any

import requests
import schemathesis
from aiohttp.test_utils import TestClient
from conftest import GatewayFactory, admin_headers, create_project
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.http.docs import OPENAPI_PATH

EXAMPLES_PER_OPERATION = 50
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
FUZZ = settings(derandomize=True, max_examples=EXAMPLES_PER_OPERATION, deadline=None,
                database=None, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck))


def _credentials(operation: Any, admin: dict[str, str], key: dict[str, str]) -> dict[str, str]:
    """The admin token where the operation takes it (it sees every filter), else the key."""
    security = operation.definition.raw.get("security")
    names = {name for requirement in security or () for name in requirement}
    return admin if "adminToken" in names else key


def _fuzz(base_url: str, admin: dict[str, str], key: dict[str, str]) -> list[str]:
    schema = schemathesis.openapi.from_path(str(OPENAPI_PATH))
    operations = [result.ok() for result in schema.get_all_operations()]
    # Destructive calls last, so the key and project the others use survive until then.
    operations.sort(key=lambda op: (op.method.upper() in ("DELETE", "PATCH"), op.label))
    failures: list[str] = []
    with requests.Session() as session:
        for operation in operations:
            try:
                _fuzz_one(operation, base_url, session, _credentials(operation, admin, key))
            except BaseException as exc:  # every operation's failure is reported, not the first
                failures.append(f"{operation.label}: {str(exc)[:1500]}")
    return failures


def _fuzz_one(operation: Any, base_url: str, session: requests.Session,
              headers: dict[str, str]) -> None:
    @FUZZ
    @given(case=st.one_of(operation.as_strategy(),
                          operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)))
    def run(case: Any) -> None:
        case.call_and_validate(base_url=base_url, session=session, headers=headers,
                               checks=CHECKS, timeout=10)

    run()


async def test_the_documented_api_holds_under_generated_requests(
        make_gateway: GatewayFactory) -> None:
    gateway: TestClient = await make_gateway()
    _, key = await create_project(gateway, plan="enterprise", team="fuzz")
    base_url = str(gateway.make_url("")).rstrip("/")
    failures = await asyncio.to_thread(_fuzz, base_url, admin_headers(),
                                       {"Authorization": f"Bearer {key}"})
    assert not failures, "\n\n".join(failures)
