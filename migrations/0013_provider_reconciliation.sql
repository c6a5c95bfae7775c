-- Issue 18: the providers' own usage and cost reports, imported with their admin keys, and
-- the state of each import (gateway/sync/).
--
-- An account is whose provider organisation a report comes from: 'gateway' (the admin key in
-- the settings, the organisation the gateway's own provider keys bill) or 'project:<id>' (an
-- admin key a project stored beside its own provider keys). A day is a UTC day, the providers'
-- 1d bucket. Imports replace whole days (DELETE then INSERT, in one transaction with the
-- cursor), so a day imported twice is stored once and a revised day replaces the old one.

CREATE TABLE provider_usage (
    account               text NOT NULL,
    provider              text NOT NULL,
    day                   date NOT NULL,
    source                text NOT NULL,          -- completions, embeddings, ..., messages
    model                 text NOT NULL DEFAULT '',
    provider_project      text NOT NULL DEFAULT '',  -- OpenAI project id; '' where not reported
    input_tokens          bigint NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),  -- uncached
    cache_read_tokens     bigint NOT NULL DEFAULT 0 CHECK (cache_read_tokens >= 0),
    cache_write_5m_tokens bigint NOT NULL DEFAULT 0 CHECK (cache_write_5m_tokens >= 0),
    cache_write_1h_tokens bigint NOT NULL DEFAULT 0 CHECK (cache_write_1h_tokens >= 0),
    output_tokens         bigint NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    requests              bigint,                 -- NULL where the report counts none
    details               jsonb NOT NULL DEFAULT '{}',  -- the report's other quantities
    imported_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, provider, day, source, model, provider_project)
);

CREATE TABLE provider_costs (
    account           text NOT NULL,
    provider          text NOT NULL,
    day               date NOT NULL,
    line_item         text NOT NULL,              -- OpenAI line_item, Anthropic description
    provider_project  text NOT NULL DEFAULT '',
    model             text NOT NULL DEFAULT '',   -- '' for costs not tied to a model
    token_type        text NOT NULL DEFAULT '',   -- input, cache_read, cache_write, output, ''
    amount_usd        numeric NOT NULL,
    imported_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, provider, day, line_item, provider_project)
);

-- One row per integration (account, provider). A run imports [run_start, run_end] a chunk
-- of days at a time; cursor is the last day it finished. A run that failed resumes after
-- cursor the next time (unless forced).
CREATE TABLE sync_state (
    account          text NOT NULL,
    provider         text NOT NULL,
    state            text NOT NULL DEFAULT 'idle'
                     CHECK (state IN ('idle', 'running', 'ok', 'error')),
    run_start        date,
    run_end          date,
    cursor           date,
    records          bigint NOT NULL DEFAULT 0,   -- rows the last finished run stored
    last_started_at  timestamptz,
    last_success_at  timestamptz,
    last_error       text,
    last_error_at    timestamptz,
    PRIMARY KEY (account, provider)
);

-- A day outside tolerance raises `reconciliation.mismatch` once per (account, provider, day).
CREATE TABLE reconciliation_alerts (
    account        text NOT NULL,
    provider       text NOT NULL,
    day            date NOT NULL,
    event_id       uuid NOT NULL,
    difference_usd numeric NOT NULL,
    fired_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, provider, day)
);

-- Webhook endpoints may subscribe to the new event.
ALTER TABLE webhook_endpoints DROP CONSTRAINT webhook_endpoints_events_check;
ALTER TABLE webhook_endpoints ADD CONSTRAINT webhook_endpoints_events_check CHECK (
    cardinality(events) BETWEEN 1 AND 5
    AND events <@ ARRAY['budget.alert', 'usage.exceeded', 'anomaly.detected', 'usage.tracked',
                        'reconciliation.mismatch']);
