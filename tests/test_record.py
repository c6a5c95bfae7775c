"""Stage 10, record: every field of the usage row comes from the right part of the exchange
(the row is built with positional arguments, so a swapped pair would go unnoticed by type)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from gateway.domain import ChatRequest, Principal, Project, Usage
from gateway.entries.base import Limits
from gateway.entries.openai_chat import OPENAI_CHAT, validate_openai
from gateway.ledger import Ledger
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.record import record
from gateway.pricing import Price, Quote
from gateway.settings import LedgerSettings, ServerSettings, ValidationSettings


def _exchange() -> Exchange:
    project = Project(id=41, name="p", team=None, plan="pro", monthly_budget_usd=None,
                      allowed_providers=frozenset(), allowed_models=frozenset(), enabled=True,
                      metadata={})
    ex = Exchange(uuid.uuid4(), "/v1/chat/completions", OPENAI_CHAT)
    ex.principal = Principal(key_id=7, key_prefix="gw_x", project=project)
    ex.chat = ChatRequest("openai", "the-provider", "the-model", {}, True, False, 100)
    ex.status, ex.error_code = 502, "upstream_error"
    ex.usage = Usage(11, 3, 5, "counted", "estimated", 2)
    price = Price(model="the-price-model", provider="the-provider", input=Decimal(1),
                  cached_input=Decimal(1), output=Decimal(2))
    ex.quote = Quote(Decimal("0.25"), price, True)
    ex.metadata = {"feature": "f"}
    ex.requested_model, ex.credential, ex.route_reason = "asked", "team-a", "cheapest"
    ex.attempts = [{"provider": "the-provider", "status": 502}]
    ex.started_at = datetime.now(UTC) - timedelta(seconds=1)
    ex.started = time.perf_counter() - 0.0504
    ex.upstream_s = 0.0301234
    return ex


def test_each_field_of_the_row_comes_from_its_own_source() -> None:
    ex = _exchange()
    ledger = Ledger(None, LedgerSettings())  # type: ignore[arg-type]  # never flushed here
    row = record(ex, ledger)
    assert row is not None and ledger.pending == 1
    assert (row.request_id, row.project_id, row.api_key_id) == (ex.request_id, 41, 7)
    assert (row.provider, row.model, row.endpoint) == ("the-provider", "the-model",
                                                       "/v1/chat/completions")
    assert (row.status, row.error_code, row.streamed) == (502, "upstream_error", True)
    assert row.usage == Usage(11, 3, 5, "counted", "estimated", 2)
    assert (row.cost_usd, row.priced_by_fallback, row.price_model) == (
        Decimal("0.25"), True, "the-price-model")
    assert row.upstream_ms == 30.123
    assert 20.0 <= row.overhead_ms < 1000 and row.overhead_ms == round(row.overhead_ms, 3)
    assert row.metadata == {"feature": "f"} and row.attempts == ex.attempts
    assert row.started_at == ex.started_at < row.finished_at
    assert (row.requested_model, row.credential, row.route_reason, row.origin) == (
        "asked", "team-a", "cheapest", "proxy")


def test_a_call_that_never_reached_the_upstream_has_no_upstream_time() -> None:
    ex = _exchange()
    ex.upstream_s = 0.0
    ledger = Ledger(None, LedgerSettings())  # type: ignore[arg-type]
    row = record(ex, ledger)
    assert row is not None and row.upstream_ms is None and row.overhead_ms > 0


def test_the_chat_request_of_the_openai_entry_names_its_fields() -> None:
    """`validate_openai` also builds its ChatRequest positionally."""
    limits = Limits(max_body_bytes=ServerSettings().max_body_bytes,
                    max_messages=ValidationSettings().max_messages,
                    max_content_chars=ValidationSettings().max_content_chars)
    chat = validate_openai({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                            "stream": True, "stream_options": {"include_usage": True},
                            "max_tokens": 9, "metadata": {"k": "v"}}, limits,
                           provider="the-provider")
    assert (chat.entry, chat.provider, chat.model, chat.stream, chat.include_usage,
            chat.max_output_tokens, chat.metadata) == ("openai", "the-provider", "m", True, True,
                                                       9, {"k": "v"})
