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
    smart_router,
    stored_responses,
    sync,
    teams,
    tokens,
    track,
    webhooks,
)
from gateway.http.dashboard import assets, forms, pages
from gateway.http.faces import codingvibez as cv
from gateway.http.faces import codingvibez_costs as cv_costs
from gateway.http.faces import codingvibez_status as cv_status
from gateway.http.faces import meterr


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
    app.router.add_post("/api/smart-router", smart_router.smart_router)

    # meterr's face under /v1 (gateway/http/faces/meterr.py): the same handlers where the
    # answers are the same; its error shape comes from the path.
    app.router.add_get("/v1/usage", analytics.usage)
    app.router.add_post("/v1/usage", track.track)
    app.router.add_get("/v1/usage/history", analytics.timeseries)
    app.router.add_post("/v1/track", track.track)
    app.router.add_get("/v1/costs", meterr.costs)
    app.router.add_get("/v1/costs/forecast", analytics.forecast)
    app.router.add_post("/v1/budgets", webhooks.create_budget)
    app.router.add_get("/v1/teams", meterr.list_teams)
    app.router.add_post("/v1/teams", teams.create_team)
    app.router.add_get("/v1/providers", meterr.list_providers)
    app.router.add_post("/v1/providers/connect", meterr.connect_provider)
    app.router.add_delete("/v1/providers/{id}", meterr.disconnect_provider)

    # CodingVibez's face under /api (gateway/http/faces/codingvibez*.py), in its envelope.
    # /api/costs/{provider} comes after the fixed /api/costs/* paths, which win.
    app.router.add_post("/api/tokens/track", cv.track_usage)
    app.router.add_get("/api/tokens", cv.tokens)
    app.router.add_get("/api/tokens/stats", cv.stats)
    app.router.add_get("/api/tokens/timeseries", cv.timeseries)
    app.router.add_get("/api/tokens/burn-rate", cv.burn_rate)
    app.router.add_get("/api/costs/all", cv_costs.all_costs)
    app.router.add_post("/api/costs/manual", cv_costs.add_manual_cost)
    app.router.add_get("/api/costs/{provider}", cv_costs.provider_costs)
    app.router.add_get("/api/dashboard", cv.dashboard)
    app.router.add_get("/api/analytics", cv.analytics_series)
    app.router.add_get("/api/projections", cv.projections)
    app.router.add_get("/api/health", cv_status.health)
    app.router.add_get("/api/tracking-health", cv_status.tracking_health)
    app.router.add_get("/api/status", cv_status.status)
    app.router.add_post("/api/sync", sync.sync_all)
    app.router.add_post("/api/sync-organization-usage", sync.sync_organization_usage)
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

    setup_dashboard_routes(app)


def setup_dashboard_routes(app: web.Application) -> None:
    """The web dashboard: pages (GET), the forms they post, its own static files."""
    app.router.add_get("/dashboard", pages.overview)
    app.router.add_get("/dashboard/live", pages.live)
    app.router.add_get("/dashboard/projects", pages.project_list)
    app.router.add_get("/dashboard/projects/{id}", pages.project_detail)
    app.router.add_get("/dashboard/teams", pages.teams)
    app.router.add_get("/dashboard/requests", pages.requests)
    app.router.add_get("/dashboard/requests/{id}", pages.request_detail)
    app.router.add_get("/dashboard/webhooks", pages.webhook_list)
    app.router.add_get("/dashboard/prices", pages.prices)
    app.router.add_get("/dashboard/health", pages.health)
    app.router.add_get("/dashboard/login", forms.login_form)
    app.router.add_post("/dashboard/login", forms.login)
    app.router.add_post("/dashboard/logout", forms.logout)
    app.router.add_post("/dashboard/projects/{id}/keys", forms.issue_key)
    app.router.add_post("/dashboard/keys/{id}/revoke", forms.revoke_key)
    app.router.add_post("/dashboard/projects/{id}/budget", forms.set_budget)
    app.router.add_post("/dashboard/projects/{id}/allow-lists", forms.set_allow_lists)
    app.router.add_post("/dashboard/projects/{id}/alerts", forms.set_alerts)
    app.router.add_post("/dashboard/webhooks/{id}/test", forms.test_webhook)
    app.router.add_get("/dashboard/static/{name}", assets.static_handler())
