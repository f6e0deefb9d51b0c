-- The event log: the source of truth. Append-only; rows are never updated or deleted.
CREATE TABLE IF NOT EXISTS events (
    -- Drawn at insert, not at commit: never follow it alone (see xact).
    position        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The writing transaction. Readers follow (xact, position) and only read below the
    -- oldest transaction still running, so a slow commit is never skipped.
    xact            BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    event_id        UUID NOT NULL,
    stream_id       TEXT NOT NULL,
    stream_version  BIGINT NOT NULL CHECK (stream_version > 0),
    event_type      TEXT NOT NULL,
    schema_version  INTEGER NOT NULL CHECK (schema_version > 0),
    payload         JSONB NOT NULL,
    metadata        JSONB NOT NULL DEFAULT '{}'::jsonb,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    -- Optimistic concurrency: two writers at the same expected version collide here.
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
);

CREATE INDEX IF NOT EXISTS events_commit_order ON events (xact, position);

-- Where each catch-up reader (projector, relay, ...) has got to in the log.
CREATE TABLE IF NOT EXISTS checkpoints (
    name        TEXT PRIMARY KEY,
    xact        BIGINT NOT NULL,
    position    BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
