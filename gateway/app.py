"""`build_app(settings)`: the only wiring. Resources live in `cleanup_ctx`, torn down in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import aiohttp_jinja2
import asyncpg
import jinja2
import structlog
from aiohttp import web

from gateway import db
from gateway.alerts import AlertHook
from gateway.budgets import BudgetBook, TrackedSpendHook
from gateway.catalogue import Catalogue
from gateway.credentials import ProjectCredentials, SecretBox
from gateway.entries.base import Limits
from gateway.health import Readiness
from gateway.http.dashboard import filters
from gateway.http.dashboard.assets import TEMPLATES_DIR
from gateway.http.dashboard.session import Signer
from gateway.http.metrics import metrics_middleware
from gateway.idempotency import create_claims
from gateway.keys import (
    ALERTS,
    BUDGETS,
    CATALOGUE,
    CLAIMS,
    CREDENTIALS,
    DASHBOARD,
    DATABASE_START,
    DSN,
    KEYSTORE,
    LEDGER,
    LIMITER,
    METRICS,
    OBSERVED,
    PIPELINE,
    PLANS,
    POOL,
    PRICES,
    READINESS,
    SETTINGS,
    SHUTDOWN,
    SYNC,
    TOKENIZERS,
    TOKENS,
    UPSTREAMS,
    WEBHOOKS,
)
from gateway.keystore import KeyStore
from gateway.ledger import Ledger
from gateway.metrics import Metrics
from gateway.middlewares import error_middleware_factory
from gateway.observed import Observations
from gateway.pipeline.budget import BudgetGuard
from gateway.pipeline.idempotency import IdempotencyGuard
from gateway.pipeline.ratelimit import RateLimitGuard
from gateway.pipeline.runner import ProxyPipeline
from gateway.plans import Plans
from gateway.pricing import PriceTable
from gateway.providers import configured_credentials, create_adapter
from gateway.providers.base import Upstream
from gateway.ratelimit import create_limiter
from gateway.routes import setup_routes
from gateway.routing import Router
from gateway.settings import Settings
from gateway.shutdown import Shutdown
from gateway.sync import integrations
from gateway.sync.scheduler import SyncRunner
from gateway.tokens.encodings import ENCODINGS, PRELOADED, load_all, load_encoding
from gateway.tokens.models import ModelTokenizers
from gateway.tokens.service import build_token_service
from gateway.webhooks import WebhookWorker

log = structlog.get_logger(__name__)


def build_app(settings: Settings) -> web.Application:
    metrics = Metrics()
    # The metrics middleware wraps the error middleware, so it sees every final status.
    app = web.Application(middlewares=[metrics_middleware(metrics), error_middleware_factory()],
                          client_max_size=settings.server.max_body_bytes)
    app[SETTINGS] = settings
    app[SHUTDOWN] = Shutdown(settings.server.shutdown_timeout_s)
    app[METRICS] = metrics
    app[PRICES] = PriceTable.load(settings.pricing)  # a broken price table fails the start
    app[TOKENIZERS] = ModelTokenizers.load(settings.tokens.models_file)
    app[CATALOGUE] = Catalogue.load(settings.routing.catalogue_file)  # a broken one fails too
    app[CATALOGUE].check_prices(app[PRICES])
    app[CATALOGUE].check_routes(settings.routing.routes)
    app[OBSERVED] = Observations(settings.routing.observe_window_s)
    app[PLANS] = Plans.load(settings.ratelimit.plans_file)
    app[CREDENTIALS] = ProjectCredentials(  # a too-short GATEWAY_SECRET_KEY fails the start
        SecretBox.from_setting(settings.secrets.key), ttl_s=settings.auth.key_cache_ttl_s,
        connect_timeout_s=settings.database.connect_timeout_s,
        refresh_timeout_s=settings.auth.refresh_timeout_s,
        stale_serve_s=settings.auth.stale_serve_s)
    app.cleanup_ctx.extend([_tokens, _database, _upstreams, _keystore, _ledger, _webhooks,
                            _sync, _limits, _pipeline])
    app[DASHBOARD] = Signer(settings)
    # Autoescaped: whatever a client sent (metadata, model and project names) renders as text.
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                         undefined=jinja2.StrictUndefined, filters=filters.FILTERS)
    setup_routes(app)
    return app


async def _tokens(app: web.Application) -> AsyncIterator[None]:
    """The preloaded encodings (and the GPU kernel, for tokens.backend gpu/auto) load once,
    off the loop, before the gateway serves (or reports ready); the others when first used."""
    encodings = await asyncio.to_thread(load_all, PRELOADED)
    settings = app[SETTINGS]
    service = await asyncio.to_thread(
        functools.partial(build_token_service, settings.tokens, app[TOKENIZERS], encodings,
                          cache_dir=settings.tokens.cache_path(settings.database.data_dir),
                          load=load_encoding, lazy=ENCODINGS))
    app[TOKENS] = service
    yield
    await asyncio.to_thread(service.close)  # waits for a GPU batch in flight


async def _database(app: web.Application) -> AsyncIterator[None]:
    """The pool, and what reads through it; PostgreSQL being down does not stop the start:
    `DatabaseStart` migrates and fills the pool whenever it answers."""
    settings = app[SETTINGS].database
    auth = app[SETTINGS].auth
    dsn, embedded = await db.resolve_dsn(settings)
    try:
        app[POOL] = await db.create_pool(dsn, settings)  # connects nothing yet
        app[DSN] = dsn
        start = db.DatabaseStart(app[POOL], dsn, settings)
        await start.start()
        app[DATABASE_START] = start
        app[KEYSTORE] = KeyStore(app[POOL], dsn, ttl_s=auth.key_cache_ttl_s,
                                 connect_timeout_s=settings.connect_timeout_s,
                                 refresh_timeout_s=auth.refresh_timeout_s,
                                 stale_serve_s=auth.stale_serve_s)
        await app[CREDENTIALS].start(app[POOL], dsn)
        yield
        await app[CREDENTIALS].close()
        await start.close()
        # Bounded, even partitioned, and within what the drain has left.
        await db.close_pool(app[POOL], min(settings.query_timeout_s, app[SHUTDOWN].remaining()))
    finally:
        if embedded is not None:
            embedded.stop()


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    upstreams = {name: Upstream(create_adapter(name, provider), provider,
                                configured_credentials(provider))
                 for name, provider in settings.providers.items()}
    for upstream in upstreams.values():
        await upstream.start()
    app[UPSTREAMS] = upstreams
    yield
    for upstream in upstreams.values():
        await upstream.close()


async def _keystore(app: web.Application) -> AsyncIterator[None]:
    await app[KEYSTORE].start()
    yield
    await app[KEYSTORE].close()


async def _ledger(app: web.Application) -> AsyncIterator[None]:
    """The usage ledger; tracked spend, budget alerts and usage events are made in each
    batch's transaction, and batches spill to disk while PostgreSQL is unreachable."""
    settings = app[SETTINGS]
    tz = ZoneInfo(settings.budgets.timezone)
    alerts = AlertHook(settings.webhooks, tz)
    app[ALERTS] = alerts
    ledger = Ledger(app[POOL], settings.ledger, hooks=[TrackedSpendHook(tz), alerts],
                    spill_dir=settings.ledger.spill_path(settings.database.data_dir))
    await ledger.start()
    app[LEDGER] = ledger
    yield
    await ledger.close(deadline_s=app[SHUTDOWN].remaining())  # then spills what is left


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    """The outbox's delivery worker (replicas share the work; each row goes out once)."""
    settings = app[SETTINGS].webhooks
    worker = WebhookWorker(app[POOL], settings, app[CREDENTIALS].box,
                           db_timeout_s=app[SETTINGS].database.query_timeout_s)
    if settings.enabled:
        await worker.start()
        app[ALERTS].on_queued = worker.wake  # events committed with usage go out at once
    app[WEBHOOKS] = worker
    yield
    await worker.close(deadline_s=app[SHUTDOWN].remaining())


async def _sync(app: web.Application) -> AsyncIterator[None]:
    """Imports of the providers' usage and cost reports: in the background every
    `sync.interval_s` (one replica at a time), and on demand (`POST /api/sync`)."""
    settings = app[SETTINGS]
    runner = SyncRunner(app[POOL], app[DSN], settings.sync, app[PRICES], app[CREDENTIALS].box,
                        connect_timeout_s=settings.database.connect_timeout_s,
                        query_timeout_s=settings.database.query_timeout_s)
    if settings.webhooks.enabled:
        runner.on_queued = app[WEBHOOKS].wake  # mismatch events go out at once
    # Without a configured admin key or GATEWAY_SECRET_KEY (a project's stored admin key needs
    # it) there is nothing to sync: no background task then.
    if settings.sync.enabled and (integrations.configured(settings.sync)
                                  or app[CREDENTIALS].box is not None):
        runner.start()
    app[SYNC] = runner
    yield
    await runner.close()


async def _limits(app: web.Application) -> AsyncIterator[None]:
    """Rate limiter, idempotency claims and budget leases; leases go back on shutdown."""
    settings = app[SETTINGS]
    app[LIMITER] = create_limiter(settings.ratelimit, app[POOL])
    app[CLAIMS] = create_claims(settings.ratelimit, app[POOL])
    book = BudgetBook(app[POOL], ZoneInfo(settings.budgets.timezone), dsn=app[DSN],
                      connect_timeout_s=settings.database.connect_timeout_s)
    await book.start()
    app[BUDGETS] = book
    yield
    await book.close(deadline_s=app[SHUTDOWN].remaining())
    await app[CLAIMS].close()
    await app[LIMITER].close()


async def _pipeline(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    limits = Limits(max_body_bytes=settings.server.max_body_bytes,
                    max_messages=settings.validation.max_messages,
                    max_content_chars=settings.validation.max_content_chars)
    guards = (
        IdempotencyGuard(app[CLAIMS], settings.ratelimit.idempotency_retention_s),
        RateLimitGuard(app[LIMITER], app[PLANS], app[TOKENS]),
        BudgetGuard(app[BUDGETS], app[PRICES], app[TOKENS], settings.budgets),
    )
    router = Router(app[PRICES], settings.providers, settings.routing)
    app[PIPELINE] = ProxyPipeline(keys=app[KEYSTORE], limits=limits, upstreams=app[UPSTREAMS],
                                  prices=app[PRICES], ledger=app[LEDGER], tokens=app[TOKENS],
                                  router=router, guards=guards, credentials=app[CREDENTIALS],
                                  log_requests=settings.logging.requests,
                                  metrics=app[METRICS], catalogue=app[CATALOGUE],
                                  observed=app[OBSERVED], routing=settings.routing)
    app[METRICS].watch_ledger(app[LEDGER])
    app[METRICS].watch_breakers(app[PIPELINE].breakers)
    app[METRICS].watch_tokens(app[TOKENS].usage)
    app[READINESS] = Readiness(app[POOL], app[LEDGER], app[KEYSTORE], app[TOKENS],
                               database_start=app[DATABASE_START])
    seeding = (asyncio.create_task(_seed_observations(app)) if settings.routing.observe_seed
               else None)
    yield
    app[READINESS].draining = True
    if seeding is not None:
        seeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await seeding


async def _seed_observations(app: web.Application) -> None:
    """The smart router's window, filled from the ledger's recent rows once the database
    answers (it may come up after the gateway); a failure only leaves the window empty."""
    settings = app[SETTINGS].database
    await app[DATABASE_START].ready.wait()
    try:
        rows = await app[OBSERVED].seed(app[POOL], timeout_s=settings.query_timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("observations_not_seeded", error=f"{type(exc).__name__}: {exc}")
        return
    log.info("observations_seeded", rows=rows)
