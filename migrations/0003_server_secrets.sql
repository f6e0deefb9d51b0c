-- Keys the server itself needs and every replica must share (e.g. the key that signs
-- session and CSRF cookies). Created on first start; not part of the event log.
CREATE TABLE IF NOT EXISTS server_secrets (
    name        TEXT PRIMARY KEY,
    value       BYTEA NOT NULL CHECK (length(value) = 32),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
