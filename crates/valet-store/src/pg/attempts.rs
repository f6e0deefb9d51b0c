//! Failed-authentication counts in PostgreSQL, so that every replica applies the same
//! limits (`valet_app::attempts`). Keys are stored as SHA-256 digests: no address or
//! username is kept in clear.

use valet_app::attempts::{AttemptKey, Attempts, AttemptsFuture, Failures};
use valet_domain::{Timestamp, TokenHash};

use super::errors::{db_error, unavailable};
use super::PgEventStore;

/// Counts older than this are pruned, a few at each new failure.
const KEEP_MS: i64 = 24 * 3600 * 1000;

/// One more failure, and a few stale rows pruned (an attacker's many addresses must
/// not grow the table without bound).
const RECORD_SQL: &str = "
WITH pruned AS (
    DELETE FROM auth_failures
    WHERE key IN (SELECT key FROM auth_failures
                  WHERE last_failure < $4 AND key <> $1
                  ORDER BY last_failure LIMIT 16)
)
INSERT INTO auth_failures (key, failures, last_failure) VALUES ($1, 1, $2)
ON CONFLICT (key) DO UPDATE SET
    failures = CASE WHEN auth_failures.last_failure < $2 - $3 THEN 1
                    ELSE auth_failures.failures + 1 END,
    last_failure = $2";

/// The failure counts of a store's database.
#[derive(Clone)]
pub struct PgAttempts {
    store: PgEventStore,
}

impl PgAttempts {
    pub fn new(store: PgEventStore) -> Self {
        PgAttempts { store }
    }
}

fn digest(key: &AttemptKey) -> Vec<u8> {
    TokenHash::of(&key.storage_key()).as_bytes().to_vec()
}

impl Attempts for PgAttempts {
    fn failures<'a>(&'a self, key: &'a AttemptKey) -> AttemptsFuture<'a, Option<Failures>> {
        Box::pin(async move {
            let client = self.store.pool().get().await.map_err(unavailable)?;
            let statement = client
                .prepare_cached("SELECT failures, last_failure FROM auth_failures WHERE key = $1")
                .await
                .map_err(db_error)?;
            let row = client
                .query_opt(&statement, &[&digest(key)])
                .await
                .map_err(db_error)?;
            Ok(row.map(|r| Failures {
                count: u32::try_from(r.get::<_, i32>(0)).unwrap_or(0),
                last: Timestamp::from_unix_millis(r.get(1)),
            }))
        })
    }

    fn record_failure<'a>(
        &'a self,
        key: &'a AttemptKey,
        now: Timestamp,
        forget_after_secs: u32,
    ) -> AttemptsFuture<'a, ()> {
        Box::pin(async move {
            let client = self.store.pool().get().await.map_err(unavailable)?;
            let statement = client.prepare_cached(RECORD_SQL).await.map_err(db_error)?;
            let now = now.as_unix_millis();
            let forget_ms = i64::from(forget_after_secs) * 1000;
            client
                .execute(
                    &statement,
                    &[&digest(key), &now, &forget_ms, &(now - KEEP_MS)],
                )
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }

    fn clear<'a>(&'a self, key: &'a AttemptKey) -> AttemptsFuture<'a, ()> {
        Box::pin(async move {
            let client = self.store.pool().get().await.map_err(unavailable)?;
            client
                .execute("DELETE FROM auth_failures WHERE key = $1", &[&digest(key)])
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }
}
