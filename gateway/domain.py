"""Plain dataclasses the pipeline stages pass to each other (never the aiohttp request)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

PLANS = ("free", "pro", "team", "enterprise")
# Other names clients use for a provider: the seeds call Gemini `google`.
PROVIDER_ALIASES = {"google": "gemini"}


def canonical_provider(name: str) -> str:
    """The gateway's name for a provider (`google` is `gemini` everywhere)."""
    return PROVIDER_ALIASES.get(name, name)


@dataclass(frozen=True, slots=True)
class Project:
    id: int
    name: str
    team: str | None
    plan: str
    monthly_budget_usd: Decimal | None
    allowed_providers: frozenset[str]
    allowed_models: frozenset[str]
    enabled: bool
    metadata: dict[str, Any]
    team_id: int | None = None
    team_budget_usd: Decimal | None = None
    limit_overrides: dict[str, int] = field(default_factory=dict)  # plan limits it overrides


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key that authenticated and the project it belongs to."""

    key_id: int
    key_prefix: str
    project: Project


@dataclass(slots=True)
class ChatRequest:
    """A validated chat request, in the OpenAI wire shape the upstream expects."""

    entry: str  # the entry shape's name (`entries.base.Entry.name`): "openai", "anthropic"...
    provider: str
    model: str
    body: dict[str, Any]  # always OpenAI-shaped: the pivot every adapter translates from
    stream: bool
    include_usage: bool  # the client itself asked for the usage chunk
    max_output_tokens: int | None
    metadata: dict[str, Any] = field(default_factory=dict)
    # The wire shape the client speaks (`Entry.wire`) and, when it is not OpenAI's, its own
    # body, sent as it is (with the routed model) to a provider of the same wire.
    entry_wire: str = "openai"
    native_body: dict[str, Any] | None = None
    # Features of native_body that the OpenAI-shaped body cannot carry ("thinking", ...):
    # fine when the provider speaks the entry's wire, a 400 naming them otherwise.
    untranslatable: tuple[str, ...] = ()
    # Entries other than chat on the OpenAI wire (`/completions`, `/moderations`): the path
    # under an OpenAI-wire base URL, and the provider kinds that serve it (empty: any).
    upstream_path: str | None = None
    provider_kinds: frozenset[str] = frozenset()
    # A call nothing is billed for (count_tokens): nothing reserved; a spent budget stops it.
    free: bool = False


USAGE_SOURCES = ("provider", "counted", "estimated", "none")


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call; input_tokens includes cached_input_tokens (cache reads) and
    cache_write_tokens (Anthropic's cache creation), as OpenAI counts its prompt tokens.

    Each side says where its count came from: "provider" (the upstream's usage report),
    "counted" (exact, by the gateway's tokenizer), "estimated" (a tokenizer that is not the
    model's own) or "none" (not known).
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    input_source: str = "provider"
    output_source: str = "provider"
    cache_write_tokens: int = 0

    @property
    def source(self) -> str:
        """One word for both sides: theirs when they agree, else the weaker one."""
        sides = {self.input_source, self.output_source}
        if len(sides) == 1:
            return self.input_source
        if "estimated" in sides:
            return "estimated"
        return "partial" if "none" in sides else "counted"


NO_USAGE = Usage(input_source="none", output_source="none")


@dataclass(slots=True)
class UsageRecord:
    """One row of the usage ledger: one per proxied request, success or not."""

    request_id: uuid.UUID
    project_id: int
    api_key_id: int | None  # None: tracked with the admin token
    provider: str
    model: str
    endpoint: str
    status: int
    streamed: bool
    usage: Usage
    cost_usd: Decimal
    priced_by_fallback: bool
    price_model: str | None
    overhead_ms: float
    upstream_ms: float | None
    error_code: str | None
    metadata: dict[str, Any]
    started_at: datetime
    finished_at: datetime
    requested_model: str | None = None  # the client's name, when routing changed it
    credential: str | None = None  # the label of the credential that served (never the key)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # every upstream attempt
    origin: str = "proxy"  # or "track": recorded through POST /api/track
    route_reason: str | None = None  # why the smart router chose `model` (None: not routed)
