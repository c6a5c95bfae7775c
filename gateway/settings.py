"""Settings: `config/gateway.toml` plus environment overrides, parsed once into frozen values.

Every value is validated at start-up; a wrong one raises `SettingsError` naming the key and
what is allowed. Nothing reads the environment after `load_settings` returns.

Environment overrides:
- `GATEWAY_<SECTION>_<KEY>` for any key, e.g. `GATEWAY_SERVER_PORT=9000`;
- the contract's short names: `GATEWAY_DATABASE_URL`, `GATEWAY_DATA_DIR`, `GATEWAY_ADMIN_TOKEN`;
- `<PROVIDER>_API_KEY` and `<PROVIDER>_BASE_URL` for each provider (`OPENAI_API_KEY`, ...);
- `OPENAI_ADMIN_KEY` and `ANTHROPIC_ADMIN_KEY`: the organisation admin keys the sync reads
  the providers' usage and cost reports with.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, get_args, get_origin, get_type_hints
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_CONFIG_PATH = Path("config/gateway.toml")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROVIDER_KINDS = ("openai", "azure", "anthropic", "gemini", "mistral", "cohere",
                  "openai_compatible")
# The smart router's vocabulary (the catalogue, the endpoint and [routing.routes] share it).
TASK_CLASSES = ("code_generation", "chat", "summarization", "extraction", "reasoning",
                "translation", "classification")
QUALITY_TIERS = ("low", "medium", "high")
STRATEGIES = ("cheapest", "fastest", "balanced")
CAPABILITIES = ("image_input", "tools", "json_mode")
BALANCING = ("weighted", "least_outstanding", "latency")


class SettingsError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def _opt(default: Any, *, choices: tuple[Any, ...] = (), minimum: float | None = None,
         maximum: float | None = None, secret: bool = False) -> Any:
    meta = {"choices": choices, "minimum": minimum, "maximum": maximum}
    if isinstance(default, MappingProxyType):  # a table: each instance gets its own (empty)
        return field(default_factory=lambda: MappingProxyType({}), metadata=meta)
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True)
class ServerSettings:
    host: str = _opt("127.0.0.1")
    port: int = _opt(8080, minimum=0, maximum=65535)
    max_body_bytes: int = _opt(1_048_576, minimum=1024)
    shutdown_timeout_s: float = _opt(20.0, minimum=0)
    drain_delay_s: float = _opt(0.0, minimum=0)
    public_url: str = _opt("")
    header_timeout_s: float = _opt(30.0, minimum=0.01)  # request line + headers, then closed
    body_timeout_s: float = _opt(30.0, minimum=0.01)  # whole body after the headers, then 408
    max_connections: int = _opt(10_000, minimum=1)  # open client connections, this process
    workers: int = _opt(0, minimum=0)  # `serve` processes on the port; 0: one per core (auto)


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = _opt("", secret=True)
    data_dir: Path = _opt(Path(".data"))
    pool_min_size: int = _opt(2, minimum=1)
    pool_max_size: int = _opt(10, minimum=1)
    migrate_on_start: bool = _opt(True)
    migrations_dir: Path = _opt(PROJECT_ROOT / "migrations")
    connect_timeout_s: float = _opt(5.0, minimum=0.1)
    # The longest an admin or analytics call waits on PostgreSQL (acquire, queries, release)
    # before answering 503 `database_unavailable`; and a bound on closing the pool.
    query_timeout_s: float = _opt(5.0, minimum=0.01)
    migrate_timeout_s: float = _opt(300.0, minimum=0.1)  # one start attempt's migrations


@dataclass(frozen=True)
class AuthSettings:
    admin_token: str = _opt("", secret=True)
    key_cache_ttl_s: float = _opt(300.0, minimum=0)
    # Keys and credentials: a read (pool acquire included) given up after this long, and how
    # long past its freshness a cached one keeps answering while the database cannot be read.
    refresh_timeout_s: float = _opt(0.5, minimum=0.01)
    stale_serve_s: float = _opt(300.0, minimum=0)


@dataclass(frozen=True)
class ValidationSettings:
    max_messages: int = _opt(100, minimum=1)
    max_content_chars: int = _opt(32_000, minimum=1)


@dataclass(frozen=True)
class CredentialSettings:
    """One credential (or Azure deployment) of a provider, chosen by weight among its peers."""

    name: str = _opt("default")
    api_key: str = _opt("", secret=True)
    api_key_env: str = _opt("")  # read the key from this environment variable instead
    base_url: str = _opt("")  # empty: the provider's base_url
    weight: int = _opt(1, minimum=0)
    api_version: str = _opt("")  # Azure; empty: the provider's


@dataclass(frozen=True)
class ProviderSettings:
    kind: str = _opt("openai", choices=PROVIDER_KINDS)
    base_url: str = _opt("https://api.openai.com/v1")
    api_key: str = _opt("", secret=True)
    api_version: str = _opt("")  # Azure OpenAI's api-version query parameter
    connect_timeout_s: float = _opt(5.0, minimum=0.01)
    first_byte_timeout_s: float = _opt(60.0, minimum=0.01)
    total_timeout_s: float = _opt(600.0, minimum=0.01)
    max_connections: int = _opt(256, minimum=1)
    max_retries: int = _opt(2, minimum=0, maximum=10)  # per credential tried, before falling back
    retry_backoff_s: float = _opt(0.25, minimum=0)  # first pause; doubles, with full jitter
    retry_backoff_max_s: float = _opt(8.0, minimum=0)
    retry_after_max_s: float = _opt(20.0, minimum=0)  # a longer Retry-After: fall back instead
    breaker_failures: int = _opt(5, minimum=1)  # consecutive failures that open the breaker
    breaker_cooldown_s: float = _opt(30.0, minimum=0.01)  # open this long, then one probe
    models: tuple[str, ...] = _opt(())  # model globs this provider serves (routing)
    deployments: Mapping[str, str] = _opt(MappingProxyType({}))  # Azure: model -> deployment
    credentials: tuple[CredentialSettings, ...] = _opt(())  # empty: api_key at base_url


@dataclass(frozen=True)
class PricingSettings:
    file: Path = _opt(PROJECT_ROOT / "config" / "prices.toml")
    fallback: str = _opt("provider_max", choices=("provider_max", "fixed"))
    fallback_input: Decimal = _opt(Decimal("15"), minimum=0)
    fallback_cached_input: Decimal = _opt(Decimal("15"), minimum=0)
    fallback_output: Decimal = _opt(Decimal("60"), minimum=0)


@dataclass(frozen=True)
class TokensSettings:
    models_file: Path = _opt(PROJECT_ROOT / "config" / "tokens.toml")
    inline_max_chars: int = _opt(8192, minimum=0)
    threads: int = _opt(0, minimum=0)  # 0: one per CPU, at most 8
    backend: str = _opt("auto", choices=("auto", "cpu", "gpu"))  # gpu: CUDA via cuda-python
    gpu_device: int = _opt(0, minimum=0)
    gpu_min_batch_bytes: int = _opt(1_048_576, minimum=0)  # smaller batches stay on the CPU
    gpu_batch_window_ms: float = _opt(2.0, minimum=0)  # how long concurrent callers are gathered
    # `gateway tokens count` with backend "auto": inputs smaller than this stay on the CPU,
    # where they finish before the GPU counter would have started
    bulk_gpu_min_bytes: int = _opt(67_108_864, minimum=0)
    cache_dir: Path = _opt(Path(""))  # empty: <database.data_dir>/tokens (cubin, tables)

    def cache_path(self, data_dir: Path) -> Path:
        """Where the GPU counter caches its compiled kernel and vocabulary tables."""
        return data_dir / "tokens" if self.cache_dir == Path("") else self.cache_dir


@dataclass(frozen=True)
class RateLimitSettings:
    backend: str = _opt("memory", choices=("memory", "redis", "upstash", "postgres"))
    failure_policy: str = _opt("fail_closed", choices=("fail_closed", "fail_open"))
    redis_url: str = _opt("redis://127.0.0.1:6379/0", secret=True)
    upstash_url: str = _opt("")
    upstash_token: str = _opt("", secret=True)
    timeout_s: float = _opt(0.5, minimum=0.001)  # one backend call, on the hot path
    idempotency_retention_s: float = _opt(86_400.0, minimum=1)
    # With the memory backend each `serve` worker keeps its own limits and claims: several
    # workers are refused unless this says that is what is wanted.
    per_process_limits: bool = _opt(False)
    plans_file: Path = _opt(PROJECT_ROOT / "config" / "plans.toml")


@dataclass(frozen=True)
class BudgetSettings:
    timezone: str = _opt("UTC")  # budget months follow this zone's calendar
    policy: str = _opt("reject", choices=("reject", "clamp"))
    clamp_min_output_tokens: int = _opt(16, minimum=1)
    default_max_output_tokens: int = _opt(4096, minimum=1)  # when neither request nor table says


@dataclass(frozen=True)
class LedgerSettings:
    batch_size: int = _opt(500, minimum=1)
    flush_interval_s: float = _opt(0.05, minimum=0.001)
    max_pending: int = _opt(100_000, minimum=1)  # queued rows; beyond: 503 ledger_backlog
    flush_timeout_s: float = _opt(10.0, minimum=0.01)  # a slower batch write is an outage
    spill_dir: Path = _opt(Path(""))  # empty: <database.data_dir>/spill
    spill_max_bytes: int = _opt(268_435_456, minimum=0)  # 0: never spill; rows wait in memory
    journal: bool = _opt(True)  # each queued row written to the spill directory at once

    def spill_path(self, data_dir: Path) -> Path:
        """Where spill files go: `spill_dir`, or `spill` under the database's data_dir."""
        return data_dir / "spill" if self.spill_dir == Path("") else self.spill_dir


@dataclass(frozen=True)
class WebhookSettings:
    """The `[webhooks]` section: delivery, retries, retention, and the anomaly rule."""

    enabled: bool = _opt(True)  # run the delivery worker in this process
    poll_interval_s: float = _opt(1.0, minimum=0.001)
    batch_size: int = _opt(50, minimum=1, maximum=1000)  # rows claimed per poll
    concurrency: int = _opt(8, minimum=1)  # deliveries in flight per process
    max_attempts: int = _opt(10, minimum=1, maximum=100)
    backoff_s: float = _opt(5.0, minimum=0)  # pause before the 2nd attempt; doubles, jittered
    backoff_max_s: float = _opt(3600.0, minimum=0)
    connect_timeout_s: float = _opt(5.0, minimum=0.01)
    timeout_s: float = _opt(10.0, minimum=0.01)  # one whole delivery
    retention_hours: float = _opt(168.0, minimum=0)  # delivered or failed rows kept this long
    anomaly_multiplier: Decimal = _opt(Decimal(3), minimum=1)
    anomaly_sigmas: Decimal = _opt(Decimal(4), minimum=0)
    anomaly_min_spend_usd: Decimal = _opt(Decimal(1), minimum=0)
    anomaly_baseline_hours: int = _opt(168, minimum=1, maximum=24 * 90)
    anomaly_min_history_hours: int = _opt(24, minimum=1)


@dataclass(frozen=True)
class LoggingSettings:
    level: str = _opt("info", choices=("debug", "info", "warning", "error"))
    format: str = _opt("json", choices=("json", "console"))
    requests: bool = _opt(False)


@dataclass(frozen=True)
class SmartRouteSettings:
    """One `[routing.routes.NAME]`: a model name clients send, served by the smart router's
    pick under these constraints."""

    strategy: str = _opt("balanced", choices=STRATEGIES)
    task: str = _opt("chat", choices=TASK_CLASSES)
    quality: str = _opt("medium", choices=QUALITY_TIERS)  # the least tier for `task`
    max_cost_usd: Decimal = _opt(Decimal(0), minimum=0)  # per request, estimated; 0: no limit
    max_latency_ms: float = _opt(0.0, minimum=0)  # p95 observed (else the catalogue); 0: none
    requires: tuple[str, ...] = _opt(())  # of CAPABILITIES
    models: tuple[str, ...] = _opt(())  # only these catalogue models (empty: any)


@dataclass(frozen=True)
class RoutingSettings:
    default_provider: str = _opt("openai")  # models no rule or price places
    aliases: Mapping[str, str] = _opt(MappingProxyType({}))  # name -> model or provider/model
    fallbacks: Mapping[str, tuple[str, ...]] = _opt(MappingProxyType({}))  # model -> chain
    # The smart router (router:cheapest|fastest|balanced, [routing.routes], /api/smart-router)
    catalogue_file: Path = _opt(PROJECT_ROOT / "config" / "models.toml")
    routes: Mapping[str, SmartRouteSettings] = _opt(MappingProxyType({}))
    default_task: str = _opt("chat", choices=TASK_CLASSES)
    default_quality: str = _opt("medium", choices=QUALITY_TIERS)
    default_input_tokens: int = _opt(1000, minimum=0)  # cost estimate without a prompt
    default_output_tokens: int = _opt(500, minimum=0)  # ... and without max_tokens
    balanced_cost_weight: float = _opt(0.5, minimum=0, maximum=1)  # the rest is latency
    router_fallbacks: int = _opt(2, minimum=0, maximum=10)  # next-ranked models, after fallbacks
    observe_window_s: float = _opt(300.0, minimum=1)  # sliding window of observed behaviour
    observe_seed: bool = _opt(True)  # fill the window from the ledger's rows at start
    min_samples: int = _opt(5, minimum=1)  # fewer observed calls: the catalogue's latency
    max_error_rate: float = _opt(0.5, minimum=0, maximum=1)  # above it (observed): skipped
    # Load balancing across one provider's credentials/deployments, per model
    default_balancing: str = _opt("weighted", choices=BALANCING)
    balancing: Mapping[str, str] = _opt(MappingProxyType({}))  # model -> one of BALANCING
    latency_decay_s: float = _opt(10.0, minimum=0.001)  # the latency EWMA's time constant


@dataclass(frozen=True)
class SyncSettings:
    """The `[sync]` section: importing the providers' own usage and cost reports, and the
    tolerances reconciliation judges them by (gateway/sync/)."""

    enabled: bool = _opt(True)  # run the background sync in this process
    interval_s: float = _opt(3600.0, minimum=0.01)  # between background syncs
    days: int = _opt(3, minimum=1, maximum=400)  # each sync imports the last N UTC days
    chunk_days: int = _opt(7, minimum=1, maximum=31)  # days fetched and stored per step
    timeout_s: float = _opt(60.0, minimum=0.01)  # one admin API call
    settle_hours: float = _opt(6.0, minimum=0)  # a day is judged this long after it ends
    tolerance_usd: Decimal = _opt(Decimal("0.01"), minimum=0)
    tolerance_percent: Decimal = _opt(Decimal("1"), minimum=0)
    openai_admin_key: str = _opt("", secret=True)  # OPENAI_ADMIN_KEY (sk-admin-...)
    anthropic_admin_key: str = _opt("", secret=True)  # ANTHROPIC_ADMIN_KEY (sk-ant-admin...)
    openai_base_url: str = _opt("https://api.openai.com/v1")
    anthropic_base_url: str = _opt("https://api.anthropic.com")
    # provider -> {gateway project name -> the provider's project id}
    project_map: Mapping[str, Mapping[str, str]] = _opt(MappingProxyType({}))


@dataclass(frozen=True)
class SecretsSettings:
    key: str = _opt("", secret=True)  # GATEWAY_SECRET_KEY: encrypts per-project credentials


# The built-in providers: kind, official base URL and the environment names of their key
# and base URL, as each provider's own SDK reads them.
BUILTIN_PROVIDERS: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]] = {
    "openai": ("openai", "https://api.openai.com/v1", ("OPENAI_API_KEY",), ("OPENAI_BASE_URL",)),
    "azure": ("azure", "", ("AZURE_OPENAI_API_KEY",),
              ("AZURE_OPENAI_ENDPOINT", "AZURE_BASE_URL")),
    "anthropic": ("anthropic", "https://api.anthropic.com", ("ANTHROPIC_API_KEY",),
                  ("ANTHROPIC_BASE_URL",)),
    "gemini": ("gemini", "https://generativelanguage.googleapis.com",
               ("GEMINI_API_KEY", "GOOGLE_API_KEY"), ("GEMINI_BASE_URL",)),
    "mistral": ("mistral", "https://api.mistral.ai/v1", ("MISTRAL_API_KEY",),
                ("MISTRAL_BASE_URL",)),
    "cohere": ("cohere", "https://api.cohere.com", ("COHERE_API_KEY", "CO_API_KEY"),
               ("COHERE_BASE_URL",)),
}
KNOWN_PROVIDERS = tuple(BUILTIN_PROVIDERS)


@dataclass(frozen=True)
class DashboardSettings:
    session_ttl_s: float = _opt(8 * 3600.0, minimum=60)  # a sign-in lasts this long
    # Secure cookies (sent over HTTPS only); also on whenever server.public_url is https.
    secure_cookies: bool = _opt(False)
    refresh_s: float = _opt(2.0, minimum=0.5)  # how often open pages poll for new figures


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    pricing: PricingSettings = field(default_factory=PricingSettings)
    tokens: TokensSettings = field(default_factory=TokensSettings)
    ratelimit: RateLimitSettings = field(default_factory=RateLimitSettings)
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    secrets: SecretsSettings = field(default_factory=SecretsSettings)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)

    def provider(self, name: str) -> ProviderSettings:
        return self.providers[name]


_SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "database": DatabaseSettings,
    "auth": AuthSettings,
    "validation": ValidationSettings,
    "pricing": PricingSettings,
    "tokens": TokensSettings,
    "ratelimit": RateLimitSettings,
    "budgets": BudgetSettings,
    "ledger": LedgerSettings,
    "logging": LoggingSettings,
    "webhooks": WebhookSettings,
    "routing": RoutingSettings,
    "secrets": SecretsSettings,
    "dashboard": DashboardSettings,
    "sync": SyncSettings,
}
_ENV_ALIASES = {
    "GATEWAY_DATABASE_URL": ("database", "url"),
    "GATEWAY_DATA_DIR": ("database", "data_dir"),
    "GATEWAY_ADMIN_TOKEN": ("auth", "admin_token"),
    "GATEWAY_RATELIMIT_BACKEND": ("ratelimit", "backend"),
    "GATEWAY_REDIS_URL": ("ratelimit", "redis_url"),
    "UPSTASH_REDIS_REST_URL": ("ratelimit", "upstash_url"),
    "UPSTASH_REDIS_REST_TOKEN": ("ratelimit", "upstash_token"),
    "GATEWAY_SECRET_KEY": ("secrets", "key"),
    "AZURE_OPENAI_API_VERSION": ("providers.azure", "api_version"),
    "OPENAI_ADMIN_KEY": ("sync", "openai_admin_key"),
    "ANTHROPIC_ADMIN_KEY": ("sync", "anthropic_admin_key"),
}

T = TypeVar("T")


def load_settings(config_path: Path | str | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (if any), apply environment overrides, validate, freeze."""
    env = os.environ if environ is None else environ
    path = Path(config_path or env.get("GATEWAY_CONFIG") or DEFAULT_CONFIG_PATH)
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
    elif config_path is not None or "GATEWAY_CONFIG" in env:
        raise SettingsError(f"config file {path} does not exist")
    return settings_from_mapping(raw, env)


def settings_from_mapping(raw: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    allowed = {*_SECTIONS, "providers"}
    for key, value in raw.items():
        if key not in allowed:
            raise SettingsError(f"unknown section [{key}]; allowed: {', '.join(sorted(allowed))}")
        if not isinstance(value, Mapping):
            raise SettingsError(f"[{key}] must be a table")
    raw = {k: dict(v) for k, v in raw.items()}
    routes = _smart_routes(raw.get("routing", {}).pop("routes", {}))
    raw["providers"] = {k: (dict(v) if isinstance(v, Mapping) else v)
                        for k, v in raw.get("providers", {}).items()}
    _apply_env(raw, env)
    sections: dict[str, Any] = {
        name: _build(cls, name, raw.get(name, {})) for name, cls in _SECTIONS.items()}
    providers = {name: _provider(name, raw["providers"].get(name, {}), env)
                 for name in sorted({*KNOWN_PROVIDERS, *raw["providers"]})}
    sections["routing"] = dataclasses.replace(sections["routing"], routes=routes)
    settings = Settings(**sections, providers=MappingProxyType(providers))
    routing = settings.routing
    for model, strategy in routing.balancing.items():
        if strategy not in BALANCING:
            raise SettingsError(f"routing.balancing.{model}: {strategy!r} is not allowed; "
                                f"allowed: {', '.join(BALANCING)}")
    for name in routes:
        if name in routing.aliases:
            raise SettingsError(f"routing.routes.{name}: the name is also a routing alias")
    if routing.default_provider not in providers:
        raise SettingsError(f"routing.default_provider: {routing.default_provider!r} is not a "
                            f"provider; configured: {', '.join(sorted(providers))}")
    try:
        ZoneInfo(settings.budgets.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"budgets.timezone: unknown time zone {settings.budgets.timezone!r}; "
                            "use an IANA name such as UTC or Europe/Paris") from None
    if settings.database.pool_min_size > settings.database.pool_max_size:
        raise SettingsError("database.pool_min_size must not exceed database.pool_max_size")
    return settings


def _smart_routes(values: Any) -> MappingProxyType[str, SmartRouteSettings]:
    """`[routing.routes.NAME]` tables, each checked like a section."""
    if not isinstance(values, Mapping):
        raise SettingsError("[routing.routes] must be a table of routes")
    routes = {}
    for name, table in values.items():
        where = f"routing.routes.{name}"
        if not name or name.startswith("router:") or "/" in name:
            raise SettingsError(f"{where}: a route name must not be empty, start with "
                                "'router:' or hold '/'")
        route = _build(SmartRouteSettings, where, table)
        for need in route.requires:
            if need not in CAPABILITIES:
                raise SettingsError(f"{where}.requires: {need!r} is not allowed; allowed: "
                                    f"{', '.join(CAPABILITIES)}")
        routes[name] = route
    return MappingProxyType(routes)


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    providers = raw.setdefault("providers", {})
    for name, value in env.items():
        target = _ENV_ALIASES.get(name)
        if target is None and name.startswith("GATEWAY_"):
            target = _split_env_name(name[len("GATEWAY_"):])
        if target is None:
            continue
        if target[0].startswith("providers."):
            if value:
                _provider_table(providers, target[0].partition(".")[2])[target[1]] = value
        else:
            raw.setdefault(target[0], {})[target[1]] = value
    for provider in {*KNOWN_PROVIDERS, *providers}:
        key_names, url_names = _env_names(provider)
        for names, key in ((key_names, "api_key"), (url_names, "base_url")):
            override = next((env[n] for n in names if env.get(n)), None)
            if override:
                _provider_table(providers, provider)[key] = override


def _provider_table(providers: dict[str, Any], name: str) -> dict[str, Any]:
    table = providers.setdefault(name, {})
    if not isinstance(table, dict):
        raise SettingsError(f"[providers.{name}] must be a table")
    return table


def _env_names(provider: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The environment names of a provider's key and base URL (built-in ones: their SDK's)."""
    if provider in BUILTIN_PROVIDERS:
        return BUILTIN_PROVIDERS[provider][2], BUILTIN_PROVIDERS[provider][3]
    stem = provider.upper().replace("-", "_")
    return (f"{stem}_API_KEY",), (f"{stem}_BASE_URL",)


def _provider(name: str, values: Any, env: Mapping[str, str]) -> ProviderSettings:
    """One [providers.NAME] table; built-in names get their kind and official URL."""
    section = f"providers.{name}"
    if not isinstance(values, Mapping):
        raise SettingsError(f"[{section}] must be a table")
    values = dict(values)
    builtin = BUILTIN_PROVIDERS.get(name)
    if builtin is not None:
        values.setdefault("kind", builtin[0])
        values.setdefault("base_url", builtin[1])
        if values["kind"] != builtin[0]:
            raise SettingsError(f"{section}.kind: the built-in provider {name!r} is "
                                f"{builtin[0]!r}; name another provider for another kind")
    elif "kind" in values and not values.get("base_url") and not values.get("credentials"):
        raise SettingsError(f"{section}.base_url is required")
    elif "kind" not in values:
        raise SettingsError(
            f"[{section}] is not a built-in provider ({', '.join(KNOWN_PROVIDERS)}); give it "
            f"kind = \"openai_compatible\" (or another of {', '.join(PROVIDER_KINDS)}) and a "
            "base_url")
    if not _is_name(name):
        raise SettingsError(f"[{section}]: provider names are lower-case letters, digits, "
                            "'-' and '_'")
    raw_credentials = values.pop("credentials", [])
    provider = _build(ProviderSettings, section, values)
    if not isinstance(raw_credentials, list):
        raise SettingsError(f"{section}.credentials must be an array of tables")
    credentials: list[CredentialSettings] = []
    for i, entry in enumerate(raw_credentials):
        where = f"{section}.credentials[{i}]"
        credential = _build(CredentialSettings, where, entry)
        if credential.api_key_env:
            credential = dataclasses.replace(
                credential, api_key=env.get(credential.api_key_env, ""))
        if credential.name in {c.name for c in credentials}:
            raise SettingsError(f"{where}.name: {credential.name!r} is used twice")
        credentials.append(credential)
    if credentials and not any(c.weight for c in credentials):
        raise SettingsError(f"{section}.credentials: at least one weight must be above 0")
    if provider.kind != "azure" and not provider.base_url and not credentials:
        raise SettingsError(f"{section}.base_url is required")
    return dataclasses.replace(provider, credentials=tuple(credentials))


def _is_name(name: str) -> bool:
    return bool(name) and all(c.islower() or c.isdigit() or c in "-_" for c in name)


def _split_env_name(rest: str) -> tuple[str, str] | None:
    lowered = rest.lower()
    for section, cls in _SECTIONS.items():
        if lowered.startswith(section + "_"):
            key = lowered[len(section) + 1:]
            if key in {f.name for f in dataclasses.fields(cls)}:
                return section, key
    return None


def _build(cls: type[T], section: str, values: Any) -> T:
    if not isinstance(values, Mapping):
        raise SettingsError(f"[{section}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in values:
        if key not in fields:
            raise SettingsError(
                f"unknown setting {section}.{key}; allowed: {', '.join(sorted(fields))}")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        f = fields[name]
        kwargs[name] = _check(f"{section}.{name}", _coerce(f"{section}.{name}", hints[name], value),
                              f.metadata)
    return cls(**kwargs)


def _coerce(key: str, kind: Any, value: Any) -> Any:
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, Decimal) and value != int(value)):
                raise ValueError
            return int(value)
        if kind is float:
            number = float(value)
            if isinstance(value, bool) or not math.isfinite(number):
                raise ValueError
            return number
        if kind is Decimal:
            amount = Decimal(str(value))
            if not amount.is_finite():
                raise ValueError
            return amount
        if kind is Path:
            return Path(str(value))
        origin = get_origin(kind)
        if origin is tuple:  # tuple[str, ...]: an array, or a comma-separated string
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise ValueError
            return tuple(i.strip() for i in items if i.strip())
        if origin is Mapping:  # a table, or a JSON object from the environment
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, Mapping):
                raise ValueError
            item_kind = get_args(kind)[1]
            return MappingProxyType({str(k): _coerce(f"{key}.{k}", item_kind, v)
                                     for k, v in value.items()})
        if isinstance(value, str):
            return value
        raise ValueError
    except SettingsError:
        raise
    except (ValueError, TypeError, InvalidOperation, OverflowError):
        name = getattr(kind, "__name__", str(kind))
        if kind is bool:
            name = "boolean (true/false)"
        raise SettingsError(f"{key}: expected {name}, got {value!r}") from None


def _check(key: str, value: Any, meta: Mapping[str, Any]) -> Any:
    choices = meta.get("choices") or ()
    if choices and value not in choices:
        raise SettingsError(f"{key}: {value!r} is not allowed; allowed: {', '.join(choices)}")
    minimum, maximum = meta.get("minimum"), meta.get("maximum")
    if minimum is not None and value < minimum:
        raise SettingsError(f"{key}: {value!r} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{key}: {value!r} is above the maximum {maximum}")
    return value
