-- Leases of the readers that must run once across replicas (the NATS relay). A lease
-- expires unless its holder renews it (times are PostgreSQL's clock, the one clock all
-- replicas share); each acquisition bumps the epoch, and a holder's writes are checked
-- against its epoch, so a holder that was paused or cut off cannot act on a lease
-- someone else has taken since.
CREATE TABLE IF NOT EXISTS leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    epoch       BIGINT NOT NULL CHECK (epoch > 0),
    expires_at  TIMESTAMPTZ NOT NULL
);
