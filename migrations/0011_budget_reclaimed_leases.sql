-- Issue 13: a budget is never overspent by a fault.
--
-- A lease that expires (its holder crashed, or was cut off from the database) may have been
-- spent in part, and only its holder knows how much. It is now reclaimed as spent, all of it,
-- and remembered in budget_reclaimed; if the holder comes back and reports what it really
-- used, the difference is given back to the budget. A holder that never comes back has its
-- whole lease counted: never more than was leased, never less than was spent.

CREATE TABLE budget_reclaimed (
    scope       text NOT NULL,
    scope_id    bigint NOT NULL,
    period      date NOT NULL,
    holder      text NOT NULL,
    amount      numeric NOT NULL,
    reclaimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, scope_id, period, holder)
);

DROP FUNCTION budget_sync(text, bigint, date, text, numeric, numeric, numeric, numeric, numeric,
                          double precision);

-- As in 0004, plus: expired leases of other holders are counted as spent and remembered;
-- a holder whose lease was reclaimed reports against that (spent - reclaimed + used), its
-- in-flight reservations (`p_reserved`) covered again first; `reclaimed` tells it so.
CREATE FUNCTION budget_sync(p_scope text, p_scope_id bigint, p_period date, p_holder text,
                            p_limit numeric, p_used numeric, p_returned numeric,
                            p_want numeric, p_need numeric, p_ttl_s double precision,
                            p_reserved numeric DEFAULT 0)
RETURNS TABLE (granted numeric, spent numeric, leased numeric, free numeric,
               reclaimed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_spent numeric;
    v_leased numeric;
    v_expired numeric;
    v_mine numeric;
    v_free numeric;
    v_cover numeric := 0;
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
        RETURNING l.holder, l.amount),
    kept AS (
        INSERT INTO budget_reclaimed AS r (scope, scope_id, period, holder, amount)
        SELECT p_scope, p_scope_id, p_period, gone.holder, gone.amount FROM gone
        WHERE gone.amount > 0
        ON CONFLICT (scope, scope_id, period, holder) DO UPDATE
            SET amount = r.amount + EXCLUDED.amount, reclaimed_at = now()
        RETURNING 1)
    SELECT coalesce(sum(gone.amount), 0) INTO v_expired FROM gone;
    v_spent := v_spent + v_expired;  -- reclaimed as spent: it may have been
    v_leased := greatest(v_leased - v_expired, 0);

    DELETE FROM budget_reclaimed r
    WHERE r.scope = p_scope AND r.scope_id = p_scope_id AND r.period = p_period
      AND r.holder = p_holder
    RETURNING r.amount INTO v_mine;

    IF v_mine IS NULL THEN
        v_spent := v_spent + p_used;
        v_leased := greatest(v_leased - p_used - p_returned, 0);
    ELSE
        -- Our lease was reclaimed as spent: count what we really used instead, and cover
        -- the calls we still have in flight before anything else.
        v_spent := v_spent - v_mine + p_used;
        v_cover := least(p_reserved, greatest(p_limit - v_spent - v_leased, 0));
        v_leased := v_leased + v_cover;
        DELETE FROM budget_leases l
        WHERE l.scope = p_scope AND l.scope_id = p_scope_id AND l.period = p_period
          AND l.holder = p_holder;
    END IF;

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
    VALUES (p_scope, p_scope_id, p_period, p_holder, v_cover + v_grant,
            now() + make_interval(secs => p_ttl_s))
    ON CONFLICT (scope, scope_id, period, holder) DO UPDATE
        SET amount = greatest(l.amount - p_used - p_returned, 0) + v_grant,
            expires_at = EXCLUDED.expires_at;
    DELETE FROM budget_leases l
    WHERE l.scope = p_scope AND l.scope_id = p_scope_id AND l.period = p_period
      AND l.holder = p_holder AND l.amount <= 0;

    RETURN QUERY SELECT v_cover + v_grant, v_spent, v_leased, v_free - v_grant,
                        v_mine IS NOT NULL;
END $$;
