"""The `gateway` command: serve, migrate, and the admin commands for projects and keys."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import structlog
from aiohttp import web

from gateway import connections, db, demo, migrate, projects, workers
from gateway.catalogue import CatalogueError
from gateway.errors import GatewayError
from gateway.http.json import json_default
from gateway.keys import POOL, READINESS, SHUTDOWN
from gateway.logging import configure_logging
from gateway.plans import LIMIT_FIELDS
from gateway.settings import Settings, SettingsError, load_settings
from gateway.tokens import bulk
from gateway.tokens.probe import GpuUnavailable

log = structlog.get_logger(__name__)

GC_GEN0_THRESHOLD = 10_000


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.logging)
    try:
        result: int = args.run(args, settings)
        return result
    except (GatewayError, migrate.MigrationError, GpuUnavailable, CatalogueError) as exc:
        print(f"gateway: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML config file (default config/gateway.toml)")
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--no-migrate", action="store_true", help="do not migrate on start")
    serve.add_argument("--workers", type=int,
                       help="processes sharing the port (default: one per core where the "
                            "limits are shared, else one)")
    serve.add_argument("--demo", action="store_true",
                       help="demo project and key; a local fake provider if no key is set")
    serve.set_defaults(run=_serve)

    sub.add_parser("migrate", parents=[common], help="apply pending migrations").set_defaults(
        run=lambda a, s: _with_db(s, None))

    tok = sub.add_parser("tokens", help="token counting").add_subparsers(required=True,
                                                                         metavar="ACTION")
    count = tok.add_parser("count", parents=[common],
                           help="count and price JSONL chat logs, totals per model")
    count.add_argument("files", nargs="+", metavar="FILE")
    count.add_argument("--model", help="count every line as this model")
    count.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    count.set_defaults(run=lambda a, s: bulk.run(s, a.files, model=a.model, as_json=a.json))

    proj = sub.add_parser("projects", help="manage projects").add_subparsers(required=True,
                                                                              metavar="ACTION")
    create = proj.add_parser("create", parents=[common])
    create.add_argument("--name", required=True)
    _project_options(create)
    create.set_defaults(run=lambda a, s: _with_db(s, lambda c: _create_project(c, a)))
    proj.add_parser("list", parents=[common]).set_defaults(
        run=lambda a, s: _with_db(s, _list_projects))
    update = proj.add_parser("update", parents=[common])
    update.add_argument("id", type=int)
    update.add_argument("--name")
    _project_options(update)
    update.set_defaults(run=lambda a, s: _with_db(s, lambda c: _update_project(c, a)))
    disable = proj.add_parser("disable", parents=[common])
    disable.add_argument("id", type=int)
    disable.set_defaults(run=lambda a, s: _with_db(s, lambda c: _print(
        projects.update_project(c, a.id, {"enabled": False}), projects.render_project)))

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(required=True,
                                                                         metavar="ACTION")
    issue = keys.add_parser("issue", parents=[common], help="issue a key (shown once)")
    issue.add_argument("project_id", type=int)
    issue.add_argument("--name", default="")
    issue.set_defaults(run=lambda a, s: _with_db(s, lambda c: _issue_key(c, a)))
    klist = keys.add_parser("list", parents=[common])
    klist.add_argument("--project", type=int)
    klist.set_defaults(run=lambda a, s: _with_db(s, lambda c: _print_rows(
        projects.list_keys(c, a.project), dict)))
    revoke = keys.add_parser("revoke", parents=[common])
    revoke.add_argument("id", type=int)
    revoke.set_defaults(run=lambda a, s: _with_db(s, lambda c: _print(
        projects.revoke_key(c, a.id), dict)))
    return parser


def _project_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--team")
    p.add_argument("--plan", choices=("free", "pro", "team", "enterprise"))
    p.add_argument("--budget", dest="monthly_budget_usd", help="monthly budget in USD")
    p.add_argument("--provider", dest="allowed_providers", action="append",
                   help="allow this provider (repeat); none given: all")
    p.add_argument("--model", dest="allowed_models", action="append",
                   help="allow this model or glob (repeat); none given: all")
    for field in LIMIT_FIELDS:
        p.add_argument(f"--{field.replace('_', '-')}", dest=field, type=int,
                       help="overrides the plan's limit (0: unlimited)")
    p.add_argument("--enabled", choices=("true", "false"))
    p.add_argument("--metadata", help="JSON object")


def _project_fields(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in ("name", "team", "plan", "monthly_budget_usd", "allowed_providers",
                 "allowed_models", *LIMIT_FIELDS):
        if getattr(args, name, None) is not None:
            body[name] = getattr(args, name)
    if args.enabled is not None:
        body["enabled"] = args.enabled == "true"
    if args.metadata is not None:
        try:
            body["metadata"] = orjson.loads(args.metadata)
        except orjson.JSONDecodeError as exc:
            raise GatewayError(f"--metadata is not valid JSON: {exc}") from None
    return body


async def _create_project(conn: asyncpg.Connection, args: argparse.Namespace) -> None:
    fields = projects.parse_project_fields(_project_fields(args), partial=False)
    await _print(projects.create_project(conn, fields), projects.render_project)


async def _update_project(conn: asyncpg.Connection, args: argparse.Namespace) -> None:
    fields = projects.parse_project_fields(_project_fields(args), partial=True)
    await _print(projects.update_project(conn, args.id, fields), projects.render_project)


async def _list_projects(conn: asyncpg.Connection) -> None:
    await _print_rows(projects.list_projects(conn), projects.render_project)


async def _issue_key(conn: asyncpg.Connection, args: argparse.Namespace) -> None:
    row, key = await projects.issue_key(conn, args.project_id, args.name)
    _dump({**dict(row), "key": key})
    print("store this key now: it is not shown again", file=sys.stderr)


def _dump(data: Any) -> None:
    print(orjson.dumps(data, default=json_default, option=orjson.OPT_INDENT_2).decode())


async def _print(row: Awaitable[Any], render: Callable[[Any], Any]) -> None:
    _dump(render(await row))


async def _print_rows(rows: Awaitable[list[Any]], render: Callable[[Any], Any]) -> None:
    for row in await rows:
        print(orjson.dumps(render(row), default=json_default).decode())


def _with_db(settings: Settings,
             action: Callable[[asyncpg.Connection], Awaitable[None]] | None) -> int:
    """Run an admin action on one connection, after migrating (`action=None`: migrate only)."""

    async def run() -> None:
        dsn, embedded = await db.resolve_dsn(settings.database)
        try:
            conn = await db.connect(dsn, settings.database)
            try:
                applied = await migrate.migrate(conn, settings.database.migrations_dir)
                if action is None:
                    print(f"applied {len(applied)} migration(s)" + (
                        f": {', '.join(applied)}" if applied else ""))
                else:
                    await action(conn)
            finally:
                await conn.close()
        finally:
            if embedded is not None:
                embedded.stop()

    asyncio.run(run())
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses

    server = dataclasses.replace(settings.server, **{
        k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    database = settings.database
    if args.no_migrate:
        database = dataclasses.replace(database, migrate_on_start=False)
    settings = dataclasses.replace(settings, server=server, database=database)
    try:
        count = workers.worker_count(
            args.workers if args.workers is not None else settings.server.workers or None,
            settings, demo=args.demo)
    except SettingsError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if count > 1:
        return workers.Supervisor(settings, count, _serve_worker).run()
    _install_uvloop()
    asyncio.run(serve(settings, demo_mode=args.demo))
    return 0


def _serve_worker(settings: Settings, index: int) -> None:
    """One of several `serve` workers (a forked process): the port shared by SO_REUSEPORT."""
    _install_uvloop()
    asyncio.run(serve(settings, reuse_port=True, worker=index))


def _trim_heap() -> None:
    """Hand the start-up's freed memory (loading the encodings leaves much) back to the OS
    (glibc; elsewhere nothing to do)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


async def serve(settings: Settings, *, demo_mode: bool = False, reuse_port: bool = False,
                worker: int | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain: readiness 503, finish requests, flush the ledger."""
    from gateway.app import build_app

    fake = None
    if demo_mode:
        settings, fake = await demo.with_demo_defaults(settings)
    app = build_app(settings)
    connections.fit_fd_limit(settings.server.max_connections)
    runner = connections.make_runner(app)
    await runner.setup()
    # Everything allocated so far lives as long as the process: keep it out of every
    # collection, and collect the young generation less often (measured: about +10% req/s).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    _trim_heap()
    try:
        site = web.TCPSite(runner, settings.server.host, settings.server.port,
                           reuse_port=reuse_port or None)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else settings.server.port
        url = f"http://{settings.server.host}:{port}"
        log.info("gateway_listening", url=url, pid=os.getpid(),
                 **({"worker": worker} if worker is not None else {}))
        if demo_mode:
            key = await demo.ensure_demo_key(app[POOL], settings.database.data_dir)
            print(demo.banner(url, key, settings.auth.admin_token,
                              settings.provider("openai").base_url), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        shutdown = app[SHUTDOWN]
        shutdown.begin()  # everything below ends within server.shutdown_timeout_s
        log.info("gateway_draining", within_s=shutdown.timeout_s)
        app[READINESS].draining = True  # readiness answers 503 from here on
        # Let load balancers notice, within the deadline.
        await asyncio.sleep(min(settings.server.drain_delay_s, shutdown.for_requests()))
    finally:
        runner.limit_shutdown(app[SHUTDOWN].for_requests())
        await runner.cleanup()
        if fake is not None:
            await fake.cleanup()
        log.info("gateway_stopped")
