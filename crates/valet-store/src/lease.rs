//! Leader election for catch-up readers with a PostgreSQL advisory lock.
//!
//! The lock lives on a dedicated connection (not a pooled one): it is held exactly as
//! long as that session, so a crashed or partitioned leader loses it and a standby takes
//! over. Checkpoints are written on the same session, so a leader whose session is gone
//! cannot move them.

use valet_app::outbox::{Leadership, Lease};
use valet_app::{LogCursor, StoreError};

use crate::pg::PgEventStore;

pub struct PgLease {
    client: tokio_postgres::Client,
    name: String,
    /// Prepared on first use: the relay saves a checkpoint often, and an unprepared
    /// statement costs a parse and a round trip.
    save: Option<tokio_postgres::Statement>,
}

/// A stable 64-bit key for the lock from the reader's name (FNV-1a; any fixed hash works).
fn lock_key(name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"valet-lease:".iter().chain(name.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// `slot`'s statement, prepared on first use.
async fn prepared<'a>(
    client: &tokio_postgres::Client,
    slot: &'a mut Option<tokio_postgres::Statement>,
    sql: &str,
) -> Result<&'a tokio_postgres::Statement, StoreError> {
    if slot.is_none() {
        *slot = Some(client.prepare(sql).await.map_err(db_error)?);
    }
    Ok(slot.as_ref().expect("prepared just now"))
}

fn db_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Leadership for PgEventStore {
    type Lease = PgLease;

    async fn try_acquire(&self, name: &str) -> Result<Option<PgLease>, StoreError> {
        let client = crate::connect(self.config()).await.map_err(db_error)?;
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key(name)])
            .await
            .map_err(db_error)?;
        if !row.get::<_, bool>(0) {
            return Ok(None);
        }
        // Checkpoints are advisory (a lost one means a republish that consumers
        // deduplicate), so they need not wait for the WAL flush that token writes wait for.
        client
            .batch_execute("SET synchronous_commit TO off")
            .await
            .map_err(db_error)?;
        Ok(Some(PgLease {
            client,
            name: name.to_owned(),
            save: None,
        }))
    }
}

impl Lease for PgLease {
    async fn checkpoint(&mut self) -> Result<Option<LogCursor>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT xact, position FROM checkpoints WHERE name = $1",
                &[&self.name],
            )
            .await
            .map_err(db_error)?;
        Ok(row.map(|r| LogCursor {
            xact: r.get(0),
            position: r.get(1),
        }))
    }

    async fn save_checkpoint(&mut self, cursor: LogCursor) -> Result<(), StoreError> {
        let statement = prepared(
            &self.client,
            &mut self.save,
            "INSERT INTO checkpoints (name, xact, position) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET xact = $2, position = $3, updated_at = now()",
        )
        .await?;
        self.client
            .execute(statement, &[&self.name, &cursor.xact, &cursor.position])
            .await
            .map_err(db_error)?;
        Ok(())
    }
}
