-- Issue 6: budget alerts, anomaly detection and webhooks (gateway/alerts.py, gateway/webhooks.py).
--
-- Events are written to an outbox in the same transaction as the usage rows they describe,
-- and a worker on every replica delivers them (FOR UPDATE SKIP LOCKED shares the work).

-- Percentages of the monthly budget at which `budget.alert` fires, once each per month.
ALTER TABLE projects
    ADD COLUMN alert_thresholds numeric[] NOT NULL DEFAULT '{50,80,100}'
        CHECK (cardinality(alert_thresholds) <= 20
               AND array_position(alert_thresholds, NULL) IS NULL
               AND 0 < ALL (alert_thresholds) AND 1000 >= ALL (alert_thresholds));

-- Where events go. project_id NULL: every project's events (an admin-level endpoint).
-- The signing secret is sealed with GATEWAY_SECRET_KEY when one is configured (AES-256-GCM,
-- associated data 'webhook:<id>'); without one it is stored as is in secret_plain, so a
-- database reader can forge signatures: configure GATEWAY_SECRET_KEY in production.
CREATE TABLE webhook_endpoints (
    id                 uuid PRIMARY KEY,
    project_id         bigint REFERENCES projects (id) ON DELETE CASCADE,
    url                text NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2048),
    description        text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    events             text[] NOT NULL CHECK (
                           cardinality(events) BETWEEN 1 AND 4
                           AND events <@ ARRAY['budget.alert', 'usage.exceeded',
                                               'anomaly.detected', 'usage.tracked']),
    format             text NOT NULL DEFAULT 'json' CHECK (format IN ('json', 'slack')),
    enabled            boolean NOT NULL DEFAULT true,
    secret_plain       text,
    secret_ciphertext  bytea,
    secret_nonce       bytea CHECK (length(secret_nonce) = 12),
    secret_key_id      text CHECK (length(secret_key_id) = 16),
    secret_hint        text NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((secret_plain IS NULL) = (secret_ciphertext IS NOT NULL
                                     AND secret_nonce IS NOT NULL
                                     AND secret_key_id IS NOT NULL))
);
CREATE INDEX webhook_endpoints_project_idx ON webhook_endpoints (project_id);

-- Each alert fires once per (project, kind, period, threshold), however many replicas and
-- batches see it: the hook inserts here with ON CONFLICT DO NOTHING and enqueues only what
-- the insert returned. period is the start of the period the alert belongs to: the budget
-- month's first midnight (in budgets.timezone) for budget kinds, the clock hour for
-- anomaly and rate-limit kinds. threshold is the percentage for 'budget.alert', else 0.
CREATE TABLE alerts_fired (
    project_id  bigint NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('budget.alert', 'budget.exceeded',
                                              'rate_limit.exceeded', 'anomaly.detected')),
    period      timestamptz NOT NULL,
    threshold   numeric NOT NULL DEFAULT 0,
    event_id    uuid NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}',
    fired_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, kind, period, threshold)
);

-- One row per (event, endpoint): the event id is the receiver's de-duplication key and is the
-- same on every endpoint and every attempt. A claimed row's next_attempt_at is pushed past the
-- delivery timeout (a lease), so a worker that dies mid-delivery is retried by another.
CREATE TABLE webhook_outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         uuid NOT NULL,
    event_type       text NOT NULL,
    project_id       bigint,
    payload          jsonb NOT NULL,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    failed_at        timestamptz,             -- gave up after webhooks.max_attempts
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_outbox_due_idx ON webhook_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE INDEX webhook_outbox_endpoint_idx ON webhook_outbox (endpoint_id, created_at);
