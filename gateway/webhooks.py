"""Webhooks: an outbox written with the usage it describes, and a worker that delivers it.

Events (`budget.alert`, `usage.exceeded`, `anomaly.detected`, opt-in `usage.tracked`) are
rows of `webhook_outbox`, one per (event, endpoint), inserted in the transaction that wrote
the usage rows, so an event exists exactly when its usage does (`reconciliation.mismatch`,
from the providers' imported bills, is inserted with its once-per-day record instead,
gateway/sync/report.py). Every replica runs a
`WebhookWorker`: it claims due rows with `FOR UPDATE SKIP LOCKED`, pushes each claimed row's
`next_attempt_at` past the delivery timeout (a lease: no transaction is held over HTTP), and
POSTs them. A 2xx answer marks the row delivered; anything else retries with exponential
backoff and jitter until `max_attempts`, then the row is marked failed with its last error.
Delivery is at least once: the event id (`X-AI-Cost-Gateway-Event-Id`, and `id` in the body)
is the same on every attempt and every endpoint, so receivers de-duplicate on it.

Signature: `X-AI-Cost-Gateway-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>`
with the Unix seconds of `X-AI-Cost-Gateway-Timestamp` (fresh on every attempt). A receiver
recomputes it over the raw body bytes, compares in constant time and refuses timestamps more
than five minutes away from its clock (`verify_signature` does all three).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import re
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

import aiohttp
import asyncpg
import orjson
import structlog

from gateway.credentials import SecretBox, UnsealError
from gateway.db import bounded_connection
from gateway.errors import Conflict, NotFound
from gateway.settings import WebhookSettings

log = structlog.get_logger(__name__)

SUBSCRIBABLE = ("budget.alert", "usage.exceeded", "anomaly.detected", "usage.tracked",
                "reconciliation.mismatch")
TEST_EVENT = "webhook.test"
FORMATS = ("json", "slack")
HEADER_EVENT = "X-AI-Cost-Gateway-Event"
HEADER_EVENT_ID = "X-AI-Cost-Gateway-Event-Id"
HEADER_TIMESTAMP = "X-AI-Cost-Gateway-Timestamp"
HEADER_SIGNATURE = "X-AI-Cost-Gateway-Signature"
HEADER_ATTEMPT = "X-AI-Cost-Gateway-Delivery-Attempt"
USER_AGENT = "ai-cost-gateway-webhooks/1"
ERROR_CHARS = 500
_DB_ERRORS = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
CANCEL_GRACE_S = 1.0  # close(): a cancelled worker gets this long to let go


# -- signing ---------------------------------------------------------------------------------

def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for one attempt."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify_signature(secret: str, timestamp: str | int, body: bytes, header: str,
                     tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """For receivers: the header holds a valid `v1=` signature of this body and timestamp,
    and the timestamp is within `tolerance_s` of `now` (replays of old deliveries fail)."""
    try:
        stamp = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - stamp) > tolerance_s:
        return False
    expected = sign(secret, stamp, body).encode()
    given = [part.strip() for part in header.split(",") if part.strip().startswith("v1=")]
    return any(hmac.compare_digest(expected, part.encode()) for part in given)


# -- payloads --------------------------------------------------------------------------------

_DECIMAL = re.compile(r'"\\u0000dec:([-+0-9.Ee]+)\\u0000"')


def encode_payload(payload: Mapping[str, Any]) -> str:
    """JSON text with Decimals as exact JSON numbers (orjson would need floats)."""

    def default(value: Any) -> Any:
        if isinstance(value, Decimal) and value.is_finite():
            return f"\x00dec:{value}\x00"  # jsonb refuses NUL, so no real string looks like it
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, uuid.UUID):
            return str(value)
        raise TypeError(f"cannot serialise {type(value).__name__}")

    text = orjson.dumps(payload, default=default).decode()
    return _DECIMAL.sub(r"\1", text)


class Event(NamedTuple):
    event_id: uuid.UUID
    event_type: str
    project_id: int | None
    payload: str  # JSON text from encode_payload


_FAN_OUT = """
    INSERT INTO webhook_outbox (event_id, event_type, project_id, payload, endpoint_id)
    SELECT c.event_id, c.event_type, c.project_id, c.payload::jsonb, e.id
    FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[])
             AS c(event_id, event_type, project_id, payload)
    JOIN webhook_endpoints e ON e.enabled AND c.event_type = ANY (e.events)
        AND (e.project_id IS NULL OR e.project_id = c.project_id)
    ON CONFLICT (event_id, endpoint_id) DO NOTHING"""


async def enqueue_many(conn: asyncpg.Connection, events: Sequence[Event]) -> int:
    """One outbox row per (event, enabled endpoint subscribed to its type and project), in one
    statement; answers how many rows. Replaying an event id adds nothing."""
    if not events:
        return 0
    status = await conn.execute(_FAN_OUT, [e.event_id for e in events],
                                [e.event_type for e in events],
                                [e.project_id for e in events], [e.payload for e in events])
    return int(status.rsplit(" ", 1)[1])


async def enqueue(conn: asyncpg.Connection, event_type: str, project_id: int | None,
                  payload: Mapping[str, Any], *, event_id: uuid.UUID | None = None,
                  endpoint_id: uuid.UUID | None = None) -> tuple[uuid.UUID, int]:
    """Queue one event (to `endpoint_id` alone, whatever it subscribes to, when given);
    answers the event id and the number of deliveries queued."""
    event_id = event_id or uuid.uuid4()
    text = encode_payload(payload)
    if endpoint_id is None:
        return event_id, await enqueue_many(conn, [Event(event_id, event_type, project_id, text)])
    status = await conn.execute(
        """INSERT INTO webhook_outbox (event_id, event_type, project_id, payload, endpoint_id)
           VALUES ($1, $2, $3, $4::text::jsonb, $5) ON CONFLICT DO NOTHING""",
        event_id, event_type, project_id, text, endpoint_id)
    return event_id, int(status.rsplit(" ", 1)[1])


# -- bodies ----------------------------------------------------------------------------------

def render_body(fmt: str, event_id: uuid.UUID, event_type: str, project_id: int | None,
                created_at: datetime, payload: str) -> bytes:
    """The POST body: the JSON envelope `{id, event, created_at, project_id, data}` (data is
    the stored payload, byte for byte, so money stays exact), or a Slack message."""
    if fmt == "slack":
        data = json.loads(payload, parse_float=Decimal)
        return orjson.dumps(slack_message(event_id, event_type, data))
    head = orjson.dumps({"id": str(event_id), "event": event_type,
                         "created_at": created_at.isoformat(), "project_id": project_id})
    return head[:-1] + b',"data":' + payload.encode() + b"}"


def _usd(amount: Any) -> str:
    if amount is None:
        return "no budget"
    value = Decimal(str(amount))
    return f"${value:,.2f}" if abs(value) >= 1 or value == 0 else f"${value.normalize():f}"


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{Decimal(str(value)).normalize():f}%"


def slack_text(event_type: str, d: Mapping[str, Any]) -> str:
    """One line of Slack mrkdwn saying what happened."""
    project = f"*{d.get('project') or d.get('project_id')}*"
    if event_type == "budget.alert":
        return (f":warning: Budget alert: project {project} has used "
                f"{_pct(d.get('percentage_used'))} of its monthly budget "
                f"({_usd(d.get('current_spend'))} of {_usd(d.get('budget_limit'))}), crossing "
                f"the {_pct(d.get('threshold'))} threshold for {d.get('period')}.")
    if event_type == "usage.exceeded" and d.get("reason") == "rate_limit":
        return (f":no_entry: Rate limit reached: project {project} had "
                f"{d.get('rejected_requests')} request(s) refused with 429 in the hour from "
                f"{d.get('period_start')}.")
    if event_type == "usage.exceeded":
        return (f":no_entry: Budget exceeded: project {project} has spent "
                f"{_usd(d.get('current'))} of its {_usd(d.get('limit'))} budget for "
                f"{d.get('period')}; {d.get('rejected_requests', 0)} request(s) refused so far "
                "in this batch.")
    if event_type == "anomaly.detected":
        return (f":chart_with_upwards_trend: Unusual spend: project {project} spent "
                f"{_usd(d.get('current_hour_spend'))} in the hour from {d.get('hour')}, above "
                f"{_usd(d.get('threshold_spend'))} (baseline {_usd(d.get('baseline_mean'))}/h "
                f"over {d.get('baseline_hours')} h).")
    if event_type == "usage.tracked":
        return (f":receipt: Usage tracked for project {project}: {d.get('provider')}/"
                f"{d.get('model')}, {d.get('input_tokens')} in / {d.get('output_tokens')} out, "
                f"{_usd(d.get('cost_usd'))}.")
    if event_type == "reconciliation.mismatch":
        return (f":mag: Reconciliation: {d.get('provider')} billed "
                f"{_usd(d.get('provider_cost_usd'))} on {d.get('day')} and the gateway recorded "
                f"{_usd(d.get('ledger_cost_usd'))}: {_usd(d.get('untracked_usd'))} spent around "
                f"the gateway, {_usd(d.get('price_difference_usd'))} from prices, "
                f"{_usd(d.get('timing_usd'))} timing.")
    if event_type == TEST_EVENT:
        return ":white_check_mark: Test event from the AI cost gateway: this endpoint works."
    return f"{event_type} for project {project}"


def slack_message(event_id: uuid.UUID, event_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook body: `text` (notifications) and `blocks` (the message)."""
    text = slack_text(event_type, data)
    return {"text": text, "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"`{event_type}` · event `{event_id}`"}]},
    ]}


# -- endpoints -------------------------------------------------------------------------------

def endpoint_aad(endpoint_id: uuid.UUID) -> bytes:
    return f"webhook:{endpoint_id}".encode()


def new_secret() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


def seal_secret(box: SecretBox | None, endpoint_id: uuid.UUID, secret: str) -> dict[str, Any]:
    """The secret columns: sealed under the box when there is one, else plain text."""
    hint = "\u2026" + secret[-4:] if len(secret) >= 12 else ""
    if box is None:
        return {"secret_plain": secret, "secret_ciphertext": None, "secret_nonce": None,
                "secret_key_id": None, "secret_hint": hint}
    nonce, ciphertext = box.seal(secret, endpoint_aad(endpoint_id))
    return {"secret_plain": None, "secret_ciphertext": ciphertext, "secret_nonce": nonce,
            "secret_key_id": box.key_id, "secret_hint": hint}


class SecretUnavailable(Exception):
    """An endpoint's signing secret cannot be opened by this gateway."""


def open_secret(box: SecretBox | None, row: Mapping[str, Any]) -> str:
    if row["secret_plain"] is not None:
        return str(row["secret_plain"])
    if box is None:
        raise SecretUnavailable("the signing secret is sealed and GATEWAY_SECRET_KEY is not set")
    if row["secret_key_id"] != box.key_id:
        raise SecretUnavailable(f"the signing secret was sealed with key {row['secret_key_id']};"
                                f" GATEWAY_SECRET_KEY is key {box.key_id}")
    try:
        return box.open(bytes(row["secret_nonce"]), bytes(row["secret_ciphertext"]),
                        endpoint_aad(row["endpoint_id"]))
    except UnsealError:
        raise SecretUnavailable("the signing secret does not decrypt: the row was altered") \
            from None


def _view(row: asyncpg.Record) -> dict[str, Any]:
    """A row as a plain dict (asyncpg's own UUID type is not one orjson writes)."""
    return {k: uuid.UUID(str(v)) if isinstance(v, uuid.UUID) else v for k, v in row.items()}


_PUBLIC = """id, project_id, url, description, events, format, enabled, secret_hint,
             secret_plain IS NULL AS secret_sealed, created_at, updated_at"""


async def create_endpoint(conn: asyncpg.Connection, box: SecretBox | None, *,
                          project_id: int | None, url: str, events: Sequence[str], fmt: str,
                          description: str, enabled: bool,
                          secret: str | None) -> tuple[dict[str, Any], str]:
    """Store an endpoint; answers its public view and the signing secret (shown once)."""
    endpoint_id = uuid.uuid4()
    secret = secret or new_secret()
    sealed = seal_secret(box, endpoint_id, secret)
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO webhook_endpoints (id, project_id, url, description, events, format,
                    enabled, secret_plain, secret_ciphertext, secret_nonce, secret_key_id,
                    secret_hint)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                RETURNING {_PUBLIC}""",
            endpoint_id, project_id, url, description, list(events), fmt, enabled,
            sealed["secret_plain"], sealed["secret_ciphertext"], sealed["secret_nonce"],
            sealed["secret_key_id"], sealed["secret_hint"])
    except asyncpg.ForeignKeyViolationError:
        raise NotFound(f"project {project_id} does not exist") from None
    return _view(row), secret


async def list_endpoints(conn: asyncpg.Connection,
                         project_id: int | None = None) -> list[dict[str, Any]]:
    """Every endpoint, or those that get a project's events (its own and the global ones)."""
    rows = await conn.fetch(
        f"""SELECT {_PUBLIC} FROM webhook_endpoints
            WHERE $1::bigint IS NULL OR project_id IS NULL OR project_id = $1
            ORDER BY created_at, id""", project_id)
    return [_view(r) for r in rows]


async def get_endpoint(conn: asyncpg.Connection, endpoint_id: uuid.UUID) -> dict[str, Any]:
    row = await conn.fetchrow(f"SELECT {_PUBLIC} FROM webhook_endpoints WHERE id = $1",
                              endpoint_id)
    if row is None:
        raise NotFound(f"webhook {endpoint_id} does not exist")
    return _view(row)


async def update_endpoint(conn: asyncpg.Connection, box: SecretBox | None,
                          endpoint_id: uuid.UUID, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Change url, description, events, format, enabled and/or the secret (re-sealed)."""
    values = {k: fields[k] for k in ("url", "description", "events", "format", "enabled")
              if k in fields}
    if "events" in values:
        values["events"] = list(values["events"])
    if fields.get("secret"):
        values.update(seal_secret(box, endpoint_id, fields["secret"]))
    if not values:
        return await get_endpoint(conn, endpoint_id)
    sets = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(values))
    row = await conn.fetchrow(
        f"UPDATE webhook_endpoints SET {sets}, updated_at = now() WHERE id = $1 "
        f"RETURNING {_PUBLIC}", endpoint_id, *values.values())
    if row is None:
        raise NotFound(f"webhook {endpoint_id} does not exist")
    return _view(row)


async def delete_endpoint(conn: asyncpg.Connection, endpoint_id: uuid.UUID) -> None:
    """Delete an endpoint and its deliveries, pending ones included."""
    status = await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id)
    if status != "DELETE 1":
        raise NotFound(f"webhook {endpoint_id} does not exist")


async def queue_test(conn: asyncpg.Connection, endpoint_id: uuid.UUID) -> uuid.UUID:
    """Queue a `webhook.test` event for this endpoint alone (409 while it is disabled)."""
    view = await get_endpoint(conn, endpoint_id)
    if not view["enabled"]:
        raise Conflict(f"webhook {endpoint_id} is disabled; enable it first",
                       code="webhook_disabled")
    event_id, _ = await enqueue(
        conn, TEST_EVENT, view["project_id"],
        {"message": "test event from the AI cost gateway", "webhook_id": endpoint_id},
        endpoint_id=endpoint_id)
    return event_id


async def list_deliveries(conn: asyncpg.Connection, endpoint_id: uuid.UUID,
                          limit: int = 100) -> list[dict[str, Any]]:
    """An endpoint's latest deliveries, newest first, with their state."""
    await get_endpoint(conn, endpoint_id)
    rows = await conn.fetch(
        """SELECT id, event_id, event_type, project_id, attempts, next_attempt_at,
                  delivered_at, failed_at, last_status, last_error, created_at,
                  CASE WHEN delivered_at IS NOT NULL THEN 'delivered'
                       WHEN failed_at IS NOT NULL THEN 'failed'
                       ELSE 'pending' END AS state
           FROM webhook_outbox WHERE endpoint_id = $1 ORDER BY id DESC LIMIT $2""",
        endpoint_id, limit)
    return [_view(r) for r in rows]


# -- delivery --------------------------------------------------------------------------------

_CLAIM = """
    WITH due AS (
        SELECT o.id FROM webhook_outbox o
        JOIN webhook_endpoints e ON e.id = o.endpoint_id AND e.enabled
        WHERE o.delivered_at IS NULL AND o.failed_at IS NULL AND o.next_attempt_at <= now()
        ORDER BY o.next_attempt_at
        LIMIT $1
        FOR UPDATE OF o SKIP LOCKED)
    UPDATE webhook_outbox o
    SET attempts = o.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
    FROM due, webhook_endpoints e
    WHERE o.id = due.id AND e.id = o.endpoint_id
    RETURNING o.id, o.event_id, o.event_type, o.project_id, o.payload::text AS payload,
              o.attempts, o.created_at, e.id AS endpoint_id, e.url, e.format, e.secret_plain,
              e.secret_ciphertext, e.secret_nonce, e.secret_key_id"""
_DELIVERED = """UPDATE webhook_outbox SET delivered_at = now(), last_status = $2,
                last_error = NULL WHERE id = $1"""
_FAILED = """UPDATE webhook_outbox SET last_status = $2, last_error = $3,
             next_attempt_at = now() + make_interval(secs => $4),
             failed_at = CASE WHEN $5 THEN now() END WHERE id = $1"""
_PRUNE = """DELETE FROM webhook_outbox WHERE id IN (
                SELECT id FROM webhook_outbox
                WHERE delivered_at < now() - make_interval(secs => $1)
                   OR failed_at < now() - make_interval(secs => $1)
                LIMIT 10000)"""
PRUNE_INTERVAL_S = 600.0


class Outcome(NamedTuple):
    ok: bool
    status: int | None
    error: str | None
    retry_after_s: float | None = None


class WebhookWorker:
    """Delivers the outbox; one per process, sharing the rows with the other replicas. Each
    database use (acquire, query, release) gives up after `db_timeout_s`."""

    def __init__(self, pool: asyncpg.Pool, settings: WebhookSettings, box: SecretBox | None,
                 *, session: aiohttp.ClientSession | None = None,
                 rng: random.Random | None = None, db_timeout_s: float = 5.0) -> None:
        self._pool = pool
        self._db_timeout_s = db_timeout_s
        self._settings = settings
        self._box = box
        self._session = session
        self._own_session = session is None
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._last_prune = 0.0
        self._closing = False
        self.delivered = 0
        self.retried = 0
        self.failed = 0

    @property
    def lease_s(self) -> float:
        """How long a claimed row stays invisible to other workers: past any delivery."""
        return self._settings.timeout_s * 2 + 5.0

    async def start(self) -> None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self._settings.timeout_s,
                                            connect=self._settings.connect_timeout_s)
            self._session = aiohttp.ClientSession(
                timeout=timeout, headers={"User-Agent": USER_AGENT},
                connector=aiohttp.TCPConnector(limit=self._settings.concurrency * 2))
        self._task = asyncio.create_task(self._run(), name="webhook-worker")

    async def close(self, deadline_s: float | None = None) -> None:
        """Stop polling and let the deliveries in flight finish (for at most the delivery
        timeout, or `deadline_s` when shorter, then cancelled: the whole within about that
        + 1 s, whatever the database does); any cut short keep their lease and are retried
        after it, by any replica."""
        wait_s = self._settings.timeout_s + 1.0
        if deadline_s is not None:
            wait_s = min(wait_s, deadline_s)
        self._closing = True
        self._wake.set()
        if self._task is not None:
            task, self._task = self._task, None
            done, _ = await asyncio.wait({task}, timeout=wait_s)
            if not done:
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE_S)
            if not done:
                log.warning("webhook_worker_not_stopped")
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def wake(self) -> None:
        """Poll now (after an enqueue in this process, say)."""
        self._wake.set()

    async def pending(self) -> int:
        """Deliveries not yet made or given up (for metrics)."""
        async with self._connection() as conn:
            count = await conn.fetchval(
                "SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL "
                "AND failed_at IS NULL")
        return int(count)

    def _connection(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        return bounded_connection(self._pool, self._db_timeout_s)

    async def _run(self) -> None:
        interval = self._settings.poll_interval_s
        while not self._closing:
            claimed = 0
            try:
                claimed = await self.run_once()
                await self._maybe_prune()
            except _DB_ERRORS as exc:
                log.warning("webhook_poll_failed", error=str(exc))
            except Exception:  # a bug must not stop deliveries for good
                log.exception("webhook_poll_crashed")
            if claimed >= self._settings.batch_size or self._closing:
                continue  # more are waiting (or closing: the loop ends)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()

    async def run_once(self) -> int:
        """Claim one batch of due deliveries and make them; answers how many were claimed."""
        async with self._connection() as conn:
            rows = await conn.fetch(_CLAIM, self._settings.batch_size, self.lease_s)
        if rows:
            await asyncio.gather(*(self._deliver_one(row) for row in rows))
        return len(rows)

    async def _deliver_one(self, row: asyncpg.Record) -> None:
        async with self._slots:
            outcome = await self.attempt(row)
        try:
            await self._record(row, outcome)
        except _DB_ERRORS as exc:  # the lease runs out and the row is tried again
            log.warning("webhook_record_failed", outbox_id=row["id"], error=str(exc))

    async def attempt(self, row: Mapping[str, Any]) -> Outcome:
        """POST one claimed row; never raises for the receiver's or the network's faults."""
        assert self._session is not None, "start() the worker first"
        try:
            secret = open_secret(self._box, row)
        except SecretUnavailable as exc:
            return Outcome(False, None, str(exc))
        body = render_body(row["format"], row["event_id"], row["event_type"], row["project_id"],
                           row["created_at"], row["payload"])
        stamp = int(time.time())
        headers = {"Content-Type": "application/json", HEADER_EVENT: row["event_type"],
                   HEADER_EVENT_ID: str(row["event_id"]), HEADER_TIMESTAMP: str(stamp),
                   HEADER_SIGNATURE: sign(secret, stamp, body),
                   HEADER_ATTEMPT: str(row["attempts"])}
        try:
            async with self._session.post(row["url"], data=body, headers=headers,
                                          allow_redirects=False) as resp:
                text = (await resp.content.read(ERROR_CHARS)).decode(errors="replace")
                if 200 <= resp.status < 300:
                    return Outcome(True, resp.status, None)
                return Outcome(False, resp.status, f"HTTP {resp.status}: {text}".strip(),
                               _retry_after(resp.headers.get("Retry-After")))
        except TimeoutError:
            return Outcome(False, None, f"timed out after {self._settings.timeout_s} s")
        except aiohttp.ClientError as exc:
            return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:ERROR_CHARS])

    def backoff_s(self, attempts: int, retry_after_s: float | None = None) -> float:
        """The pause after `attempts` failed attempts: doubling, half of it jittered, at least
        the receiver's Retry-After, at most backoff_max_s."""
        s = self._settings
        base = min(s.backoff_max_s, s.backoff_s * 2 ** min(attempts - 1, 30))
        delay = base / 2 + self._rng.uniform(0, base / 2)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return min(delay, s.backoff_max_s)

    async def _record(self, row: asyncpg.Record, outcome: Outcome) -> None:
        if outcome.ok:
            async with self._connection() as conn:
                await conn.execute(_DELIVERED, row["id"], outcome.status)
            self.delivered += 1
            return
        dead = row["attempts"] >= self._settings.max_attempts
        async with self._connection() as conn:
            await conn.execute(_FAILED, row["id"], outcome.status, outcome.error,
                               self.backoff_s(row["attempts"], outcome.retry_after_s), dead)
        if dead:
            self.failed += 1
            log.warning("webhook_failed", outbox_id=row["id"], event_id=str(row["event_id"]),
                        attempts=row["attempts"], error=outcome.error)
        else:
            self.retried += 1

    async def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < PRUNE_INTERVAL_S:
            return
        self._last_prune = now
        async with self._connection() as conn:
            await conn.execute(_PRUNE, self._settings.retention_hours * 3600)


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())
