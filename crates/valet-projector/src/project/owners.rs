//! The owners of grants created before a batch, read from the grants table: a token row
//! carries its grant's client and user. Owners never change, so this read may happen
//! outside the transaction that writes the batch.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use uuid::Uuid;
use valet_app::StoreError;

use super::batch::{Batch, Owner};
use crate::db_error;

pub(super) async fn fill_owners<C: GenericClient + Sync>(
    batch: &mut Batch,
    db: &C,
) -> Result<(), StoreError> {
    let missing = batch.grants_without_owner();
    if missing.is_empty() {
        return Ok(());
    }
    let statement = db
        .prepare_cached(
            "SELECT grant_id, client_id, user_id, username FROM grants WHERE grant_id = ANY($1)",
        )
        .await
        .map_err(db_error)?;
    let rows = db.query(&statement, &[&missing]).await.map_err(db_error)?;
    let owners: HashMap<Uuid, Owner> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                Owner {
                    client_id: r.get(1),
                    user_id: r.get(2),
                    username: r.get(3),
                },
            )
        })
        .collect();
    batch
        .set_owners(&owners)
        .map_err(|grant_id| StoreError::Malformed(format!("tokens of unknown grant {grant_id}")))
}
