-- Failed authentications, counted where every replica sees them (not part of the event
-- log: they are counters, not facts anyone audits). The key is the SHA-256 of
-- `source:<address>` or `user:<username>`; times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS auth_failures (
    key           BYTEA PRIMARY KEY CHECK (length(key) = 32),
    failures      INTEGER NOT NULL,
    last_failure  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_failures_last ON auth_failures (last_failure);
