-- Login sessions (stream `session-<sid>`): the account page and `valet user sessions`
-- list a user's sessions from here; whether one stands is decided from its stream.
CREATE TABLE IF NOT EXISTS sessions (
    session_id      UUID PRIMARY KEY,
    user_id         UUID NOT NULL,
    started_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    last_used_at    BIGINT NOT NULL,
    -- The clients the session signed in to, in order.
    clients         TEXT[] NOT NULL DEFAULT '{}',
    ended_at        BIGINT,
    end_reason      TEXT
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_id, started_at DESC);
