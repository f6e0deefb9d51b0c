//! The event log on PostgreSQL (tokio-postgres) and in memory, with one contract.
//!
//! See `valet_app::EventStore` for the contract and ARCHITECTURE.md for why readers
//! follow a (transaction id, position) cursor instead of the position alone.

mod endpoint;
mod lease;
mod migrate;
mod pg;

pub use endpoint::{PgEndpoint, PgRoots, PgSslMode, PgUrlError};
pub use lease::{AdvisoryLock, PgLease};
pub use migrate::{migrate, MigrateError, MigrationReport, MIGRATIONS};
pub use pg::{
    append_on, describe, execute_writes, new_pool, recorded_row, with_options, InlineProjection,
    Params, PgAttempts, PgEventStore, PgStoreConfig, RowWrite, SnapshotRead, SnapshotScope,
    WriteSql, EVENT_COLUMNS,
};
/// The in-memory store lives beside the ports it implements (valet-app), so that the
/// use cases' unit tests can run on it; it is reachable here too.
pub use valet_app::memory::MemoryEventStore;
