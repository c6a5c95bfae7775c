"""Teams, projects and API keys in PostgreSQL: the one store behind the admin API and the CLI."""

from __future__ import annotations

import hashlib
import secrets
import string
from decimal import Decimal
from typing import Any

import asyncpg

from gateway import checks
from gateway.domain import PLANS, Project, canonical_provider
from gateway.errors import Conflict, NotFound
from gateway.plans import LIMIT_FIELDS

KEY_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
KEY_PREFIX_LENGTH = 10

_PROJECT_COLUMNS = """
    p.id, p.name, t.name AS team, p.plan, p.monthly_budget_usd, p.allowed_providers,
    p.allowed_models, p.enabled, p.metadata, p.created_at, p.updated_at,
    p.requests_per_minute, p.requests_per_day, p.tokens_per_minute,
    p.team_id, t.monthly_budget_usd AS team_budget_usd"""
_PROJECT_SELECT = f"SELECT {_PROJECT_COLUMNS} FROM projects p LEFT JOIN teams t ON t.id = p.team_id"
_KEY_COLUMNS = "id, project_id, prefix, name, created_at, revoked_at"


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key() -> tuple[str, str]:
    """A fresh key `gw_<prefix>_<secret>` and its prefix; the secret has 192 random bits."""
    prefix = "".join(secrets.choice(KEY_PREFIX_ALPHABET) for _ in range(KEY_PREFIX_LENGTH))
    return f"gw_{prefix}_{secrets.token_urlsafe(24)}", prefix


def split_key(key: str) -> str | None:
    """The prefix of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "gw" or len(parts[1]) != KEY_PREFIX_LENGTH or not parts[2]:
        return None
    return parts[1]


def project_from_row(row: asyncpg.Record | dict[str, Any]) -> Project:
    return Project(
        id=row["id"], name=row["name"], team=row["team"], plan=row["plan"],
        monthly_budget_usd=row["monthly_budget_usd"],
        allowed_providers=frozenset(row["allowed_providers"]),
        allowed_models=frozenset(row["allowed_models"]),
        enabled=row["enabled"], metadata=row["metadata"],
        team_id=row["team_id"], team_budget_usd=row["team_budget_usd"],
        limit_overrides={f: row[f] for f in LIMIT_FIELDS if row[f] is not None},
    )


def render_project(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out["allowed_providers"] = list(row["allowed_providers"])
    out["allowed_models"] = list(row["allowed_models"])
    return out


# -- body validation -------------------------------------------------------------------------

MAX_BUDGET_USD = Decimal(10**12)
MAX_METADATA_BYTES = 16_384
MAX_NAMES = 1000
PROJECT_FIELDS = ("name", "team", "plan", "monthly_budget_usd", "allowed_providers",
                  "allowed_models", "enabled", "metadata", *LIMIT_FIELDS)


def parse_project_fields(body: Any, *, partial: bool) -> dict[str, Any]:
    """Check an admin project body (one 400 naming every problem); answer the fields it sets."""
    body = checks.body_object(body)
    problems = checks.Problems()
    checks.unknown_fields(body, PROJECT_FIELDS, problems)
    if not partial and "name" not in body:
        problems.add("name", "is required")
    fields: dict[str, Any] = {}
    for key, value in body.items():
        if key in _PARSERS:
            fields[key] = _PARSERS[key](key, value, problems)
    problems.raise_if_any()
    return fields


def _name(key: str, value: Any, problems: checks.Problems) -> str | None:
    return checks.text(value, key, problems, max_chars=200, strip=True,
                       message="must be a string of 1 to 200 characters without NUL")


def _team(key: str, value: Any, problems: checks.Problems) -> str | None:
    return None if value is None else _name(key, value, problems)


def _plan(key: str, value: Any, problems: checks.Problems) -> str | None:
    if isinstance(value, str) and value in PLANS:
        return value
    problems.add(key, f"must be one of {', '.join(PLANS)}")
    return None


def _budget(key: str, value: Any, problems: checks.Problems) -> Decimal | None:
    if value is None:
        return None
    return checks.money(value, key, problems, high=MAX_BUDGET_USD,
                        message=f"must be a non-negative number of USD (at most "
                                f"{MAX_BUDGET_USD}) or null")


def _names(key: str, value: Any, problems: checks.Problems) -> list[str]:
    if value is None:
        return []
    names = checks.strings(value, key, problems, max_items=MAX_NAMES, max_chars=200,
                           message="must be a list of non-empty strings")
    return sorted(set(names or ()))


def _providers(key: str, value: Any, problems: checks.Problems) -> list[str]:
    """Provider names as the gateway calls them (`google` is `gemini`)."""
    return sorted({canonical_provider(name) for name in _names(key, value, problems)})


def _enabled(key: str, value: Any, problems: checks.Problems) -> bool | None:
    return checks.flag(value, key, problems)


def _limit(key: str, value: Any, problems: checks.Problems) -> int | None:
    if value is None:
        return None
    return checks.whole(value, key, problems, 0, 2**31 - 1,
                        "must be a whole number >= 0 (0: unlimited) or null (the plan's)")


def _metadata(key: str, value: Any, problems: checks.Problems) -> dict[str, Any]:
    if value is None:
        return {}
    return checks.json_object(value, key, problems, max_bytes=MAX_METADATA_BYTES) or {}


_PARSERS = {
    "name": _name, "team": _team, "plan": _plan, "monthly_budget_usd": _budget,
    "allowed_providers": _providers, "allowed_models": _names, "enabled": _enabled,
    "metadata": _metadata,
    **dict.fromkeys(LIMIT_FIELDS, _limit),
}


# -- store -----------------------------------------------------------------------------------

async def _team_id(conn: asyncpg.Connection, team: str | None) -> int | None:
    if team is None:
        return None
    team_id: int = await conn.fetchval(
        """WITH ins AS (INSERT INTO teams (name) VALUES ($1) ON CONFLICT (name) DO NOTHING
                        RETURNING id)
           SELECT id FROM ins UNION ALL SELECT id FROM teams WHERE name = $1 LIMIT 1""", team)
    return team_id


async def create_project(conn: asyncpg.Connection, fields: dict[str, Any]) -> asyncpg.Record:
    async with conn.transaction():
        team_id = await _team_id(conn, fields.get("team"))
        try:
            project_id = await conn.fetchval(
                """INSERT INTO projects (name, team_id, plan, monthly_budget_usd,
                       allowed_providers, allowed_models, enabled, metadata,
                       requests_per_minute, requests_per_day, tokens_per_minute)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id""",
                fields["name"], team_id, fields.get("plan", "free"),
                fields.get("monthly_budget_usd"), fields.get("allowed_providers", []),
                fields.get("allowed_models", []), fields.get("enabled", True),
                fields.get("metadata", {}), *(fields.get(f) for f in LIMIT_FIELDS))
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a project named {fields['name']!r} already exists",
                           details={"field": "name"}) from None
        return await get_project(conn, project_id)


async def get_project(conn: asyncpg.Connection, project_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(f"{_PROJECT_SELECT} WHERE p.id = $1", project_id)
    if row is None:
        raise NotFound(f"project {project_id} does not exist")
    return row


async def list_projects(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await conn.fetch(f"{_PROJECT_SELECT} ORDER BY p.id"))


async def update_project(conn: asyncpg.Connection, project_id: int,
                         fields: dict[str, Any]) -> asyncpg.Record:
    async with conn.transaction():
        await get_project(conn, project_id)
        columns = dict(fields)
        if "team" in columns:
            columns["team_id"] = await _team_id(conn, columns.pop("team"))
        if columns:
            names = list(columns)
            assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(names))
            try:
                await conn.execute(
                    f"UPDATE projects SET {assignments}, updated_at = now() WHERE id = $1",
                    project_id, *(columns[n] for n in names))
            except asyncpg.UniqueViolationError:
                raise Conflict(f"a project named {fields.get('name')!r} already exists",
                               details={"field": "name"}) from None
        return await get_project(conn, project_id)


async def issue_key(conn: asyncpg.Connection, project_id: int,
                    name: str = "") -> tuple[asyncpg.Record, str]:
    """Create a key; the plain key is answered here once and never stored."""
    await get_project(conn, project_id)
    for _ in range(5):
        key, prefix = new_key()
        try:
            row = await conn.fetchrow(
                f"""INSERT INTO api_keys (project_id, prefix, key_hash, name)
                    VALUES ($1, $2, $3, $4) RETURNING {_KEY_COLUMNS}""",
                project_id, prefix, hash_key(key), name)
        except asyncpg.UniqueViolationError:
            continue  # prefix collision: astronomically rare, draw again
        return row, key
    raise RuntimeError("could not draw a unique key prefix")


async def list_keys(conn: asyncpg.Connection,
                    project_id: int | None = None) -> list[asyncpg.Record]:
    if project_id is None:
        return list(await conn.fetch(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY id"))
    await get_project(conn, project_id)
    return list(await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE project_id = $1 ORDER BY id", project_id))


async def revoke_key(conn: asyncpg.Connection, key_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
            RETURNING {_KEY_COLUMNS}""", key_id)
    if row is None:
        raise NotFound(f"key {key_id} does not exist")
    return row


async def find_key(conn: asyncpg.Connection,
                   prefix: str) -> tuple[int, bytes, bool, Project] | None:
    """The key with this prefix: (id, hash, revoked, project), for authentication."""
    row = await conn.fetchrow(
        f"""SELECT k.id AS key_id, k.key_hash, k.revoked_at IS NOT NULL AS revoked,
                   {_PROJECT_COLUMNS}
            FROM api_keys k JOIN projects p ON p.id = k.project_id
            LEFT JOIN teams t ON t.id = p.team_id
            WHERE k.prefix = $1""", prefix)
    if row is None:
        return None
    return row["key_id"], bytes(row["key_hash"]), row["revoked"], project_from_row(row)


async def set_team_budget(conn: asyncpg.Connection, team_id: int,
                          amount: Decimal | None) -> asyncpg.Record:
    row = await conn.fetchrow(
        "UPDATE teams SET monthly_budget_usd = $2 WHERE id = $1 "
        "RETURNING id, name, monthly_budget_usd, created_at", team_id, amount)
    if row is None:
        raise NotFound(f"team {team_id} does not exist")
    return row
