"""The seeds' API faces: which paths speak meterr's or CodingVibez's dialect.

One mapping, by path, decides a request's face; the error middleware answers in that face's
error shape (`envelope.py`) and `http/quota.py` applies the face's own per-method limits.
The handlers (`meterr.py`, `codingvibez.py`) are thin: they reshape what the gateway's own
analytics, budgets and ledger answer, and hold no query or rule of their own.
"""

from __future__ import annotations

METERR = "meterr"
CODINGVIBEZ = "codingvibez"

# meterr's API lives under /v1 beside OpenAI's; none of these paths is one of OpenAI's.
METERR_PATHS = frozenset({"/v1/usage", "/v1/usage/history", "/v1/track", "/v1/costs",
                          "/v1/costs/forecast", "/v1/budgets", "/v1/teams", "/v1/providers",
                          "/v1/providers/connect"})
METERR_PREFIXES = ("/v1/providers/", "/v1/teams/")

CODINGVIBEZ_PATHS = frozenset({
    "/api/tokens", "/api/tokens/track", "/api/tokens/stats", "/api/tokens/timeseries",
    "/api/tokens/burn-rate", "/api/costs/all", "/api/costs/manual", "/api/dashboard",
    "/api/analytics", "/api/projections", "/api/health", "/api/tracking-health",
    "/api/status", "/api/sync", "/api/sync-organization-usage"})
CODINGVIBEZ_PREFIXES = ("/api/costs/",)  # /api/costs/{provider}
GATEWAY_PATHS = frozenset({"/api/costs/forecast"})  # the gateway's own, under a face prefix

# The seeds' paths of things this product does not do: 404 in the face's shape, saying so.
OUT_OF_PRODUCT = {
    "/v1/teams": "team member invitations (it has projects and keys, not users)",
    "/api/checkout": "billing checkout",
    "/api/billing-history": "billing history",
    "/api/subscription-status": "subscriptions",
    "/api/expenses": "expenses",
    "/api/receipts": "receipt OCR",
    "/api/organizations": "organisations",
    "/api/team": "organisation members and invitations",
}

# CodingVibez's own limits on its face, per method and minute (its "GET: 100/min, POST: 30/min").
FACE_LIMITS = {CODINGVIBEZ: {"GET": 100, "HEAD": 100, "POST": 30}}


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def out_of_product(path: str) -> str | None:
    """What a seed's path out of this product is about, or None (`/v1/teams` itself is
    served; only the paths under it are out)."""
    for prefix, what in OUT_OF_PRODUCT.items():
        if _under(path, prefix) and path not in METERR_PATHS:
            return what
    return None


def face_of(path: str) -> str | None:
    """The face a path belongs to, or None for the gateway's own paths."""
    if path in GATEWAY_PATHS:
        return None
    if path in METERR_PATHS or path.startswith(METERR_PREFIXES):
        return METERR
    if (path in CODINGVIBEZ_PATHS or path.startswith(CODINGVIBEZ_PREFIXES)
            or out_of_product(path) is not None):
        return CODINGVIBEZ
    return None


def not_found_message(path: str) -> str | None:
    """The 404 message for a face path this product leaves out, or None."""
    what = out_of_product(path)
    if what is None:
        return None
    return (f"{path} is not part of this product: the AI cost gateway does not do {what} "
            "(see the README's table of seed endpoints)")
