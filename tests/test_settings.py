"""Settings: defaults, the shipped config file, environment overrides, validation, secrecy."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import (
    BUILTIN_PROVIDERS,
    ProviderSettings,
    SettingsError,
    load_settings,
    settings_from_mapping,
)

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_TOML = ROOT / "config" / "gateway.toml"


# -- defaults and the shipped file -------------------------------------------------------------

def test_defaults_when_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no config/gateway.toml here
    settings = load_settings(environ={})
    assert settings == settings_from_mapping({}, {})
    assert set(settings.providers) == set(BUILTIN_PROVIDERS)
    assert settings.provider("openai") == ProviderSettings()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.server.max_body_bytes == 1_048_576
    assert settings.server.header_timeout_s == 30.0
    assert settings.server.body_timeout_s == 30.0
    assert settings.server.max_connections == 10_000
    assert settings.database.url == ""
    assert settings.database.data_dir == Path(".data")
    assert settings.auth.admin_token == ""
    assert settings.validation.max_messages == 100
    assert settings.validation.max_content_chars == 32_000
    assert settings.pricing.fallback == "provider_max"
    assert settings.pricing.fallback_output == Decimal("60")
    assert settings.ledger.batch_size == 500
    assert settings.logging.format == "json"
    assert settings.logging.requests is False
    assert settings.provider("openai").base_url == "https://api.openai.com/v1"
    assert settings.provider("openai").api_key == ""


@pytest.mark.parametrize("how", ["explicit_path", "GATEWAY_CONFIG"])
def test_missing_named_config_file_fails(tmp_path: Path, how: str) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(SettingsError, match="does not exist"):
        if how == "explicit_path":
            load_settings(missing, environ={})
        else:
            load_settings(environ={"GATEWAY_CONFIG": str(missing)})


def test_invalid_toml_fails(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server\nport = 1\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(path, environ={})


def test_real_gateway_toml_loads() -> None:
    settings = load_settings(GATEWAY_TOML, environ={})
    assert settings.server.port == 8080
    assert settings.server.shutdown_timeout_s == 20.0
    assert isinstance(settings.server.shutdown_timeout_s, float)
    assert settings.server.header_timeout_s == 30.0
    assert isinstance(settings.server.body_timeout_s, float)
    assert settings.server.max_connections == 10_000
    assert settings.database.migrate_on_start is True
    assert settings.database.pool_min_size == 2
    assert settings.database.pool_max_size == 10
    assert settings.pricing.file == Path("config/prices.toml")
    assert settings.pricing.fallback_input == Decimal("15.0")
    assert isinstance(settings.pricing.fallback_input, Decimal)
    assert settings.ledger.flush_interval_s == pytest.approx(0.05)
    assert settings.logging.level == "info"
    assert set(settings.providers) == {"openai", "azure", "anthropic", "gemini", "mistral",
                                       "cohere"}
    assert settings.provider("anthropic").base_url == "https://api.anthropic.com"
    assert settings.provider("gemini").kind == "gemini"
    assert settings.provider("openai").max_connections == 256
    assert settings.provider("openai").first_byte_timeout_s == 60.0


def test_gateway_config_env_selects_file(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text("[server]\nport = 7001\n", encoding="utf-8")
    assert load_settings(environ={"GATEWAY_CONFIG": str(path)}).server.port == 7001


# -- environment overrides ---------------------------------------------------------------------

@pytest.mark.parametrize(("env", "getter", "expected"), [
    ({"GATEWAY_SERVER_PORT": "9000"}, lambda s: s.server.port, 9000),
    ({"GATEWAY_SERVER_HOST": "0.0.0.0"}, lambda s: s.server.host, "0.0.0.0"),
    ({"GATEWAY_SERVER_MAX_CONNECTIONS": "500"}, lambda s: s.server.max_connections, 500),
    ({"GATEWAY_SERVER_BODY_TIMEOUT_S": "2.5"}, lambda s: s.server.body_timeout_s, 2.5),
    ({"GATEWAY_LEDGER_BATCH_SIZE": "50"}, lambda s: s.ledger.batch_size, 50),
    ({"GATEWAY_LEDGER_FLUSH_INTERVAL_S": "0.5"}, lambda s: s.ledger.flush_interval_s, 0.5),
    ({"GATEWAY_PRICING_FALLBACK": "fixed"}, lambda s: s.pricing.fallback, "fixed"),
    ({"GATEWAY_PRICING_FALLBACK_OUTPUT": "75.5"}, lambda s: s.pricing.fallback_output,
     Decimal("75.5")),
    ({"GATEWAY_VALIDATION_MAX_MESSAGES": "7"}, lambda s: s.validation.max_messages, 7),
    ({"GATEWAY_DATABASE_MIGRATE_ON_START": "false"},
     lambda s: s.database.migrate_on_start, False),
    ({"GATEWAY_DATABASE_URL": "postgresql://u:p@db:5432/gw"}, lambda s: s.database.url,
     "postgresql://u:p@db:5432/gw"),
    ({"GATEWAY_DATA_DIR": "/var/lib/gw"}, lambda s: s.database.data_dir, Path("/var/lib/gw")),
    ({"GATEWAY_ADMIN_TOKEN": "tok-123"}, lambda s: s.auth.admin_token, "tok-123"),
    ({"OPENAI_API_KEY": "sk-test"}, lambda s: s.provider("openai").api_key, "sk-test"),
    ({"OPENAI_BASE_URL": "http://127.0.0.1:9999/v1"},
     lambda s: s.provider("openai").base_url, "http://127.0.0.1:9999/v1"),
    ({"OPENAI_API_KEY": ""}, lambda s: s.provider("openai").api_key, ""),
    ({"ANTHROPIC_API_KEY": "sk-ant"}, lambda s: s.provider("anthropic").api_key, "sk-ant"),
    ({"ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}, lambda s: s.provider("anthropic").base_url,
     "http://127.0.0.1:9"),
    ({"GEMINI_API_KEY": "g-1"}, lambda s: s.provider("gemini").api_key, "g-1"),
    ({"GOOGLE_API_KEY": "g-2"}, lambda s: s.provider("gemini").api_key, "g-2"),
    ({"AZURE_OPENAI_API_KEY": "az"}, lambda s: s.provider("azure").api_key, "az"),
    ({"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"},
     lambda s: s.provider("azure").base_url, "https://r.openai.azure.com"),
    ({"AZURE_OPENAI_API_VERSION": "2025-01-01"}, lambda s: s.provider("azure").api_version,
     "2025-01-01"),
    ({"MISTRAL_API_KEY": "m"}, lambda s: s.provider("mistral").api_key, "m"),
    ({"COHERE_API_KEY": "c"}, lambda s: s.provider("cohere").api_key, "c"),
    ({"GATEWAY_SECRET_KEY": "s" * 40}, lambda s: s.secrets.key, "s" * 40),
    ({"GATEWAY_ROUTING_DEFAULT_PROVIDER": "mistral"},
     lambda s: s.routing.default_provider, "mistral"),
    ({"GATEWAY_SERVER_PORT_X": "1", "UNRELATED": "x"}, lambda s: s.server.port, 8080),
])
def test_env_overrides(env: dict[str, str], getter: Any, expected: Any) -> None:
    value = getter(settings_from_mapping({}, env))
    assert value == expected
    assert type(value) is type(expected)


def test_env_beats_file(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        '[server]\nport = 7000\nhost = "10.0.0.1"\n[ledger]\nbatch_size = 10\n'
        '[providers.openai]\nbase_url = "http://file.invalid/v1"\napi_key = "from-file"\n',
        encoding="utf-8")
    from_file = load_settings(path, environ={})
    assert from_file.server.port == 7000
    assert from_file.provider("openai").api_key == "from-file"
    settings = load_settings(path, environ={
        "GATEWAY_SERVER_PORT": "9000", "GATEWAY_LEDGER_BATCH_SIZE": "20",
        "OPENAI_API_KEY": "from-env", "OPENAI_BASE_URL": "http://env.invalid/v1"})
    assert settings.server.port == 9000
    assert settings.server.host == "10.0.0.1"  # not overridden: the file's value stays
    assert settings.ledger.batch_size == 20
    assert settings.provider("openai").api_key == "from-env"
    assert settings.provider("openai").base_url == "http://env.invalid/v1"


# -- wrong values ------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "env", "fragments"), [
    ({"logging": {"format": "xml"}}, {}, ["logging.format", "'xml'", "json", "console"]),
    ({}, {"GATEWAY_LOGGING_FORMAT": "xml"}, ["logging.format", "json", "console"]),
    ({"logging": {"level": "verbose"}}, {},
     ["logging.level", "debug", "info", "warning", "error"]),
    ({"pricing": {"fallback": "cheapest"}}, {}, ["pricing.fallback", "provider_max", "fixed"]),
    ({}, {"GATEWAY_SERVER_PORT": "abc"}, ["server.port", "int", "'abc'"]),
    ({"server": {"port": 70000}}, {}, ["server.port", "70000", "maximum 65535"]),
    ({}, {"GATEWAY_SERVER_PORT": "70000"}, ["server.port", "maximum 65535"]),
    ({"server": {"port": -1}}, {}, ["server.port", "minimum 0"]),
    ({"server": {"port": Decimal("8080.5")}}, {}, ["server.port", "int"]),
    ({"server": {"port": True}}, {}, ["server.port", "int"]),
    ({"server": {"max_body_bytes": 10}}, {}, ["server.max_body_bytes", "minimum 1024"]),
    ({"server": {"max_connections": 0}}, {}, ["server.max_connections", "minimum 1"]),
    ({"server": {"header_timeout_s": 0}}, {}, ["server.header_timeout_s", "minimum 0.01"]),
    ({}, {"GATEWAY_SERVER_BODY_TIMEOUT_S": "-1"}, ["server.body_timeout_s", "minimum 0.01"]),
    ({"server": {"prot": 1}}, {},
     ["unknown setting server.prot", "host", "max_body_bytes", "port", "public_url",
      "shutdown_timeout_s"]),
    ({"servers": {"port": 1}}, {},
     ["[servers]", "auth", "database", "ledger", "logging", "pricing", "providers", "server",
      "validation"]),
    ({"server": 5}, {}, ["[server]", "table"]),
    ({"providers": {"claude": {}}}, {},
     ["providers.claude", "not a built-in provider", "openai, azure, anthropic"]),
    ({"providers": {"openai": {"key": "x"}}}, {},
     ["providers.openai.key", "api_key", "base_url", "max_connections"]),
    ({"providers": "openai"}, {}, ["[providers]"]),
    ({}, {"GATEWAY_LOGGING_REQUESTS": "maybe"}, ["logging.requests", "boolean", "'maybe'"]),
    ({"database": {"pool_min_size": 20, "pool_max_size": 5}}, {},
     ["database.pool_min_size", "database.pool_max_size"]),
    ({}, {"GATEWAY_PRICING_FALLBACK_INPUT": "-1"}, ["pricing.fallback_input", "minimum 0"]),
    ({}, {"GATEWAY_PRICING_FALLBACK_INPUT": "cheap"}, ["pricing.fallback_input", "Decimal"]),
    ({}, {"GATEWAY_LEDGER_FLUSH_INTERVAL_S": "soon"}, ["ledger.flush_interval_s", "float"]),
])
def test_wrong_values_name_the_key(raw: dict[str, Any], env: dict[str, str],
                                   fragments: list[str]) -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_mapping(raw, env)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize(("text", "expected"), [
    ("yes", True), ("on", True), ("true", True), ("TRUE", True), ("1", True), (" Yes ", True),
    ("no", False), ("off", False), ("false", False), ("0", False), ("Off", False),
])
def test_bool_parsing(text: str, expected: bool) -> None:
    settings = settings_from_mapping({}, {"GATEWAY_LOGGING_REQUESTS": text})
    assert settings.logging.requests is expected


@pytest.mark.parametrize("text", ["maybe", "", "2", "y"])
def test_bool_parsing_rejects(text: str) -> None:
    with pytest.raises(SettingsError, match=r"logging\.requests: expected boolean"):
        settings_from_mapping({}, {"GATEWAY_LOGGING_REQUESTS": text})


@pytest.mark.parametrize(("raw", "env"), [
    ({}, {"GATEWAY_PRICING_FALLBACK_INPUT": "nan"}),
    ({}, {"GATEWAY_PRICING_FALLBACK_OUTPUT": "Infinity"}),
    ({}, {"GATEWAY_SERVER_SHUTDOWN_TIMEOUT_S": "nan"}),
    ({}, {"GATEWAY_LEDGER_FLUSH_INTERVAL_S": "nan"}),
    (tomllib.loads("[server]\nport = inf\n", parse_float=Decimal), {}),
])
def test_non_finite_numbers_are_rejected(raw: dict[str, Any], env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        settings_from_mapping(raw, env)


# -- frozen and secret -------------------------------------------------------------------------

@pytest.mark.parametrize(("target", "attribute", "value"), [
    (lambda s: s, "server", None),
    (lambda s: s.server, "port", 1),
    (lambda s: s.database, "url", "postgresql://x"),
    (lambda s: s.logging, "format", "console"),
    (lambda s: s.provider("openai"), "api_key", "sk-x"),
])
def test_settings_are_frozen(target: Any, attribute: str, value: Any) -> None:
    settings = settings_from_mapping({}, {})
    obj = target(settings)
    before = getattr(obj, attribute)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, attribute, value)
    assert getattr(obj, attribute) == before


def test_secrets_do_not_appear_in_repr() -> None:
    secrets = {
        "OPENAI_API_KEY": "sk-live-SECRETKEY123",
        "GATEWAY_ADMIN_TOKEN": "admin-SECRETTOKEN456",
        "GATEWAY_DATABASE_URL": "postgresql://gw:SECRETPASS789@db:5432/gateway",
    }
    settings = settings_from_mapping({}, secrets)
    # the secrets are really there ...
    assert settings.provider("openai").api_key == secrets["OPENAI_API_KEY"]
    assert settings.auth.admin_token == secrets["GATEWAY_ADMIN_TOKEN"]
    assert settings.database.url == secrets["GATEWAY_DATABASE_URL"]
    # ... but never printed
    texts = [repr(settings), str(settings), repr(settings.providers), repr(settings.database),
             repr(settings.auth), repr(settings.provider("openai"))]
    for text in texts:
        for marker in ("SECRETKEY123", "SECRETTOKEN456", "SECRETPASS789"):
            assert marker not in text
    assert "port=8080" in repr(settings)  # repr still shows the non-secret values


# -- the CLI fails fast ------------------------------------------------------------------------

def test_cli_fails_fast_on_bad_setting() -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GATEWAY_") and not k.startswith("OPENAI_")}
    env["GATEWAY_LOGGING_FORMAT"] = "xml"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "gateway", "migrate"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "logging.format" in result.stderr
    assert "configuration error" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("raw", "env"), [
    ({"server": 5}, {"GATEWAY_SERVER_PORT": "9000"}),
    ({"providers": "openai"}, {"OPENAI_API_KEY": "sk-x"}),
])
def test_non_table_section_with_env_override(raw: dict[str, Any], env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        settings_from_mapping(raw, env)


# -- providers, credentials, routing -----------------------------------------------------------

def test_generic_providers_credentials_and_routing_tables() -> None:
    settings = settings_from_mapping({
        "providers": {
            "deepseek": {"kind": "openai_compatible", "base_url": "https://api.deepseek.com/v1",
                         "models": ["deepseek-*"]},
            "azure": {"base_url": "https://r.openai.azure.com",
                      "deployments": {"gpt-4o": "prod-4o"},
                      "credentials": [{"name": "east", "api_key_env": "AZ_EAST", "weight": 2},
                                      {"name": "west", "api_key": "k-west",
                                       "base_url": "https://w.openai.azure.com"}]}},
        "routing": {"aliases": {"fast": "gemini-2.5-flash"},
                    "fallbacks": {"gpt-4o": ["claude-sonnet-4-5"]}}},
        {"DEEPSEEK_API_KEY": "ds-key", "AZ_EAST": "k-east"})
    deepseek = settings.provider("deepseek")
    assert (deepseek.kind, deepseek.api_key, deepseek.models) == (
        "openai_compatible", "ds-key", ("deepseek-*",))
    azure = settings.provider("azure")
    assert azure.deployments == {"gpt-4o": "prod-4o"}
    assert [(c.name, c.api_key, c.weight) for c in azure.credentials] == [
        ("east", "k-east", 2), ("west", "k-west", 1)]
    assert "k-east" not in repr(azure) and "k-west" not in repr(settings)
    assert settings.routing.fallbacks == {"gpt-4o": ("claude-sonnet-4-5",)}
    assert settings.routing.aliases == {"fast": "gemini-2.5-flash"}


@pytest.mark.parametrize(("raw", "message"), [
    ({"providers": {"deepseek": {"base_url": "http://x/v1"}}}, 'kind = "openai_compatible"'),
    ({"providers": {"openai": {"kind": "anthropic"}}}, "built-in provider 'openai'"),
    ({"providers": {"x": {"kind": "nope", "base_url": "http://x"}}}, "providers.x.kind"),
    ({"providers": {"Bad Name": {"kind": "openai_compatible", "base_url": "http://x"}}},
     "provider names"),
    ({"providers": {"local": {"kind": "openai_compatible"}}}, "providers.local.base_url"),
    ({"providers": {"openai": {"credentials": [{"name": "a", "weight": 0}]}}},
     "at least one weight"),
    ({"providers": {"openai": {"credentials": [{"name": "a"}, {"name": "a"}]}}}, "used twice"),
    ({"providers": {"openai": {"credentials": [{"nmae": "a"}]}}}, "unknown setting"),
    ({"providers": {"openai": {"models": "gpt-*,o3"}}}, None),  # comma list: fine
    ({"routing": {"default_provider": "nowhere"}}, "routing.default_provider"),
    ({"routing": {"fallbacks": {"gpt-4o": "claude"}}}, None),
    ({"routing": {"fallbacks": {"gpt-4o": [1]}}}, "routing.fallbacks.gpt-4o"),
    ({"routing": {"aliases": ["x"]}}, "routing.aliases"),
])
def test_provider_and_routing_mistakes_are_named(raw: dict[str, Any], message: str | None) -> None:
    if message is None:
        settings_from_mapping(raw, {})
        return
    with pytest.raises(SettingsError, match=re.escape(message)):
        settings_from_mapping(raw, {})
