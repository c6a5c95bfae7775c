"""Demo mode for `make run`: a local fake provider when no key is set, a demo project and key."""

from __future__ import annotations

import dataclasses
import os
import secrets
from pathlib import Path

import asyncpg
from aiohttp import web

from gateway import projects
from gateway.settings import BUILTIN_PROVIDERS, Settings

DEMO_PROJECT = "demo"


async def with_demo_defaults(settings: Settings) -> tuple[Settings, web.AppRunner | None]:
    """Point every built-in provider that has no key at one in-process fake upstream, which
    speaks each provider's wire format (a placeholder key where the wire needs one)."""
    runner = None
    providers = dict(settings.providers)
    keyless = [name for name, p in providers.items()
               if name in BUILTIN_PROVIDERS and not p.api_key and not p.credentials
               and p.base_url.rstrip("/") == BUILTIN_PROVIDERS[name][1]]
    if keyless:
        from gateway.testing.fake_upstream import start_fake_upstream

        runner, v1_url = await start_fake_upstream()
        host_url = v1_url.removesuffix("/v1")
        for name in keyless:
            kind = providers[name].kind
            url = v1_url if kind in ("openai", "mistral") else host_url
            key = "" if kind in ("openai", "mistral") else "demo-fake-upstream"
            providers[name] = dataclasses.replace(providers[name], base_url=url, api_key=key)
    auth = settings.auth
    if not auth.admin_token:
        auth = dataclasses.replace(auth, admin_token=ensure_admin_token(
            settings.database.data_dir))
    return dataclasses.replace(settings, providers=providers, auth=auth), runner


async def ensure_demo_key(pool: asyncpg.Pool, data_dir: Path) -> str:
    """The demo project's key, kept in `data_dir/demo-key` so it survives restarts."""
    key_file = data_dir / "demo-key"
    async with pool.acquire() as conn:
        key = _read_key(key_file)
        if key:
            prefix = projects.split_key(key)
            found = await projects.find_key(conn, prefix) if prefix else None
            if found is not None and not found[2] and found[1] == projects.hash_key(key):
                return key
        project_id = await conn.fetchval("SELECT id FROM projects WHERE name = $1", DEMO_PROJECT)
        if project_id is None:
            row = await projects.create_project(
                conn, {"name": DEMO_PROJECT, "team": "demo", "plan": "pro",
                       "metadata": {"created_by": "gateway serve --demo"}})
            project_id = row["id"]
        _, key = await projects.issue_key(conn, project_id, "demo")
    _write_key(key_file, key)
    return key


def ensure_admin_token(data_dir: Path) -> str:
    """The demo's admin token, kept in `data_dir/admin-token` (0600) so that it, and the
    dashboard sign-ins made with it, survive restarts."""
    token_file = data_dir / "admin-token"
    token = _read_key(token_file)
    if not token:
        token = secrets.token_urlsafe(24)
        _write_key(token_file, token)
    return token


def _read_key(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _write_key(path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")


def banner(url: str, key: str, admin_token: str, upstream: str) -> str:
    return f"""
  AI cost gateway is running at {url}
  provider upstream: {upstream}
  dashboard:         {url}/dashboard  (sign in with the admin token or the demo key)
  demo project key:  {key}
  admin token:       {admin_token}

  Try it:
    curl {url}/v1/chat/completions -H "Authorization: Bearer {key}" \\
      -H "Content-Type: application/json" \\
      -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello"}}]}}'
"""
