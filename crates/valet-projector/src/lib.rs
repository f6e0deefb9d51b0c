//! Read models: projections of the event log into the tables the endpoints query.
//!
//! `ReadModelProjection` is applied inline, inside the transaction of every append, so
//! the read models never lag the log the server wrote (read-your-writes). The same
//! function is what a rebuild replays. `PgReadModels` answers the use cases' queries.

pub mod audit;
mod project;
mod queries;
mod rebuild;

pub use project::{apply_batch, fold, EarlierRows, Folded, ReadModelProjection};
pub use queries::PgReadModels;
pub use rebuild::{
    rebuild, RebuildMode, RebuildReport, TableDiff, READ_MODEL_TABLES, SCRATCH_SCHEMA,
};

use tokio_postgres::error::SqlState;
use valet_app::StoreError;

fn db_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION => {
            StoreError::Constraint(match db.constraint() {
                Some("users_username_key") => "username".to_owned(),
                Some(other) => other.to_owned(),
                None => "unique value".to_owned(),
            })
        }
        _ => StoreError::Unavailable(valet_store::describe(&e)),
    }
}
