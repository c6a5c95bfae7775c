-- Rate-limit counters and idempotency claims for the `postgres` backend.

-- One row per (key, window start). UNLOGGED: counters are hot, short-lived and cheap to
-- lose (a crash resets the current windows), so they skip the WAL. Rows are deleted once
-- expired, in bounded batches, by the gateway's background sweep.
CREATE UNLOGGED TABLE ratelimit_counters (
    key           text NOT NULL,          -- '{prefix}:{limiter key}:{window name}'
    window_start  bigint NOT NULL,        -- epoch seconds, aligned to the window length
    used          bigint NOT NULL CHECK (used >= 0),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (key, window_start)
) WITH (fillfactor = 70);  -- room for HOT updates of `used`
CREATE INDEX ratelimit_counters_expires_idx ON ratelimit_counters (expires_at);

-- Check every window and consume all of them or none, in one call (one round trip).
-- The arrays describe the windows in the caller's order; `used` answers in that order:
-- the counts after this hit when allowed, else the counts as found.
CREATE FUNCTION ratelimit_hit(p_keys text[], p_starts bigint[], p_limits bigint[],
                              p_costs bigint[], p_ttls double precision[],
                              OUT allowed boolean, OUT used bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    v_used bigint;
BEGIN
    allowed := true;
    used := array_fill(0::bigint, ARRAY[cardinality(p_keys)]);
    -- Lock the counters in one fixed order, so hits sharing windows queue instead of
    -- deadlocking. A missing row is created (and locked) by the upsert.
    FOR i IN SELECT u.ord FROM unnest(p_keys, p_starts) WITH ORDINALITY AS u(k, s, ord)
             ORDER BY u.k, u.s LOOP
        SELECT c.used INTO v_used FROM ratelimit_counters c
         WHERE c.key = p_keys[i] AND c.window_start = p_starts[i] FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO ratelimit_counters AS c (key, window_start, used, expires_at)
            VALUES (p_keys[i], p_starts[i], 0,
                    clock_timestamp() + make_interval(secs => p_ttls[i]))
            ON CONFLICT (key, window_start) DO UPDATE SET used = c.used
            RETURNING c.used INTO v_used;
        END IF;
        used[i] := v_used;
        IF v_used + p_costs[i] > p_limits[i] THEN
            allowed := false;
        END IF;
    END LOOP;
    IF allowed THEN
        FOR i IN 1 .. cardinality(p_keys) LOOP
            IF p_costs[i] <> 0 THEN
                UPDATE ratelimit_counters c SET used = c.used + p_costs[i]
                 WHERE c.key = p_keys[i] AND c.window_start = p_starts[i];
                used[i] := used[i] + p_costs[i];
            END IF;
        END LOOP;
    END IF;
END $$;

-- One row per claimed client request id (X-Request-Id) per project, kept for the
-- retention period. No foreign key: claims must work whatever happens to the project row.
CREATE TABLE idempotency_keys (
    project_id          bigint NOT NULL,
    client_request_id   text NOT NULL,
    gateway_request_id  text NOT NULL,
    expires_at          timestamptz NOT NULL,
    PRIMARY KEY (project_id, client_request_id)
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);
