//! Keys shared by every replica (the session-cookie key), kept outside the log.

use valet_app::StoreError;

use super::errors::{db_error, unavailable};
use super::PgEventStore;

impl PgEventStore {
    /// A 32-byte key shared by all replicas: the stored one, or `candidate` if this is
    /// the first process to ask (the caller draws it from the OS CSPRNG).
    pub async fn shared_secret(
        &self,
        name: &str,
        candidate: [u8; 32],
    ) -> Result<[u8; 32], StoreError> {
        let client = self.inner.pool.get().await.map_err(unavailable)?;
        client
            .execute(
                "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &candidate.as_slice()],
            )
            .await
            .map_err(db_error)?;
        let row = client
            .query_one("SELECT value FROM server_secrets WHERE name = $1", &[&name])
            .await
            .map_err(db_error)?;
        let value: &[u8] = row.get(0);
        value
            .try_into()
            .map_err(|_| StoreError::Malformed(format!("server secret {name} is not 32 bytes")))
    }
}
