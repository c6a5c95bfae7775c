-- Issue 17: costs paid outside the gateway (CodingVibez's POST /api/costs/manual), such as
-- subscriptions. They live in their own table and are shown beside metered spend, never
-- added to usage_records, the rollups, budgets or analytics totals.

CREATE TABLE manual_costs (
    id          bigserial PRIMARY KEY,
    project_id  bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    service     text NOT NULL CHECK (length(service) BETWEEN 1 AND 100),
    amount_usd  numeric NOT NULL CHECK (amount_usd >= 0),
    month       date NOT NULL CHECK (extract(day FROM month) = 1),  -- the month it belongs to
    category    text NOT NULL DEFAULT '',
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX manual_costs_project_month_idx ON manual_costs (project_id, month);
