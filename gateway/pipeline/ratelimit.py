"""Stage 5, rate limit: the plan's requests per minute and day and tokens per minute.

Over a per-minute limit is 429; the plan's request quota for the day spent is 402
`plan_request_limit_exceeded` (the contract's "plan request limit"). The API routes that a
project key calls are held to the same plan windows (`http/quota.py`)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn

from aiohttp import hdrs
from multidict import istr

from gateway.domain import Project
from gateway.errors import PaymentRequired, TooManyRequests
from gateway.pipeline.exchange import Exchange
from gateway.plans import Limits, Plans
from gateway.ratelimit import Decision, LocalLimiter, Window, WindowState
from gateway.tokens.service import TokenService

TOKENS_WINDOW = "tokens_minute"
DAY_WINDOW = "day"
# Names as `istr`: the answer's header multidict takes one as it is, and case-folds a plain
# str first, for each of these headers of every limited call.
LIMIT = istr("X-RateLimit-Limit")
REMAINING = istr("X-RateLimit-Remaining")
RESET = istr("X-RateLimit-Reset")
GATEWAY_REMAINING = istr("X-AI-Cost-Gateway-RateLimit-Remaining")
GATEWAY_RESET = istr("X-AI-Cost-Gateway-RateLimit-Reset")
GATEWAY_BACKEND = istr("X-AI-Cost-Gateway-RateLimit-Backend")


def rate_headers(decision: Decision) -> dict[str, str]:
    """Standard and gateway headers, for the request window closest to its limit."""
    tightest = _tightest(decision.windows)
    remaining = str(tightest.remaining) if tightest.remaining > 0 else "0"
    headers = {REMAINING: remaining, GATEWAY_REMAINING: remaining,
               **_fixed_headers(tightest.limit, tightest.reset_at, decision.backend)}
    if not decision.allowed:
        headers[hdrs.RETRY_AFTER] = str(max(1, math.ceil(decision.retry_after)))
    return headers


def _tightest(windows: Sequence[WindowState]) -> WindowState:
    """A request window before the tokens window; then the fewest remaining; then the one
    resetting last. (A loop: `min` with a key function costs half as much again, and every
    limited call asks.)"""
    tightest, rank = windows[0], None
    for w in windows:
        mine = (w.name == TOKENS_WINDOW, w.remaining, -w.reset_at)
        if rank is None or mine < rank:
            tightest, rank = w, mine
    return tightest


@functools.lru_cache(maxsize=256)
def _fixed_headers(limit: int, reset_at: float, backend: str) -> dict[str, str]:
    """The headers that stay the same for a window until it resets, made once."""
    return {LIMIT: str(limit), RESET: str(math.ceil(reset_at)),
            GATEWAY_RESET: datetime.fromtimestamp(reset_at, UTC).isoformat().replace("+00:00", "Z"),
            GATEWAY_BACKEND: backend}


async def input_tokens(ex: Exchange, tokens: TokenService) -> int:
    """The request's input tokens, counted once per request (exact for OpenAI models)."""
    if ex.input_tokens is None:
        assert ex.chat is not None
        ex.input_tokens = (await tokens.count_chat(ex.chat.body, ex.chat.model)).tokens
    return ex.input_tokens


def input_ceiling(ex: Exchange, tokens: TokenService) -> int:
    """A ceiling on `input_tokens` that needs no tokenizing (its text's bytes), made once."""
    if ex.input_ceiling is None:
        assert ex.chat is not None
        ex.input_ceiling = tokens.chat_upper_bound(ex.chat.body, ex.chat.model)
    return ex.input_ceiling


def plan_windows(limits: Limits) -> tuple[Window, ...]:
    """The plan's request windows (the tokens window needs a request's model: the guard's)."""
    return _request_windows(limits.requests_per_minute, limits.requests_per_day)


@functools.lru_cache(maxsize=1024)  # by the numbers: hashing a `Limits` runs Python code
def _request_windows(per_minute: int, per_day: int) -> tuple[Window, ...]:
    windows = []
    if per_minute:
        windows.append(Window("minute", per_minute, 60, 1))
    if per_day:
        windows.append(Window(DAY_WINDOW, per_day, 86_400, 1))
    return tuple(windows)


def refuse(windows: Sequence[Window], decision: Decision, headers: dict[str, str]) -> NoReturn:
    """Raise the refusal of a decision that did not allow the request: 402 when the plan's
    daily request quota is what is spent, else 429."""
    blocked = [w.name for w, s in zip(windows, decision.windows, strict=True)
               if s.remaining < w.cost]
    details = {"windows": [{"name": s.name, "limit": s.limit, "remaining": s.remaining}
                           for s in decision.windows]}
    if DAY_WINDOW in blocked:  # waiting a minute would not help
        raise PaymentRequired(
            f"the plan's request limit for the day is spent; it resets in "
            f"{headers['Retry-After']} s", code="plan_request_limit_exceeded",
            headers=headers, details=details)
    raise TooManyRequests(
        f"rate limit exceeded ({', '.join(blocked)}); retry in {headers['Retry-After']} s",
        headers=headers, details=details)


@dataclass(frozen=True, slots=True)
class _Quota:
    """A project's limits as the guard applies them: its key and request windows."""

    project: Project  # made for this object: a changed project is a new one in the key store
    key: str
    windows: tuple[Window, ...]  # the request windows
    tokens_per_minute: int


class RateLimitGuard:
    def __init__(self, limiter: LocalLimiter, plans: Plans, tokens: TokenService) -> None:
        self._limiter = limiter
        self._plans = plans
        self._tokens = tokens
        self._quotas: dict[int, _Quota] = {}  # by id() of the project, as the key store holds it

    def _quota(self, project: Project) -> _Quota:
        """The project's limits, made once per project (every call asks)."""
        quota = self._quotas.get(id(project))
        if quota is None or quota.project is not project:
            limits = self._plans.limits(project)
            quota = _Quota(project, f"project:{project.id}", plan_windows(limits),
                           limits.tokens_per_minute)
            if len(self._quotas) >= 4096:  # projects come and go: bounded
                self._quotas.clear()
            self._quotas[id(project)] = quota
        return quota

    async def admit(self, ex: Exchange) -> None:
        assert ex.principal is not None
        quota = self._quota(ex.principal.project)
        windows = quota.windows
        now = time.time()
        tokens = None
        if quota.tokens_per_minute and ex.chat is not None:  # a call with no model: none
            tokens = await self._tokens_window(ex, quota.key, quota.tokens_per_minute, now)
            windows += (tokens,)
        if not windows:
            return
        decision = await self._limiter.hit(quota.key, windows, now)
        headers = rate_headers(decision)
        ex.response_headers.update(headers)
        if not decision.allowed:
            refuse(windows, decision, headers)
        if tokens is not None:
            ex.rate_windows = ((quota.key, tokens),)

    async def _tokens_window(self, ex: Exchange, key: str, limit: int, now: float) -> Window:
        """The call's reservation in the tokens window: its input and its output limit.

        Far from the limit a ceiling on the input will do, as for budgets: while the window
        surely has room for it, no request is refused that exact counts would let through,
        and `settle` puts back what the call did not use. Near the limit the input is
        counted exactly. Meanwhile the ceiling holds more of the window than the call may
        use: another call can then be refused that would have fitted a moment later."""
        assert ex.chat is not None
        output = ex.chat.max_output_tokens or 0
        if ex.input_tokens is None:
            ceiling = Window(TOKENS_WINDOW, limit, 60, input_ceiling(ex, self._tokens) + output)
            if self._limiter.room(key, ceiling, now) >= ceiling.cost:
                return ceiling
        return Window(TOKENS_WINDOW, limit, 60, await input_tokens(ex, self._tokens) + output)

    async def settle(self, ex: Exchange) -> None:
        """Replace the tokens-per-minute reservation by the tokens actually used."""
        for key, window in ex.rate_windows:
            used = ex.usage.input_tokens + ex.usage.output_tokens if ex.forwarded else 0
            if used != window.cost:
                await self._limiter.adjust(key, window, used - window.cost)
