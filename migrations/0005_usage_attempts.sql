-- Issue 5: cache writes are billed at their own price; a request may be retried and fall back
-- along a chain, so each row keeps the model the client asked for, every attempt made
-- (provider, model, credential label, status, error, milliseconds) and the credential that
-- served it (its label, never the key).

ALTER TABLE usage_records
    ADD COLUMN cache_write_tokens bigint NOT NULL DEFAULT 0 CHECK (cache_write_tokens >= 0),
    ADD COLUMN requested_model text,
    ADD COLUMN credential text,
    ADD COLUMN attempts jsonb NOT NULL DEFAULT '[]'::jsonb;
