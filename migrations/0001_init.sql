-- Teams, projects, API keys and the usage ledger.

CREATE TABLE teams (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projects (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    team_id             bigint REFERENCES teams (id),
    plan                text NOT NULL DEFAULT 'free'
                        CHECK (plan IN ('free', 'pro', 'team', 'enterprise')),
    monthly_budget_usd  numeric CHECK (monthly_budget_usd >= 0),
    allowed_providers   text[] NOT NULL DEFAULT '{}',
    allowed_models      text[] NOT NULL DEFAULT '{}',
    enabled             boolean NOT NULL DEFAULT true,
    metadata            jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    prefix      text NOT NULL UNIQUE,
    key_hash    bytea NOT NULL CHECK (length(key_hash) = 32),  -- SHA-256 of the whole key
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_project_idx ON api_keys (project_id);

-- Every change to a key or a project tells every replica to drop its cached copy, so a
-- revoked key or a disabled project stops working everywhere within a second.
CREATE FUNCTION gateway_notify_auth_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    row_data record;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row_data := OLD;
    ELSE
        row_data := NEW;
    END IF;
    IF TG_TABLE_NAME = 'api_keys' THEN
        PERFORM pg_notify('gateway_auth', 'key:' || row_data.prefix);
    ELSIF TG_TABLE_NAME = 'projects' THEN
        PERFORM pg_notify('gateway_auth', 'project:' || row_data.id);
    ELSE
        PERFORM pg_notify('gateway_auth', 'team:' || row_data.id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER api_keys_notify AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_auth_change();
CREATE TRIGGER projects_notify AFTER UPDATE OR DELETE ON projects
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_auth_change();
CREATE TRIGGER teams_notify AFTER UPDATE OR DELETE ON teams
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_auth_change();

-- One row per proxied request. No foreign keys: the ledger must accept every row it is
-- given, even for a project deleted since.
CREATE TABLE usage_records (
    request_id           uuid PRIMARY KEY,
    project_id           bigint NOT NULL,
    api_key_id           bigint,
    provider             text NOT NULL,
    model                text NOT NULL,
    endpoint             text NOT NULL,
    status               smallint NOT NULL,
    streamed             boolean NOT NULL,
    input_tokens         integer NOT NULL,
    cached_input_tokens  integer NOT NULL,
    output_tokens        integer NOT NULL,
    usage_source         text NOT NULL,
    cost_usd             numeric NOT NULL,
    priced_by_fallback   boolean NOT NULL,
    price_model          text,
    overhead_ms          real NOT NULL,
    upstream_ms          real,
    error_code           text,
    metadata             jsonb NOT NULL DEFAULT '{}',
    started_at           timestamptz NOT NULL,
    finished_at          timestamptz NOT NULL
);
CREATE INDEX usage_records_project_time_idx ON usage_records (project_id, started_at);
CREATE INDEX usage_records_time_idx ON usage_records (started_at);
