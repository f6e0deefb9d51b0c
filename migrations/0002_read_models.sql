-- Read models: projections of the event log, rebuildable from it at any time.
-- Times are Unix milliseconds (the domain's Timestamp), so a rebuild is byte-identical.
-- Secrets appear only as SHA-256 digests (bytea, 32 bytes).

CREATE TABLE IF NOT EXISTS clients (
    client_id       TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('confidential', 'public')),
    secret_sha256   BYTEA CHECK (secret_sha256 IS NULL OR length(secret_sha256) = 32),
    redirect_uris   TEXT[] NOT NULL,
    grant_types     TEXT[] NOT NULL,
    scopes          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    disabled_at     BIGINT
);

CREATE TABLE IF NOT EXISTS users (
    user_id         UUID PRIMARY KEY,
    username        TEXT NOT NULL UNIQUE,
    created_at      BIGINT NOT NULL,
    disabled_at     BIGINT
);

-- Not a projection: password hashes (argon2id) are kept out of the immutable log on
-- purpose, so that a changed or leaked hash can be erased.
CREATE TABLE IF NOT EXISTS user_credentials (
    user_id         UUID PRIMARY KEY,
    password_hash   TEXT NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS grants (
    grant_id        UUID PRIMARY KEY,
    client_id       TEXT NOT NULL,
    user_id         UUID,
    username        TEXT,
    scope           TEXT NOT NULL,
    origin          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    revoked_at      BIGINT,
    revoked_reason  TEXT
);
CREATE INDEX IF NOT EXISTS grants_client ON grants (client_id);
CREATE INDEX IF NOT EXISTS grants_user ON grants (user_id) WHERE user_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS access_tokens (
    token_sha256    BYTEA PRIMARY KEY CHECK (length(token_sha256) = 32),
    grant_id        UUID NOT NULL,
    client_id       TEXT NOT NULL,
    user_id         UUID,
    username        TEXT,
    scope           TEXT NOT NULL,
    issued_at       BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    revoked_at      BIGINT,
    revoked_reason  TEXT
);
CREATE INDEX IF NOT EXISTS access_tokens_grant ON access_tokens (grant_id);

CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_sha256    BYTEA PRIMARY KEY CHECK (length(token_sha256) = 32),
    grant_id        UUID NOT NULL,
    client_id       TEXT NOT NULL,
    issued_at       BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    -- current: redeemable; rotated: used once already (reuse revokes the grant)
    status          TEXT NOT NULL CHECK (status IN ('current', 'rotated', 'revoked'))
);
CREATE INDEX IF NOT EXISTS refresh_tokens_grant ON refresh_tokens (grant_id);

CREATE TABLE IF NOT EXISTS consents (
    user_id         UUID NOT NULL,
    client_id       TEXT NOT NULL,
    scope           TEXT NOT NULL,
    given_at        BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id)
);
