-- The PostgreSQL session through which a lease's holder renews it (pid and start time,
-- which together never repeat). When that session has ended (its process died and the
-- kernel closed the connection), a standby may take the lease without waiting for it to
-- expire; a holder that is alive but stuck keeps its session, and is replaced at expiry.
ALTER TABLE leases
    ADD COLUMN IF NOT EXISTS backend_pid   INT,
    ADD COLUMN IF NOT EXISTS backend_start TIMESTAMPTZ;
