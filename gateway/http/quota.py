"""Plan limits on the API routes a project key calls (tracking, analytics, budgets, the seed
faces), and a face's own per-method limits.

The plan windows are the proxy's (stage 5, `pipeline/ratelimit.py`) under the same limiter
key, so a project's requests per minute and per day count every call it makes. The admin
token is not held to a plan. The headers of the window closest to its limit go on the answer.
"""

from __future__ import annotations

from aiohttp import web

from gateway.domain import Principal
from gateway.http.faces import FACE_LIMITS, face_of
from gateway.keys import LIMITER, PLANS, RATE_HEADERS
from gateway.pipeline.ratelimit import REMAINING, plan_windows, rate_headers, refuse
from gateway.ratelimit import Window


async def admit(request: web.Request, principal: Principal) -> None:
    """Count this call against the face's per-method limit and the project's plan: 429 over
    a per-minute limit, 402 once the plan's daily request quota is spent."""
    limiter = request.app[LIMITER]
    project = principal.project
    found: list[dict[str, str]] = []
    face = face_of(request.path)
    per_minute = FACE_LIMITS.get(face or "", {}).get(request.method)
    if face is not None and per_minute:
        windows: tuple[Window, ...] = (Window("minute", per_minute, 60, 1),)
        decision = await limiter.hit(f"face:{face}:{request.method}:project:{project.id}",
                                     windows)
        found.append(rate_headers(decision))
        if not decision.allowed:
            refuse(windows, decision, found[-1])
    windows = plan_windows(request.app[PLANS].limits(project))
    if windows:
        decision = await limiter.hit(f"project:{project.id}", windows)  # the proxy's key
        found.append(rate_headers(decision))
        if not decision.allowed:
            refuse(windows, decision, found[-1])
    if found:
        request[RATE_HEADERS] = min(found, key=lambda h: int(h[REMAINING]))

