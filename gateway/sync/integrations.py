"""Which admin keys the sync reads with: the settings' (the gateway's own provider
organisation) and those projects stored beside their own provider keys, sealed like them
(`provider_credentials`, credential name `org-admin`, never used for calls)."""

from __future__ import annotations

import asyncpg
import structlog

from gateway.credentials import ADMIN_CREDENTIAL, SecretBox, UnsealError, row_aad
from gateway.settings import SyncSettings
from gateway.sync.records import GATEWAY_ACCOUNT, Integration, project_account

log = structlog.get_logger(__name__)

PROVIDERS = ("openai", "anthropic")


def base_url(settings: SyncSettings, provider: str) -> str:
    return settings.openai_base_url if provider == "openai" else settings.anthropic_base_url


def configured(settings: SyncSettings) -> list[Integration]:
    """The gateway's own admin keys, from the settings."""
    keys = {"openai": settings.openai_admin_key, "anthropic": settings.anthropic_admin_key}
    return [Integration(p, GATEWAY_ACCOUNT, keys[p], base_url(settings, p))
            for p in PROVIDERS if keys[p]]


async def stored(conn: asyncpg.Connection, box: SecretBox | None,
                 settings: SyncSettings) -> tuple[list[Integration], dict[str, str]]:
    """Projects' admin keys that open, and why the others do not (account:provider -> why)."""
    rows = await conn.fetch(
        """SELECT project_id, provider, name, ciphertext, nonce, key_id, base_url
           FROM provider_credentials WHERE name = $1 AND provider = ANY($2::text[])
           ORDER BY provider, project_id""", ADMIN_CREDENTIAL, list(PROVIDERS))
    found, broken = [], {}
    for row in rows:
        account = project_account(row["project_id"])
        where = f"{account}:{row['provider']}"
        if box is None or row["key_id"] != box.key_id:
            broken[where] = "the stored admin key cannot be opened with GATEWAY_SECRET_KEY"
            continue
        try:
            key = box.open(bytes(row["nonce"]), bytes(row["ciphertext"]),
                           row_aad(row["project_id"], row["provider"], row["name"]))
        except UnsealError:
            broken[where] = "the stored admin key does not decrypt: store it again"
            continue
        found.append(Integration(row["provider"], account, key,
                                 row["base_url"] or base_url(settings, row["provider"])))
    for where, why in broken.items():
        log.warning("sync_admin_key_unusable", integration=where, reason=why)
    return found, broken
