"""The [sync] section: admin keys from the providers' usual names, kept out of reprs; the
project map from TOML or JSON; bad values named."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.settings import SettingsError, settings_from_mapping


def test_admin_keys_come_from_the_environment_and_never_show() -> None:
    settings = settings_from_mapping({}, {"OPENAI_ADMIN_KEY": "sk-admin-env-secret",
                                          "ANTHROPIC_ADMIN_KEY": "sk-ant-admin-env-secret",
                                          "GATEWAY_SYNC_OPENAI_BASE_URL": "http://x/v1"})
    sync = settings.sync
    assert (sync.openai_admin_key, sync.anthropic_admin_key) == (
        "sk-admin-env-secret", "sk-ant-admin-env-secret")
    assert sync.openai_base_url == "http://x/v1"
    assert "env-secret" not in repr(settings)
    assert (sync.interval_s, sync.days, sync.tolerance_usd, sync.tolerance_percent) == (
        3600.0, 3, Decimal("0.01"), Decimal("1"))


def test_project_map_from_toml_or_json() -> None:
    toml = settings_from_mapping({"sync": {"project_map": {"openai": {"search": "proj_a"}}}},
                                 {})
    env = settings_from_mapping({}, {"GATEWAY_SYNC_PROJECT_MAP": '{"openai": {"search": '
                                                                 '"proj_a"}}'})
    assert toml.sync.project_map["openai"]["search"] == "proj_a"
    assert env.sync.project_map == toml.sync.project_map


@pytest.mark.parametrize(("values", "named"), [
    ({"days": 0}, "sync.days"),
    ({"chunk_days": 32}, "sync.chunk_days"),
    ({"tolerance_percent": -1}, "sync.tolerance_percent"),
    ({"project_map": {"openai": "proj_a"}}, "sync.project_map.openai"),
])
def test_bad_values_are_named(values: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        settings_from_mapping({"sync": values}, {})
