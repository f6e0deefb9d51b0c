-- Private signing keys, sealed (AES-256-GCM) under the key-encryption key the operator
-- provides or Valet created on first start. Kept apart from the event log, which records
-- only each key's public half and lifecycle. A row may outlive its key's publication (or
-- never be named by an event, when two replicas generated a first key at once).
CREATE TABLE IF NOT EXISTS signing_key_material (
    key_id      UUID PRIMARY KEY,
    sealed      BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
