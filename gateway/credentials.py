"""Per-project provider credentials: sealed in PostgreSQL, cached in-process, never shown.

`GATEWAY_SECRET_KEY` is any string of at least 32 characters (for instance
`python -c "import secrets; print(secrets.token_urlsafe(32))"`). It is used as text, never
decoded as base64 or hex, so one value always means one key: HKDF-SHA256 derives the 256-bit
AES-GCM key from its UTF-8 bytes (surrounding whitespace removed).

Reading is strict: when a project's stored credential for a provider cannot be opened (no
`GATEWAY_SECRET_KEY`, another key, an altered row), that provider answers 503 for the project;
it never falls back to the gateway's own credential, which would bill another account.

The cache is the keys' (`dbcache.DbCache`): one query per project per invalidation, dropped by
NOTIFY on `gateway_credentials` (a trigger sends the project id), and living one second while
the listener is down. While the database cannot be read, a project's last answer keeps serving
(for `auth.stale_serve_s` at most), as cached keys do; a project never read answers 503.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import asyncpg
import structlog

from gateway import projects
from gateway.dbcache import DbCache, Freshness
from gateway.errors import NotFound, ServiceUnavailable
from gateway.providers.base import Credential
from gateway.settings import SettingsError

log = structlog.get_logger(__name__)

CHANNEL = "gateway_credentials"
LISTENER_NAME = "gateway-credentials-listener"  # application_name of the LISTEN connection
MAX_PROJECTS = 100_000
MIN_SECRET_CHARS = 32
HKDF_INFO = b"gateway provider credentials v1"
_SETTING = "GATEWAY_SECRET_KEY"
# A credential stored under this name is the provider organisation's admin key: read by the
# sync (gateway/sync/integrations.py) for usage and cost reports, never used for calls.
ADMIN_CREDENTIAL = "org-admin"
_ROWS = """SELECT provider, name, ciphertext, nonce, key_id, base_url, weight, options
           FROM provider_credentials WHERE project_id = $1 ORDER BY provider, name"""


class CredentialsUnavailable(ServiceUnavailable):
    """A project's stored credential exists but cannot be used by this gateway."""

    code = "credentials_unavailable"


class UnsealError(ValueError):
    """A ciphertext did not open: another key, other associated data, or altered bytes."""


class SecretBox:
    """AES-256-GCM under a key derived from `GATEWAY_SECRET_KEY`; `key_id` fingerprints it."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, secret: str) -> None:
        # Imported here: a gateway with no secrets.key never loads cryptography (about 7 MB).
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        secret = secret.strip()
        if len(secret) < MIN_SECRET_CHARS:
            raise SettingsError(f"{_SETTING} (secrets.key) must be at least {MIN_SECRET_CHARS} "
                                f"characters; it has {len(secret)}")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=HKDF_INFO).derive(secret.encode())
        self.key_id = hashlib.sha256(key).hexdigest()[:16]
        self._aead = AESGCM(key)

    @classmethod
    def from_setting(cls, secret: str) -> SecretBox | None:
        """A box, or None when the setting is empty (storing credentials is then refused)."""
        return cls(secret) if secret.strip() else None

    def seal(self, plaintext: str, aad: bytes) -> tuple[bytes, bytes]:
        """(nonce, ciphertext with tag); a fresh random 96-bit nonce each time."""
        nonce = os.urandom(12)
        return nonce, self._aead.encrypt(nonce, plaintext.encode(), aad)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> str:
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(nonce, ciphertext, aad).decode()
        except InvalidTag:
            raise UnsealError("the ciphertext does not open with this key and row") from None

    def __repr__(self) -> str:
        return f"SecretBox(key_id={self.key_id!r})"


def row_aad(project_id: int, provider: str, name: str) -> bytes:
    """The associated data binding a ciphertext to its row (names never hold ':')."""
    return f"{project_id}:{provider}:{name}".encode()


def key_hint(api_key: str) -> str:
    """The last four characters, for recognising a key; nothing for short keys."""
    return "\u2026" + (api_key[-4:] if len(api_key) >= 12 else "")


# -- store -----------------------------------------------------------------------------------

_PUBLIC = """id, project_id, provider, name, key_hint, base_url, weight, options,
             key_id AS encryption_key_id, created_at, updated_at"""


async def put_credential(conn: asyncpg.Connection, box: SecretBox, project_id: int,
                         provider: str, name: str, api_key: str, base_url: str | None,
                         weight: int, options: Mapping[str, str]) -> dict[str, Any]:
    """Create or replace one credential; answers its public view (never the key)."""
    nonce, ciphertext = box.seal(api_key, row_aad(project_id, provider, name))
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO provider_credentials (project_id, provider, name, ciphertext, nonce,
                    key_id, key_hint, base_url, weight, options)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                ON CONFLICT (project_id, provider, name) DO UPDATE SET
                    ciphertext = EXCLUDED.ciphertext, nonce = EXCLUDED.nonce,
                    key_id = EXCLUDED.key_id, key_hint = EXCLUDED.key_hint,
                    base_url = EXCLUDED.base_url, weight = EXCLUDED.weight,
                    options = EXCLUDED.options, updated_at = now()
                RETURNING {_PUBLIC}""",
            project_id, provider, name, ciphertext, nonce, box.key_id, key_hint(api_key),
            base_url, weight, dict(options))
    except asyncpg.ForeignKeyViolationError:
        raise NotFound(f"project {project_id} does not exist") from None
    return dict(row)


async def list_credentials(conn: asyncpg.Connection, project_id: int) -> list[dict[str, Any]]:
    """A project's credentials, public views only; NotFound for an unknown project."""
    await projects.get_project(conn, project_id)
    rows = await conn.fetch(f"SELECT {_PUBLIC} FROM provider_credentials WHERE project_id = $1 "
                            "ORDER BY provider, name", project_id)
    return [dict(r) for r in rows]


async def delete_credential(conn: asyncpg.Connection, project_id: int, provider: str,
                            name: str) -> bool:
    status = await conn.execute(
        "DELETE FROM provider_credentials WHERE project_id = $1 AND provider = $2 AND name = $3",
        project_id, provider, name)
    return bool(status == "DELETE 1")


# -- cache -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Entry:
    credentials: Mapping[str, tuple[Credential, ...]]  # provider -> usable credentials
    broken: Mapping[str, str]  # provider -> why its stored credentials cannot be used


def _unseal(box: SecretBox | None, project_id: int,
            rows: list[asyncpg.Record]) -> tuple[dict[str, list[Credential]], dict[str, str]]:
    found: dict[str, list[Credential]] = {}
    broken: dict[str, str] = {}
    for row in rows:
        provider, name = row["provider"], row["name"]
        if name == ADMIN_CREDENTIAL:
            continue
        what = f"project {project_id}'s stored {provider} credential {name!r}"
        if box is None:
            broken[provider] = f"{what} cannot be used: {_SETTING} is not set"
            continue
        if row["key_id"] != box.key_id:
            broken[provider] = (f"{what} was sealed with encryption key {row['key_id']}, but "
                                f"{_SETTING} is key {box.key_id}: start the gateway with the "
                                "key it was stored with, or store the credential again")
            continue
        try:
            api_key = box.open(bytes(row["nonce"]), bytes(row["ciphertext"]),
                               row_aad(project_id, provider, name))
        except UnsealError:
            broken[provider] = (f"{what} does not decrypt with {_SETTING} (key "
                                f"{box.key_id}): the row was altered; store it again")
            continue
        options = MappingProxyType({str(k): str(v) for k, v in row["options"].items()})
        found.setdefault(provider, []).append(Credential(
            name=name, api_key=api_key, base_url=row["base_url"] or "",
            weight=row["weight"], options=options))
    for provider, creds in found.items():
        if provider not in broken and not any(c.weight for c in creds):
            broken[provider] = (f"every stored {provider} credential of project {project_id} "
                                "has weight 0; give one a weight above 0")
    return found, broken


class ProjectCredentials:
    """Each project's own provider credentials, decrypted once per read (`DbCache`).

    `get` answers () when the project stores none for the provider (use the gateway's own),
    else its credentials (`base_url` "" meaning the provider's), else raises
    `CredentialsUnavailable` when they exist but cannot be opened, or cannot be read and were
    never read (or not within `stale_serve_s`).
    """

    def __init__(self, box: SecretBox | None, *, ttl_s: float,
                 connect_timeout_s: float = 5.0, refresh_timeout_s: float = 0.5,
                 stale_serve_s: float = 300.0) -> None:
        self._box = box
        self._connect_timeout = connect_timeout_s
        self._cache: DbCache[int, _Entry] = DbCache(
            self._read, name="credentials", unavailable=_unreadable, max_entries=MAX_PROJECTS,
            freshness=Freshness(ttl_s, refresh_timeout_s, stale_serve_s))

    @property
    def box(self) -> SecretBox | None:
        return self._box

    @property
    def listening(self) -> bool:
        return self._cache.listening

    @property
    def cache(self) -> DbCache[int, _Entry]:
        """For `dbcache.caught_up`."""
        return self._cache

    async def start(self, pool: asyncpg.Pool, dsn: str) -> None:
        """Serve from `pool`; LISTEN on a connection of its own to `dsn`."""
        self._cache.start(pool, dsn, CHANNEL, on_notify=self.invalidate,
                          connect_timeout_s=self._connect_timeout,
                          application_name=LISTENER_NAME)

    async def close(self) -> None:
        await self._cache.close()

    async def get(self, project_id: int, provider: str) -> tuple[Credential, ...]:
        entry = await self._cache.get(project_id)
        assert entry is not None  # a project without rows reads as an empty entry
        reason = entry.broken.get(provider)
        if reason is not None:
            raise CredentialsUnavailable(reason, details={"provider": provider})
        return entry.credentials.get(provider, ())

    async def _read(self, conn: asyncpg.Connection, project_id: int) -> _Entry:
        rows = await conn.fetch(_ROWS, project_id)
        found, broken = _unseal(self._box, project_id, list(rows))
        for provider, reason in broken.items():
            log.warning("provider_credentials_unusable", project_id=project_id,
                        provider=provider, reason=reason)
        return _Entry({p: tuple(c) for p, c in found.items() if p not in broken}, broken)

    def invalidate(self, payload: str) -> None:
        """Drop one project's entry (payload: its id); any other payload has every entry read
        again before it is trusted (kept, so the database being down serves the last one)."""
        if payload.isdigit():
            self._cache.drop(int(payload))
        else:
            self._cache.expire_all()


def _unreadable(project_id: int) -> CredentialsUnavailable:
    return CredentialsUnavailable(
        f"project {project_id}'s provider credentials cannot be read from the database "
        "now, and the gateway does not fall back to its own without knowing",
        details={"project_id": project_id}, headers={"Retry-After": "1"})
