-- Per-project rate-limit overrides, team budgets, and budget leases.

ALTER TABLE projects
    ADD COLUMN requests_per_minute integer CHECK (requests_per_minute >= 0),
    ADD COLUMN requests_per_day integer CHECK (requests_per_day >= 0),
    ADD COLUMN tokens_per_minute integer CHECK (tokens_per_minute >= 0);

ALTER TABLE teams ADD COLUMN monthly_budget_usd numeric CHECK (monthly_budget_usd >= 0);

-- One row per budget and calendar month. spent_usd is spend reported by gateway processes;
-- leased_usd is budget handed out to processes and not yet reported back. The invariant,
-- kept by budget_sync() under a row lock: spent_usd + leased_usd <= limit_usd.
CREATE TABLE budget_periods (
    scope       text NOT NULL CHECK (scope IN ('project', 'team')),
    scope_id    bigint NOT NULL,
    period      date NOT NULL,
    limit_usd   numeric NOT NULL,
    spent_usd   numeric NOT NULL DEFAULT 0,
    leased_usd  numeric NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, scope_id, period)
);

CREATE TABLE budget_leases (
    scope       text NOT NULL,
    scope_id    bigint NOT NULL,
    period      date NOT NULL,
    holder      text NOT NULL,
    amount      numeric NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (scope, scope_id, period, holder)
);

-- One call does a holder's whole exchange with a budget: report spend (used moves from
-- leased to spent), give back unneeded lease (returned), reclaim the leases of holders that
-- stopped renewing (crashed processes), and lease more: `want` if it fits, else `need` if
-- that fits, else nothing. Answers what was granted and the budget's state after.
CREATE FUNCTION budget_sync(p_scope text, p_scope_id bigint, p_period date, p_holder text,
                            p_limit numeric, p_used numeric, p_returned numeric,
                            p_want numeric, p_need numeric, p_ttl_s double precision)
RETURNS TABLE (granted numeric, spent numeric, leased numeric, free numeric)
LANGUAGE plpgsql AS $$
DECLARE
    v_spent numeric;
    v_leased numeric;
    v_expired numeric;
    v_free numeric;
    v_grant numeric := 0;
BEGIN
    INSERT INTO budget_periods (scope, scope_id, period, limit_usd)
    VALUES (p_scope, p_scope_id, p_period, p_limit) ON CONFLICT DO NOTHING;
    SELECT b.spent_usd, b.leased_usd INTO v_spent, v_leased FROM budget_periods b
    WHERE b.scope = p_scope AND b.scope_id = p_scope_id AND b.period = p_period FOR UPDATE;

    WITH gone AS (
        DELETE FROM budget_leases l
        WHERE l.scope = p_scope AND l.scope_id = p_scope_id AND l.period = p_period
          AND l.holder <> p_holder AND l.expires_at < now()
        RETURNING l.amount)
    SELECT coalesce(sum(gone.amount), 0) INTO v_expired FROM gone;

    v_spent := v_spent + p_used;
    v_leased := greatest(v_leased - p_used - p_returned - v_expired, 0);
    v_free := p_limit - v_spent - v_leased;
    IF p_want > 0 AND v_free >= p_want THEN
        v_grant := p_want;
    ELSIF p_need > 0 AND v_free >= p_need THEN
        v_grant := p_need;
    END IF;
    v_leased := v_leased + v_grant;

    UPDATE budget_periods b SET limit_usd = p_limit, spent_usd = v_spent,
        leased_usd = v_leased, updated_at = now()
    WHERE b.scope = p_scope AND b.scope_id = p_scope_id AND b.period = p_period;

    INSERT INTO budget_leases AS l (scope, scope_id, period, holder, amount, expires_at)
    VALUES (p_scope, p_scope_id, p_period, p_holder, v_grant,
            now() + make_interval(secs => p_ttl_s))
    ON CONFLICT (scope, scope_id, period, holder) DO UPDATE
        SET amount = greatest(l.amount - p_used - p_returned, 0) + v_grant,
            expires_at = EXCLUDED.expires_at;
    DELETE FROM budget_leases l
    WHERE l.scope = p_scope AND l.scope_id = p_scope_id AND l.period = p_period
      AND l.holder = p_holder AND l.amount <= 0;

    RETURN QUERY SELECT v_grant, v_spent, v_leased, v_free - v_grant;
END $$;
