//! Keys shared by every replica (the session-cookie key, sealed signing keys), kept
//! outside the log.

use valet_app::keys::KeyVault;
use valet_app::StoreError;
use valet_domain::signing_key::KeyId;

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

impl KeyVault for PgEventStore {
    async fn put_sealed(&self, key_id: KeyId, sealed: Vec<u8>) -> Result<(), StoreError> {
        let client = self.inner.pool.get().await.map_err(unavailable)?;
        client
            .execute(
                "INSERT INTO signing_key_material (key_id, sealed) VALUES ($1, $2)",
                &[&key_id.as_uuid(), &sealed],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn sealed(&self, key_id: KeyId) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.inner.pool.get().await.map_err(unavailable)?;
        let row = client
            .query_opt(
                "SELECT sealed FROM signing_key_material WHERE key_id = $1",
                &[&key_id.as_uuid()],
            )
            .await
            .map_err(db_error)?;
        Ok(row.map(|r| r.get(0)))
    }
}
