"""Reaching a provider: the plan of attempts for one request, and the pure parts under it.

- `Plan`: the attempts of one request in order: each route of its chain (the routed model,
  then its fallbacks), each credential of the route's provider in the order its balancing
  strategy gives (`providers.balancer`; by weight unless configured), each retry with
  backoff, the provider's circuit breaker asked before every one. After each attempt `step`
  says what comes next: success, a retry, the next credential, the next route, or stop (the
  client's own request was refused: its error is the answer).
- `backoff_delay`: exponential backoff with full jitter (AWS's "Exponential Backoff and
  Jitter"), so retries from many clients spread out instead of arriving together.
- `retry_after_s`: a `Retry-After` header (seconds or an HTTP date) as seconds.
- `CircuitBreaker`: per provider; after `failures` consecutive failures it opens and calls
  skip the provider for `cooldown_s`, then one probe call is let through (half-open): a
  success closes it, a failure opens it again.
- `weighted_order`: credentials in a random order drawn by weight, without replacement, so
  the first is chosen in proportion to its weight and the rest are the fallbacks.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any, TypeVar

from gateway.domain import ChatRequest
from gateway.errors import (
    BadGateway,
    BadRequest,
    GatewayError,
    ServiceUnavailable,
    UpstreamStatusError,
    UpstreamTimeout,
)
from gateway.providers.base import Credential, Upstream, UpstreamCall
from gateway.settings import ProviderSettings

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def backoff_delay(retry: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait before retry number `retry` (0 for the first retry): full jitter."""
    return rng.uniform(0.0, min(cap_s, base_s * (2 ** retry)))


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(seconds, 0.0)


class CircuitBreaker:
    def __init__(self, failures: int, cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._state = CLOSED
        self._probing = False

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            return HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to this provider now (takes the one half-open probe)."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self._failures, self._state, self._probing = 0, CLOSED, False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            self._state, self._opened_at, self._probing = OPEN, self._clock(), False

    def release(self) -> None:
        """A probe that ended with neither verdict (the client left): let another probe."""
        self._probing = False


def weighted_order(items: Sequence[T], weight: Callable[[T], int],
                   rng: random.Random) -> list[T]:
    """Items drawn one by one in proportion to their weight; weight 0 comes last, in order."""
    pool = [item for item in items if weight(item) > 0]
    order: list[T] = []
    while pool:
        if len(pool) == 1:
            order.append(pool.pop())
            break
        pick = rng.uniform(0, sum(weight(i) for i in pool))
        for n, item in enumerate(pool):
            pick -= weight(item)
            if pick <= 0 or n == len(pool) - 1:
                order.append(pool.pop(n))
                break
    order.extend(item for item in items if weight(item) <= 0)
    return order


class Step(Enum):
    """What an attempt's outcome says to do next."""

    SUCCESS = "success"
    RETRY = "retry"  # a provider failure: the same credential again, if a wait allows it
    NEXT_CREDENTIAL = "next credential"
    NEXT_ROUTE = "next route"
    STOP = "stop"  # the client's own request was refused: its error is the answer


def step(error: GatewayError | None, first_route: bool) -> Step:
    """The step after one call: connect errors, timeouts, 429 and 5xx are the provider's
    trouble (retried); 401 / 403 refuse the key (the next credential); any other refusal is
    the request's fault: the answer on the first route, the next credential on a fallback."""
    if error is None:
        return Step.SUCCESS
    if provider_failure(error):
        return Step.RETRY
    if credential_failure(error) or not first_route:
        return Step.NEXT_CREDENTIAL
    return Step.STOP


def provider_failure(error: GatewayError) -> bool:
    """Connect errors, timeouts, 429 and 5xx: the provider's trouble, worth another try."""
    if isinstance(error, UpstreamStatusError):
        return error.status == 429 or error.status >= 500
    return True


def credential_failure(error: GatewayError) -> bool:
    """The provider refused this key (401 / 403): another credential may be accepted."""
    return isinstance(error, UpstreamStatusError) and error.status in (401, 403)


def retry_wait(error: GatewayError, retry: int, settings: ProviderSettings,
               rng: random.Random) -> float | None:
    """Seconds to wait before retrying, or None to move on (retries spent, a timeout,
    or a Retry-After longer than the provider allows)."""
    if retry >= settings.max_retries or isinstance(error, UpstreamTimeout):
        return None
    backoff = backoff_delay(retry, settings.retry_backoff_s, settings.retry_backoff_max_s, rng)
    asked = retry_after_s(next((v for k, v in error.headers.items()
                                if k.lower() == "retry-after"), None))
    if asked is None:
        return backoff
    if asked > settings.retry_after_max_s:
        return None
    return max(asked, backoff)


# Leg and Attempt are not frozen, though nothing changes them: a frozen dataclass's
# __init__ sets each field through object.__setattr__, about three times the cost, and a
# request makes one of each at least.
@dataclass(slots=True)
class Leg:
    """One route of a request's chain: the request as sent there, to which provider."""

    chat: ChatRequest
    upstream: Upstream
    model: str  # the name the provider knows the model by


@dataclass(slots=True)
class Attempt:
    """One call to make: a leg, with one of its provider's credentials."""

    leg: Leg
    credential: Credential
    call: UpstreamCall
    first_route: bool  # the routed model itself, not a fallback


class Plan:
    """The attempts of one request, in order (see the module's docstring).

    The caller makes each attempt it is given and reports how it ended (`failed`,
    `succeeded` or `abandoned`) before it asks for the next. Every attempt, and every one
    skipped by an open breaker or a call that cannot be built, is noted in `log`.
    """

    def __init__(self, legs: Sequence[Leg], breakers: Mapping[str, CircuitBreaker],
                 credentials: Callable[[Leg], Awaitable[Sequence[Credential]]],
                 log: list[dict[str, Any]], *, rng: random.Random,
                 sleep: Callable[[float], Awaitable[None]]) -> None:
        self._legs = legs
        self._breakers = breakers
        self._credentials = credentials
        self._log = log
        self._rng = rng
        self._sleep = sleep
        self._failures: list[GatewayError] = []
        self._step = Step.SUCCESS

    async def attempts(self) -> AsyncGenerator[Attempt, None]:
        """Each attempt to make, in order; raises where the step is stop."""
        for n, leg in enumerate(self._legs):
            try:
                credentials = await self._credentials(leg)
            except GatewayError as exc:  # the project's stored key cannot be read (503)
                if n == 0:
                    raise
                self._failures.append(exc)
                continue
            for credential in credentials:
                try:
                    call = leg.upstream.adapter.build_call(leg.chat, credential)
                except BadRequest as exc:
                    if n == 0 and not self._failures:
                        raise  # the request as the client sent it cannot be made
                    self._note(leg, credential, exc, 0.0)
                    break  # this route cannot take it: the next route
                attempt = Attempt(leg, credential, call, first_route=n == 0)
                breaker = self._breakers[leg.upstream.name]
                settings = leg.upstream.settings
                for retry in range(settings.max_retries + 1):
                    if not breaker.allow():  # no other credential of this provider either
                        self._note(leg, credential, ServiceUnavailable(
                            f"{leg.upstream.name} is failing; its circuit breaker is open",
                            code="circuit_open", details={"provider": leg.upstream.name}), 0.0)
                        self._step = Step.NEXT_ROUTE
                        break
                    yield attempt
                    if self._step is Step.SUCCESS:
                        return
                    error = self._failures[-1]
                    if self._step is Step.STOP:
                        raise error
                    if self._step is not Step.RETRY:
                        break
                    wait = retry_wait(error, retry, settings, self._rng)
                    if wait is None:
                        self._step = Step.NEXT_CREDENTIAL
                        break
                    await self._sleep(wait)
                if self._step is Step.NEXT_ROUTE:
                    break

    def failed(self, attempt: Attempt, error: GatewayError, elapsed: float) -> None:
        """The attempt's call failed with `error` after `elapsed` seconds."""
        self._note(attempt.leg, attempt.credential, error, elapsed)
        self._step = step(error, attempt.first_route)
        breaker = self._breakers[attempt.leg.upstream.name]
        if self._step is Step.RETRY:
            breaker.failure()
        else:
            breaker.success()  # it answered: the request or the key was at fault

    def succeeded(self, attempt: Attempt, elapsed: float) -> None:
        self._breakers[attempt.leg.upstream.name].success()
        self._note(attempt.leg, attempt.credential, None, elapsed)
        self._step = Step.SUCCESS

    def abandoned(self, attempt: Attempt) -> None:
        """The call ended with neither verdict (the client left, the gateway stops)."""
        self._breakers[attempt.leg.upstream.name].release()

    def error(self) -> GatewayError:
        """Every attempt failed. One: its own error. Several that failed alike (all
        unreachable, all 429, all timed out): the last, saying how many. Otherwise 502 naming
        them all."""
        failures = self._failures
        if not failures:
            return ServiceUnavailable("no credential is configured for this provider",
                                      code="missing_provider_credential")
        last = failures[-1]
        if len(failures) == 1:
            return last
        summary = [{"status": f.status, "code": f.code, "message": f.message} for f in failures]
        if len({(type(f), f.status, f.code) for f in failures}) == 1:
            last.message = f"{last.message} (after {len(failures)} attempts)"
            last.details = {**last.details, "attempts": summary}
            return last
        return BadGateway(f"all {len(failures)} upstream attempts failed; the last: "
                          f"{last.message}", code="all_upstreams_failed",
                          details={"attempts": summary})

    def _note(self, leg: Leg, credential: Credential, error: GatewayError | None,
              elapsed: float) -> None:
        if error is not None:
            self._failures.append(error)
        self._log.append({
            "provider": leg.upstream.name, "model": leg.model, "credential": credential.name,
            "status": 200 if error is None else error.status,
            "error_code": None if error is None else error.code,
            "ms": round(elapsed * 1000, 3)})
