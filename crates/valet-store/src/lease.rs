//! Leases for readers that must run once across replicas (the NATS relay), in the
//! `leases` table, timed by PostgreSQL's clock (the one clock every replica shares).
//!
//! A lease expires unless renewed, and is free at once when the session its holder renews
//! it through ends (the process died); each acquisition bumps its epoch, and renewals and
//! checkpoint writes name the epoch, so a holder that was paused or cut off past its
//! expiry finds the lease gone instead of acting on it. The holder's operations run on a
//! connection of its own, so they never queue behind its reads; its caller bounds them
//! in time (a silent connection must not keep a leader in place).
//!
//! One-off exclusive jobs (a projections rebuild) use [`AdvisoryLock`] instead: held
//! exactly as long as their session, with nothing to renew.

use std::time::Duration;

use valet_app::outbox::{Acquisition, Leadership, Lease, LeaseError};
use valet_app::{LogCursor, StoreError};

use crate::pg::PgEventStore;

/// Takes the lease when it has expired, or when the session its holder renews it through
/// has ended (a killed process: no need to wait for the expiry).
const ACQUIRE: &str = "INSERT INTO leases AS l (name, holder, epoch, expires_at)
     VALUES ($1, $2, 1, clock_timestamp() + $3::float8 * interval '1 millisecond')
     ON CONFLICT (name) DO UPDATE
        SET holder = EXCLUDED.holder, epoch = l.epoch + 1, expires_at = EXCLUDED.expires_at,
            backend_pid = NULL, backend_start = NULL
        WHERE l.expires_at <= clock_timestamp()
           OR (l.backend_pid IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM pg_stat_activity a
                WHERE a.pid = l.backend_pid AND a.backend_start = l.backend_start))
     RETURNING epoch";

/// Names the holder's own session (run on it) as the one whose end frees the lease.
const BIND_SESSION: &str = "UPDATE leases
     SET backend_pid = pg_backend_pid(),
         backend_start = (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())
     WHERE name = $1 AND epoch = $2";

const RENEW: &str = "UPDATE leases
     SET expires_at = clock_timestamp() + $3::float8 * interval '1 millisecond'
     WHERE name = $1 AND epoch = $2";

/// The checkpoint moves only while the lease row still carries this holder's epoch (the
/// row lock orders the write after a concurrent takeover, which then fails it).
const SAVE: &str = "WITH held AS (SELECT 1 FROM leases WHERE name = $1 AND epoch = $4 FOR UPDATE)
     INSERT INTO checkpoints (name, xact, position) SELECT $1, $2, $3 FROM held
     ON CONFLICT (name) DO UPDATE SET xact = $2, position = $3, updated_at = now()
     RETURNING 1";

/// Expires the lease now, keeping the row (and so the epoch count).
const RELEASE: &str = "UPDATE leases SET expires_at = clock_timestamp()
     WHERE name = $1 AND epoch = $2";

pub struct PgLease {
    client: tokio_postgres::Client,
    name: String,
    epoch: i64,
    ttl_ms: f64,
    renew: tokio_postgres::Statement,
    save: tokio_postgres::Statement,
}

impl PgLease {
    pub fn epoch(&self) -> i64 {
        self.epoch
    }
}

fn db_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn pool_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Leadership for PgEventStore {
    type Lease = PgLease;

    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Acquisition<PgLease>, StoreError> {
        let ttl_ms = ttl.as_secs_f64() * 1000.0;
        let acquired = {
            let conn = self.pool().get().await.map_err(pool_error)?;
            conn.query_opt(ACQUIRE, &[&name, &holder, &ttl_ms])
                .await
                .map_err(db_error)?
        };
        let Some(row) = acquired else {
            return Ok(Acquisition::HeldBy(self.holder_of(name).await?));
        };
        let epoch: i64 = row.get(0);
        let lease = async {
            let client = self.endpoint().connect().await.map_err(db_error)?;
            // Checkpoints are advisory (a lost one means a republish that consumers
            // deduplicate), so they need not wait for the WAL flush token writes wait for;
            // a crash of PostgreSQL ends every holder's session anyway.
            client
                .batch_execute("SET synchronous_commit TO off")
                .await
                .map_err(db_error)?;
            let bound = client
                .execute(BIND_SESSION, &[&name, &epoch])
                .await
                .map_err(db_error)?;
            if bound == 0 {
                return Ok(None);
            }
            let renew = client.prepare(RENEW).await.map_err(db_error)?;
            let save = client.prepare(SAVE).await.map_err(db_error)?;
            Ok::<_, StoreError>(Some(PgLease {
                client,
                name: name.to_owned(),
                epoch,
                ttl_ms,
                renew,
                save,
            }))
        }
        .await;
        match lease {
            Ok(Some(lease)) => Ok(Acquisition::Acquired(lease)),
            // Taken by another holder before this one could bind its session.
            Ok(None) => Ok(Acquisition::HeldBy(self.holder_of(name).await?)),
            Err(error) => {
                // Do not leave the lease taken by a holder that cannot use it.
                if let Ok(conn) = self.pool().get().await {
                    let _ = conn.execute(RELEASE, &[&name, &epoch]).await;
                }
                Err(error)
            }
        }
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<LogCursor>, StoreError> {
        let conn = self.pool().get().await.map_err(pool_error)?;
        let row = conn
            .query_opt(
                "SELECT xact, position FROM checkpoints WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(db_error)?;
        Ok(row.map(|r| LogCursor {
            xact: r.get(0),
            position: r.get(1),
        }))
    }
}

impl Lease for PgLease {
    async fn renew(&self) -> Result<(), LeaseError> {
        let renewed = self
            .client
            .execute(&self.renew, &[&self.name, &self.epoch, &self.ttl_ms])
            .await
            .map_err(db_error)?;
        if renewed == 0 {
            return Err(LeaseError::Lost);
        }
        Ok(())
    }

    async fn save_checkpoint(&self, cursor: LogCursor) -> Result<(), LeaseError> {
        let saved = self
            .client
            .query_opt(
                &self.save,
                &[&self.name, &cursor.xact, &cursor.position, &self.epoch],
            )
            .await
            .map_err(db_error)?;
        saved.map(|_| ()).ok_or(LeaseError::Lost)
    }

    async fn release(&self) -> Result<(), StoreError> {
        self.client
            .execute(RELEASE, &[&self.name, &self.epoch])
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

/// An exclusive session lock (a PostgreSQL advisory lock on a connection of its own),
/// released when dropped or when the session ends.
pub struct AdvisoryLock {
    _client: tokio_postgres::Client,
}

/// A stable 64-bit key for the lock from its name (FNV-1a; any fixed hash works).
fn lock_key(name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"valet-lease:".iter().chain(name.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

impl PgEventStore {
    async fn holder_of(&self, lease: &str) -> Result<String, StoreError> {
        let conn = self.pool().get().await.map_err(pool_error)?;
        Ok(conn
            .query_opt("SELECT holder FROM leases WHERE name = $1", &[&lease])
            .await
            .map_err(db_error)?
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_default())
    }

    /// The lock `name` if no other session holds it.
    pub async fn try_lock(&self, name: &str) -> Result<Option<AdvisoryLock>, StoreError> {
        let client = self.endpoint().connect().await.map_err(db_error)?;
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key(name)])
            .await
            .map_err(db_error)?;
        Ok(row
            .get::<_, bool>(0)
            .then_some(AdvisoryLock { _client: client }))
    }
}
