-- Issue 6: hourly rollups of the usage ledger, kept exact by a trigger.
--
-- Analytics over ranges read usage_hourly (one row per hour, project, provider and model),
-- never the raw rows, so a 90-day answer touches thousands of rows, not millions. Only a
-- grouping by a metadata key needs raw rows; those queries are scoped by project and time and
-- use usage_records_project_time_idx (or usage_records_time_idx for the admin's scope).
--
-- usage_records is not partitioned: a partitioned table cannot keep request_id unique without
-- the partition key, and request_id is what makes a replayed row count once. With the rollups
-- no query scans the raw table for long ranges, and its two time indexes plus the primary key
-- (request ids are a per-process prefix and a counter, so index inserts stay local) keep
-- inserts and range reads fast at tens of millions of rows; bench/ledger.py measures it.
--
-- The trigger is statement-level with a transition table, so any insert (the ledger's batches,
-- manual tracking, a bulk loader) updates the rollups once per statement, in the same
-- transaction; INSERT ... ON CONFLICT DO NOTHING passes only the rows really inserted, so a
-- replayed row never counts twice. Rows are upserted in key order, so concurrent writers
-- lock the buckets they share in the same order and cannot deadlock. Deleting raw rows (a
-- retention job) leaves the rollups as they are; TRUNCATE empties both.

CREATE TABLE usage_hourly (
    hour                timestamptz NOT NULL,      -- date_trunc('hour', started_at) in UTC
    project_id          bigint NOT NULL,
    provider            text NOT NULL,
    model               text NOT NULL,
    team_id             bigint,                    -- the project's team when the first row of this bucket arrived
    requests            bigint NOT NULL DEFAULT 0,
    errors              bigint NOT NULL DEFAULT 0, -- rows with status >= 400
    input_tokens        bigint NOT NULL DEFAULT 0,
    cached_input_tokens bigint NOT NULL DEFAULT 0,
    cache_write_tokens  bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    cost_usd            numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, project_id, provider, model)
);
-- The admin's scope reads all projects by time; the primary key serves ranges per hour.
CREATE INDEX usage_hourly_project_hour_idx ON usage_hourly (project_id, hour);
CREATE INDEX usage_hourly_team_hour_idx ON usage_hourly (team_id, hour) WHERE team_id IS NOT NULL;

CREATE FUNCTION usage_hourly_add() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_hourly AS h (hour, project_id, provider, model, team_id, requests, errors,
                                   input_tokens, cached_input_tokens, cache_write_tokens,
                                   output_tokens, cost_usd)
    SELECT g.hour, g.project_id, g.provider, g.model, p.team_id, g.requests, g.errors,
           g.input_tokens, g.cached_input_tokens, g.cache_write_tokens, g.output_tokens,
           g.cost_usd
    FROM (
        SELECT date_trunc('hour', n.started_at, 'UTC') AS hour, n.project_id, n.provider,
               n.model, count(*) AS requests, count(*) FILTER (WHERE n.status >= 400) AS errors,
               sum(n.input_tokens)::bigint AS input_tokens,
               sum(n.cached_input_tokens)::bigint AS cached_input_tokens,
               sum(n.cache_write_tokens)::bigint AS cache_write_tokens,
               sum(n.output_tokens)::bigint AS output_tokens, sum(n.cost_usd) AS cost_usd
        FROM new_usage n
        GROUP BY 1, 2, 3, 4
    ) g
    LEFT JOIN projects p ON p.id = g.project_id
    ORDER BY g.hour, g.project_id, g.provider, g.model
    ON CONFLICT (hour, project_id, provider, model) DO UPDATE SET
        requests = h.requests + EXCLUDED.requests,
        errors = h.errors + EXCLUDED.errors,
        input_tokens = h.input_tokens + EXCLUDED.input_tokens,
        cached_input_tokens = h.cached_input_tokens + EXCLUDED.cached_input_tokens,
        cache_write_tokens = h.cache_write_tokens + EXCLUDED.cache_write_tokens,
        output_tokens = h.output_tokens + EXCLUDED.output_tokens,
        cost_usd = h.cost_usd + EXCLUDED.cost_usd;
    RETURN NULL;
END $$;

CREATE FUNCTION usage_hourly_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE usage_hourly;
    RETURN NULL;
END $$;

-- Writers wait while the backfill runs, so no row is counted twice or missed between the
-- backfill's snapshot and the trigger's creation (the ledger spills or retries meanwhile).
LOCK TABLE usage_records IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO usage_hourly (hour, project_id, provider, model, team_id, requests, errors,
                          input_tokens, cached_input_tokens, cache_write_tokens, output_tokens,
                          cost_usd)
SELECT g.hour, g.project_id, g.provider, g.model, p.team_id, g.requests, g.errors,
       g.input_tokens, g.cached_input_tokens, g.cache_write_tokens, g.output_tokens, g.cost_usd
FROM (
    SELECT date_trunc('hour', r.started_at, 'UTC') AS hour, r.project_id, r.provider, r.model,
           count(*) AS requests, count(*) FILTER (WHERE r.status >= 400) AS errors,
           sum(r.input_tokens)::bigint AS input_tokens,
           sum(r.cached_input_tokens)::bigint AS cached_input_tokens,
           sum(r.cache_write_tokens)::bigint AS cache_write_tokens,
           sum(r.output_tokens)::bigint AS output_tokens, sum(r.cost_usd) AS cost_usd
    FROM usage_records r
    GROUP BY 1, 2, 3, 4
) g
LEFT JOIN projects p ON p.id = g.project_id;

CREATE TRIGGER usage_records_hourly AFTER INSERT ON usage_records
    REFERENCING NEW TABLE AS new_usage
    FOR EACH STATEMENT EXECUTE FUNCTION usage_hourly_add();
CREATE TRIGGER usage_records_hourly_truncate AFTER TRUNCATE ON usage_records
    FOR EACH STATEMENT EXECUTE FUNCTION usage_hourly_truncate();
