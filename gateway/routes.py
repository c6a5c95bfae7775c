"""The URL table."""

from __future__ import annotations

from aiohttp import web

from gateway.entries import ENTRIES
from gateway.http import (
    admin,
    analytics,
    budgets,
    count_tokens,
    credentials,
    docs,
    health,
    ledger,
    metrics,
    models,
    proxy,
    stored_responses,
    sync,
    teams,
    tokens,
    track,
    webhooks,
)


def setup_routes(app: web.Application) -> None:
    for entry in ENTRIES:  # one route per entry shape: see gateway/entries/__init__.py
        app.router.add_post(entry.path, proxy.handler(entry))
    app.router.add_post("/v1/messages/count_tokens", count_tokens.count_tokens)  # free
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/responses/{id}", stored_responses.retrieve)
    app.router.add_delete("/v1/responses/{id}", stored_responses.delete)
    app.router.add_get("/v1/responses/{id}/input_items", stored_responses.input_items)
    app.router.add_post("/api/tokens/count", tokens.count_tokens)
    app.router.add_get("/api/budgets/status", budgets.budget_status)
    app.router.add_post("/api/budgets", webhooks.create_budget)
    app.router.add_post("/api/track", track.track)
    app.router.add_get("/api/analytics/usage", analytics.usage)
    app.router.add_get("/api/analytics/timeseries", analytics.timeseries)
    app.router.add_get("/api/analytics/burn-rate", analytics.burn_rate)
    app.router.add_get("/api/costs", analytics.costs)
    app.router.add_get("/api/costs/forecast", analytics.forecast)
    app.router.add_get("/api/teams/usage", analytics.teams_usage)
    app.router.add_post("/api/sync", sync.sync_all)
    app.router.add_post("/api/sync-organization-usage", sync.sync_organization_usage)
    app.router.add_get("/api/status", sync.status)
    app.router.add_get("/api/reconciliation", sync.reconciliation)

    app.router.add_get("/api/health/live", health.live)
    app.router.add_get("/api/health/ready", health.ready)
    app.router.add_get("/api/openapi.json", docs.openapi_handler())
    app.router.add_get("/metrics", metrics.scrape)

    app.router.add_post("/api/admin/projects", admin.create_project)
    app.router.add_get("/api/admin/projects", admin.list_projects)
    app.router.add_get("/api/admin/projects/{id}", admin.get_project)
    app.router.add_patch("/api/admin/projects/{id}", admin.update_project)
    app.router.add_put("/api/admin/projects/{id}/budget", admin.set_budget)
    app.router.add_post("/api/admin/projects/{id}/keys", admin.issue_key)
    app.router.add_get("/api/admin/projects/{id}/keys", admin.list_keys)
    app.router.add_delete("/api/admin/keys/{id}", admin.revoke_key)
    app.router.add_put("/api/admin/teams/{id}/budget", admin.set_team_budget)
    app.router.add_get("/api/admin/projects/{id}/providers",
                       credentials.list_provider_credentials)
    app.router.add_put("/api/admin/projects/{id}/providers/{provider}",
                       credentials.put_provider_credential)
    app.router.add_delete("/api/admin/projects/{id}/providers/{provider}",
                          credentials.delete_provider_credential)
    app.router.add_post("/api/admin/teams", teams.create_team)
    app.router.add_get("/api/admin/teams", teams.list_teams)
    app.router.add_get("/api/admin/teams/{id}", teams.get_team)
    app.router.add_patch("/api/admin/teams/{id}", teams.update_team)
    app.router.add_delete("/api/admin/teams/{id}", teams.delete_team)
    app.router.add_put("/api/admin/teams/{id}/projects/{project_id}", teams.add_project)
    app.router.add_delete("/api/admin/teams/{id}/projects/{project_id}", teams.remove_project)
    app.router.add_post("/api/admin/webhooks", webhooks.create_webhook)
    app.router.add_get("/api/admin/webhooks", webhooks.list_webhooks)
    app.router.add_get("/api/admin/webhooks/{id}", webhooks.get_webhook)
    app.router.add_patch("/api/admin/webhooks/{id}", webhooks.update_webhook)
    app.router.add_delete("/api/admin/webhooks/{id}", webhooks.delete_webhook)
    app.router.add_post("/api/admin/webhooks/{id}/test", webhooks.test_webhook)
    app.router.add_get("/api/admin/webhooks/{id}/deliveries", webhooks.list_deliveries)
    app.router.add_put("/api/admin/projects/{id}/alerts", webhooks.put_alerts)
    app.router.add_get("/api/admin/projects/{id}/alerts", webhooks.get_alerts)
    app.router.add_get("/api/admin/ledger/dead-letters", ledger.list_dead_letters)
    app.router.add_post("/api/admin/ledger/dead-letters/replay", ledger.replay_dead_letters)
