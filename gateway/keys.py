"""Every typed application and request key, in one place (no module globals elsewhere)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from gateway.budgets import BudgetBook
from gateway.catalogue import Catalogue
from gateway.db import DatabaseStart
from gateway.keystore import KeyStore
from gateway.ledger import Ledger
from gateway.metrics import Metrics
from gateway.observed import Observations
from gateway.plans import Plans
from gateway.pricing import PriceTable
from gateway.settings import Settings
from gateway.shutdown import Shutdown
from gateway.tokens.models import ModelTokenizers

if TYPE_CHECKING:
    from gateway.alerts import AlertHook
    from gateway.credentials import ProjectCredentials
    from gateway.health import Readiness
    from gateway.http.dashboard.session import Signer
    from gateway.idempotency import ClaimStore
    from gateway.pipeline.runner import ProxyPipeline
    from gateway.providers.base import Upstream
    from gateway.ratelimit import LocalLimiter
    from gateway.sync.scheduler import SyncRunner
    from gateway.tokens.service import TokenService
    from gateway.webhooks import WebhookWorker

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
DSN = web.AppKey("dsn", str)  # the database the pool connects to (LISTEN connections too)
DATABASE_START = web.AppKey("database_start", DatabaseStart)  # `ready` once migrated
KEYSTORE = web.AppKey("keystore", KeyStore)
LEDGER = web.AppKey("ledger", Ledger)
PRICES = web.AppKey("prices", PriceTable)
UPSTREAMS: web.AppKey[Mapping[str, Upstream]] = web.AppKey("upstreams")
PIPELINE: web.AppKey[ProxyPipeline] = web.AppKey("pipeline")
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
SHUTDOWN = web.AppKey("shutdown", Shutdown)  # the drain's one deadline, from SIGTERM on
TOKENS: web.AppKey[TokenService] = web.AppKey("tokens")
TOKENIZERS = web.AppKey("tokenizers", ModelTokenizers)
PLANS = web.AppKey("plans", Plans)
BUDGETS = web.AppKey("budgets", BudgetBook)
LIMITER: web.AppKey[LocalLimiter] = web.AppKey("limiter")
CLAIMS: web.AppKey[ClaimStore] = web.AppKey("claims")
CREDENTIALS: web.AppKey[ProjectCredentials] = web.AppKey("credentials")
METRICS = web.AppKey("metrics", Metrics)
WEBHOOKS: web.AppKey[WebhookWorker] = web.AppKey("webhooks")
ALERTS: web.AppKey[AlertHook] = web.AppKey("alerts")
CATALOGUE = web.AppKey("catalogue", Catalogue)  # config/models.toml, for the smart router
OBSERVED = web.AppKey("observed", Observations)  # latency and errors by provider and model
DASHBOARD: web.AppKey[Signer] = web.AppKey("dashboard")  # signs dashboard sessions
SYNC: web.AppKey[SyncRunner] = web.AppKey("sync")  # provider usage and cost imports

REQUEST_ID = web.RequestKey("request_id", uuid.UUID)
REQUEST_ID_TEXT = web.RequestKey("request_id_text", str)  # str(REQUEST_ID), made once
# The rate-limit headers of an admitted API call (`http/quota.py`), for its answer.
RATE_HEADERS: web.RequestKey[dict[str, str] | None] = web.RequestKey("rate_headers")
