-- Per-project provider credentials, encrypted at rest (gateway/credentials.py).
--
-- The key is sealed with AES-256-GCM under a key derived from GATEWAY_SECRET_KEY; the
-- associated data binds each ciphertext to its row ('{project_id}:{provider}:{name}'), so a
-- ciphertext copied to another row does not open. `key_id` fingerprints the encryption key,
-- so a gateway started with another GATEWAY_SECRET_KEY names the mismatch instead of guessing.
CREATE TABLE provider_credentials (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    provider    text NOT NULL CHECK (length(provider) BETWEEN 1 AND 100),
    name        text NOT NULL DEFAULT 'default' CHECK (length(name) BETWEEN 1 AND 64),
    ciphertext  bytea NOT NULL,                            -- includes the 16-byte GCM tag
    nonce       bytea NOT NULL CHECK (length(nonce) = 12),
    key_id      text NOT NULL CHECK (length(key_id) = 16), -- SHA-256 of the key, 16 hex
    key_hint    text NOT NULL DEFAULT '',                  -- '…' and the key's last 4 chars
    base_url    text,                                      -- NULL: the provider's own
    weight      integer NOT NULL DEFAULT 1 CHECK (weight >= 0),
    options     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, provider, name)
);

-- Every change tells every replica to drop that project's cached credentials; a TRUNCATE
-- (no row triggers) tells them to drop everything.
CREATE FUNCTION gateway_notify_credentials_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('gateway_credentials', '*');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('gateway_credentials', OLD.project_id::text);
    ELSE
        PERFORM pg_notify('gateway_credentials', NEW.project_id::text);
        IF TG_OP = 'UPDATE' AND OLD.project_id <> NEW.project_id THEN
            PERFORM pg_notify('gateway_credentials', OLD.project_id::text);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER provider_credentials_notify AFTER INSERT OR UPDATE OR DELETE
    ON provider_credentials FOR EACH ROW EXECUTE FUNCTION gateway_notify_credentials_change();
CREATE TRIGGER provider_credentials_truncate_notify AFTER TRUNCATE
    ON provider_credentials FOR EACH STATEMENT
    EXECUTE FUNCTION gateway_notify_credentials_change();
