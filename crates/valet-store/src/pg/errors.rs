//! PostgreSQL's errors as the store's: by SQLSTATE and constraint name, never by the
//! wording of a message.

use tokio_postgres::error::{DbError, SqlState};
use valet_app::StoreError;

/// Raised by `valet_version_conflict` (migration 4): HINT names the stream, DETAIL the
/// version it is at.
const VERSION_CONFLICT: &str = "VA001";
const EVENT_ID_KEY: &str = "events_event_id_key";
const STREAM_VERSION_KEY: &str = "events_stream_version_key";

pub(super) fn unavailable(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        // Say why a connection could not be made (the server's message, e.g. that the
        // database does not exist), not just that the pool could not make one.
        deadpool_postgres::PoolError::Backend(e) => {
            StoreError::Unavailable(format!("cannot connect: {}", describe(&e)))
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

pub(super) fn db_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(describe(&e))
}

/// tokio-postgres prints a server error as just "db error": name the server's message.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(tls) = crate::endpoint::tls_failure(e) {
        return tls;
    }
    match e.as_db_error() {
        Some(db) => format!("{e}: {db}"),
        None => e.to_string(),
    }
}

pub(super) fn malformed(e: tokio_postgres::Error) -> StoreError {
    StoreError::Malformed(e.to_string())
}

/// What a failed append statement means for its writes.
pub(super) enum AppendFailure {
    /// `valet_version_conflict` named the stream and the version it is at.
    VersionConflict {
        stream: String,
        actual: u64,
    },
    /// Another append wrote a version first; which stream is not in the error.
    ConcurrentWriter,
    DuplicateEventId,
    /// A read model refused the change (e.g. a username taken concurrently).
    Constraint(String),
    Other,
}

pub(super) fn classify(db: &DbError) -> AppendFailure {
    if db.code().code() == VERSION_CONFLICT {
        if let (Some(stream), Some(actual)) = (db.hint(), db.detail()) {
            if let Ok(actual) = actual.parse() {
                return AppendFailure::VersionConflict {
                    stream: stream.to_owned(),
                    actual,
                };
            }
        }
        return AppendFailure::Other;
    }
    if *db.code() == SqlState::UNIQUE_VIOLATION {
        return match db.constraint() {
            Some(EVENT_ID_KEY) => AppendFailure::DuplicateEventId,
            Some(STREAM_VERSION_KEY) => AppendFailure::ConcurrentWriter,
            Some(other) => AppendFailure::Constraint(other.to_owned()),
            None => AppendFailure::Constraint("unique value".to_owned()),
        };
    }
    AppendFailure::Other
}
