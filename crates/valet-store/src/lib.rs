//! The event log on PostgreSQL (tokio-postgres) and in memory, with one contract.
//!
//! See `valet_app::EventStore` for the contract and ARCHITECTURE.md for why readers
//! follow a (transaction id, position) cursor instead of the position alone.

mod lease;
mod memory;
mod migrate;
mod pg;

pub use lease::PgLease;
pub use memory::MemoryEventStore;
pub use migrate::{migrate, MigrateError, MigrationReport, MIGRATIONS};
pub use pg::{
    append_on, decode_row, describe, execute_planned, new_pool, with_options, InlineProjection,
    PgEventStore, PgStoreConfig, Planned, SnapshotRead, SnapshotScope, EVENT_COLUMNS,
};

/// Connects to PostgreSQL without TLS: the database is expected on a trusted network
/// (loopback or a private link); put TLS termination in front of it otherwise.
pub(crate) async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "postgres connection closed");
        }
    });
    Ok(client)
}
