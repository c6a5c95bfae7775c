"""Dashboard sessions: a signed, HttpOnly, SameSite=Strict cookie naming who signed in (the
admin token, or one project key), with an expiry and a CSRF token that every form echoes.

The cookie holds no secret: an admin session holds a fingerprint of the admin token (a new
token ends every admin session), a project session the key's id (a revoked key, or a
disabled project, ends its sessions at the next page). The signing key derives from the
configured secrets, so every replica accepts every other's cookies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from gateway.errors import Forbidden
from gateway.settings import Settings

COOKIE = "gw_dashboard"
LOGIN_COOKIE = "gw_dashboard_login"  # the sign-in form's CSRF token (double submit)
LOGIN_TTL_S = 3600
LOGIN_PATH = "/dashboard/login"


def same(given: str, expected: str) -> bool:
    """Constant-time equality of two strings, whatever a client put in them."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True, slots=True)
class Session:
    """Who is signed in: the admin (project_id None) or one project, read-only."""

    csrf: str
    expires: float
    project_id: int | None = None
    key_id: int | None = None
    admin_fingerprint: str = ""

    @property
    def admin(self) -> bool:
        return self.project_id is None


class Signer:
    """Signs and checks cookie values (HMAC-SHA256 over the JSON payload)."""

    def __init__(self, settings: Settings) -> None:
        material = f"{settings.secrets.key}\0{settings.auth.admin_token}"
        if material == "\0":  # nothing configured: sessions last as long as this process
            material = secrets.token_hex(32)
        self._key = hashlib.sha256(b"gateway-dashboard-session\0" + material.encode()).digest()
        self.admin_fingerprint = (
            hmac.new(self._key, settings.auth.admin_token.encode(), "sha256").hexdigest()[:32]
            if settings.auth.admin_token else "")
        self.ttl_s = settings.dashboard.session_ttl_s
        self.secure = (settings.dashboard.secure_cookies
                       or settings.server.public_url.startswith("https://"))

    def sign(self, payload: dict[str, Any]) -> str:
        body = base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")
        mac = hmac.new(self._key, body.encode(), "sha256").digest()
        return f"{body}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"

    def verify(self, value: str) -> dict[str, Any] | None:
        """The payload of a value this signer made and that has not expired, else None."""
        if not value.isascii():  # every value signed here is
            return None
        body, _, mac = value.partition(".")
        expected = base64.urlsafe_b64encode(
            hmac.new(self._key, body.encode(), "sha256").digest()).decode().rstrip("=")
        if not body or not same(mac, expected):
            return None
        try:
            payload = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, orjson.JSONDecodeError):
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int | float):
            return None
        return payload if payload["exp"] > time.time() else None

    def session(self, value: str | None) -> Session | None:
        payload = self.verify(value) if value else None
        if payload is None or not isinstance(payload.get("csrf"), str):
            return None
        session = Session(csrf=payload["csrf"], expires=payload["exp"],
                          project_id=payload.get("project"), key_id=payload.get("key"),
                          admin_fingerprint=payload.get("admin", ""))
        if session.admin and not (self.admin_fingerprint and same(
                str(session.admin_fingerprint), self.admin_fingerprint)):
            return None  # the admin token changed (or is gone) since this sign-in
        return session

    def _cookie(self, response: web.StreamResponse, name: str, value: str, max_age: int,
                path: str) -> None:
        response.set_cookie(name, value, max_age=max_age, path=path, httponly=True,
                            samesite="Strict", secure=self.secure)

    def start(self, response: web.StreamResponse, *, project_id: int | None = None,
              key_id: int | None = None) -> Session:
        """Sign in: set the session cookie (a fresh CSRF token with it)."""
        session = Session(csrf=secrets.token_urlsafe(24), expires=time.time() + self.ttl_s,
                          project_id=project_id, key_id=key_id,
                          admin_fingerprint=self.admin_fingerprint if project_id is None else "")
        payload: dict[str, Any] = {"csrf": session.csrf, "exp": int(session.expires)}
        if project_id is None:
            payload["admin"] = session.admin_fingerprint
        else:
            payload.update(project=project_id, key=key_id)
        self._cookie(response, COOKIE, self.sign(payload), int(self.ttl_s), "/dashboard")
        response.del_cookie(LOGIN_COOKIE, path=LOGIN_PATH)
        return session

    def end(self, response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path="/dashboard")

    def login_token(self, request: web.Request) -> tuple[str, bool]:
        """The sign-in form's CSRF token: (the one its cookie holds, False), else (a new one,
        True: set it with `set_login_cookie`)."""
        payload = self.verify(request.cookies.get(LOGIN_COOKIE, ""))
        if payload is not None and isinstance(payload.get("csrf"), str):
            return str(payload["csrf"]), False
        return secrets.token_urlsafe(24), True

    def set_login_cookie(self, response: web.StreamResponse, token: str) -> None:
        self._cookie(response, LOGIN_COOKIE,
                     self.sign({"csrf": token, "exp": int(time.time()) + LOGIN_TTL_S}),
                     LOGIN_TTL_S, LOGIN_PATH)

    def check_login_token(self, request: web.Request, given: str) -> None:
        payload = self.verify(request.cookies.get(LOGIN_COOKIE, ""))
        expected = payload.get("csrf") if payload else None
        if not isinstance(expected, str) or not same(given, expected):
            raise Forbidden("the sign-in form has expired or was not sent from this page; "
                            "reload it and try again", code="csrf_failed")


def check_csrf(session: Session, given: str) -> None:
    """A form post must echo its session's CSRF token (403 otherwise)."""
    if not same(given, session.csrf):
        raise Forbidden("the form's CSRF token is missing or wrong; reload the page",
                        code="csrf_failed")


def to_login(request: web.Request) -> web.HTTPSeeOther:
    """The redirect to the sign-in page, coming back here afterwards."""
    return web.HTTPSeeOther(f"{LOGIN_PATH}?next={quote(request.path_qs, safe='')}")
