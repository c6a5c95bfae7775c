-- Issue 6: daily rollups for long analytics ranges, and an index for team membership.
--
-- usage_hourly (0007) answers a 90-day question with 2,160 rows per project, provider and
-- model: fine for one project, slow across many (tens of thousands of rows to aggregate,
-- NUMERIC sums included). usage_daily holds the same sums per UTC day, 24 times fewer rows;
-- analytics read whole UTC days from it and the partial days at a range's edges (and every
-- hourly or other-time-zone question) from usage_hourly, so totals stay exact.
--
-- Kept like usage_hourly: a statement-level trigger with a transition table on usage_records,
-- in the same transaction as the insert (only rows really inserted; a replay never counts
-- twice), upserting in key order. It fires before the hourly trigger (triggers fire in name
-- order), so every writer locks daily buckets, then hourly buckets, each in key order: no
-- deadlocks. team_id is the project's team when the first row of that day arrived.

CREATE TABLE usage_daily (
    day                 date NOT NULL,             -- (started_at AT TIME ZONE 'UTC')::date
    project_id          bigint NOT NULL,
    provider            text NOT NULL,
    model               text NOT NULL,
    team_id             bigint,
    requests            bigint NOT NULL DEFAULT 0,
    errors              bigint NOT NULL DEFAULT 0,
    input_tokens        bigint NOT NULL DEFAULT 0,
    cached_input_tokens bigint NOT NULL DEFAULT 0,
    cache_write_tokens  bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    cost_usd            numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (day, project_id, provider, model)
);
CREATE INDEX usage_daily_project_day_idx ON usage_daily (project_id, day);
CREATE INDEX usage_daily_team_day_idx ON usage_daily (team_id, day) WHERE team_id IS NOT NULL;

-- Team membership lookups (team listings, membership changes, the FK check on team deletes).
CREATE INDEX projects_team_idx ON projects (team_id) WHERE team_id IS NOT NULL;

CREATE FUNCTION usage_daily_add() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_daily AS d (day, project_id, provider, model, team_id, requests, errors,
                                  input_tokens, cached_input_tokens, cache_write_tokens,
                                  output_tokens, cost_usd)
    SELECT g.day, g.project_id, g.provider, g.model, p.team_id, g.requests, g.errors,
           g.input_tokens, g.cached_input_tokens, g.cache_write_tokens, g.output_tokens,
           g.cost_usd
    FROM (
        SELECT (n.started_at AT TIME ZONE 'UTC')::date AS day, n.project_id, n.provider,
               n.model, count(*) AS requests, count(*) FILTER (WHERE n.status >= 400) AS errors,
               sum(n.input_tokens)::bigint AS input_tokens,
               sum(n.cached_input_tokens)::bigint AS cached_input_tokens,
               sum(n.cache_write_tokens)::bigint AS cache_write_tokens,
               sum(n.output_tokens)::bigint AS output_tokens, sum(n.cost_usd) AS cost_usd
        FROM new_usage n
        GROUP BY 1, 2, 3, 4
    ) g
    LEFT JOIN projects p ON p.id = g.project_id
    ORDER BY g.day, g.project_id, g.provider, g.model
    ON CONFLICT (day, project_id, provider, model) DO UPDATE SET
        requests = d.requests + EXCLUDED.requests,
        errors = d.errors + EXCLUDED.errors,
        input_tokens = d.input_tokens + EXCLUDED.input_tokens,
        cached_input_tokens = d.cached_input_tokens + EXCLUDED.cached_input_tokens,
        cache_write_tokens = d.cache_write_tokens + EXCLUDED.cache_write_tokens,
        output_tokens = d.output_tokens + EXCLUDED.output_tokens,
        cost_usd = d.cost_usd + EXCLUDED.cost_usd;
    RETURN NULL;
END $$;

CREATE FUNCTION usage_daily_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE usage_daily;
    RETURN NULL;
END $$;

-- Writers wait while the backfill runs (as in 0007), so no row is missed or counted twice.
LOCK TABLE usage_records IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO usage_daily (day, project_id, provider, model, team_id, requests, errors,
                         input_tokens, cached_input_tokens, cache_write_tokens, output_tokens,
                         cost_usd)
SELECT (h.hour AT TIME ZONE 'UTC')::date, h.project_id, h.provider, h.model,
       (array_agg(h.team_id ORDER BY h.hour))[1], sum(h.requests), sum(h.errors),
       sum(h.input_tokens), sum(h.cached_input_tokens), sum(h.cache_write_tokens),
       sum(h.output_tokens), sum(h.cost_usd)
FROM usage_hourly h
GROUP BY 1, 2, 3, 4;

CREATE TRIGGER usage_records_daily AFTER INSERT ON usage_records
    REFERENCING NEW TABLE AS new_usage
    FOR EACH STATEMENT EXECUTE FUNCTION usage_daily_add();
CREATE TRIGGER usage_records_daily_truncate AFTER TRUNCATE ON usage_records
    FOR EACH STATEMENT EXECUTE FUNCTION usage_daily_truncate();
