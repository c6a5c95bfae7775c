-- Issue 12: no billed row is ever lost; every source of spend counts against the budget.

-- Where a usage row came from: the proxy (its spend reaches budget_periods through the
-- budget leases) or POST /api/track (its spend is added to budget_periods by the ledger in
-- the same transaction as the row, see gateway/budgets.py TrackedSpendHook).
ALTER TABLE usage_records
    ADD COLUMN origin text NOT NULL DEFAULT 'proxy' CHECK (origin IN ('proxy', 'track'));

-- Usage rows PostgreSQL refused as invalid, kept instead of dropped: the row as the ledger's
-- JSON line (gateway/ledger.py encode_row; text, since it may hold what jsonb cannot), the
-- refusal, and when it was replayed into usage_records (POST /api/admin/ledger/dead-letters/replay).
CREATE TABLE ledger_dead_letters (
    request_id   uuid PRIMARY KEY,
    project_id   bigint,
    row_json     text NOT NULL,
    error        text NOT NULL,
    failures     integer NOT NULL DEFAULT 1,
    failed_at    timestamptz NOT NULL DEFAULT now(),
    replayed_at  timestamptz
);
CREATE INDEX ledger_dead_letters_waiting ON ledger_dead_letters (failed_at)
    WHERE replayed_at IS NULL;
