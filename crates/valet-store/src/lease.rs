//! Leases for readers that must run once across replicas (the NATS relay), in the
//! `leases` table, timed by PostgreSQL's clock (the one clock every replica shares).
//!
//! A lease expires unless renewed; each acquisition bumps its epoch, and renewals and
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

const ACQUIRE: &str = "INSERT INTO leases AS l (name, holder, epoch, expires_at)
     VALUES ($1, $2, 1, clock_timestamp() + $3::float8 * interval '1 millisecond')
     ON CONFLICT (name) DO UPDATE
        SET holder = EXCLUDED.holder, epoch = l.epoch + 1, expires_at = EXCLUDED.expires_at
        WHERE l.expires_at <= clock_timestamp()
     RETURNING epoch";

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
        let epoch: i64 = {
            let conn = self.pool().get().await.map_err(pool_error)?;
            let row = conn
                .query_opt(ACQUIRE, &[&name, &holder, &ttl_ms])
                .await
                .map_err(db_error)?;
            match row {
                Some(row) => row.get(0),
                None => {
                    let holder = conn
                        .query_opt("SELECT holder FROM leases WHERE name = $1", &[&name])
                        .await
                        .map_err(db_error)?
                        .map(|r| r.get::<_, String>(0))
                        .unwrap_or_default();
                    return Ok(Acquisition::HeldBy(holder));
                }
            }
        };
        let lease = async {
            let client = crate::connect(self.config()).await.map_err(db_error)?;
            // Checkpoints are advisory (a lost one means a republish that consumers
            // deduplicate), so they need not wait for the WAL flush token writes wait for;
            // a crash of PostgreSQL ends every holder's session anyway.
            client
                .batch_execute("SET synchronous_commit TO off")
                .await
                .map_err(db_error)?;
            let renew = client.prepare(RENEW).await.map_err(db_error)?;
            let save = client.prepare(SAVE).await.map_err(db_error)?;
            Ok::<_, StoreError>(PgLease {
                client,
                name: name.to_owned(),
                epoch,
                ttl_ms,
                renew,
                save,
            })
        }
        .await;
        match lease {
            Ok(lease) => Ok(Acquisition::Acquired(lease)),
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
    /// The lock `name` if no other session holds it.
    pub async fn try_lock(&self, name: &str) -> Result<Option<AdvisoryLock>, StoreError> {
        let client = crate::connect(self.config()).await.map_err(db_error)?;
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key(name)])
            .await
            .map_err(db_error)?;
        Ok(row
            .get::<_, bool>(0)
            .then_some(AdvisoryLock { _client: client }))
    }
}
