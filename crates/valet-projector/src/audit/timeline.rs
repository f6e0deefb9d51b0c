//! `valet audit log`: the events matching a filter, in log order.

use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;
use valet_app::{LogCursor, RecordedEvent, StoreError};
use valet_store::{recorded_row, EVENT_COLUMNS};

use crate::db_error;

pub use valet_app::admin::AuditFilter as LogFilter;

/// The events matching a filter, read a page at a time from a cursor.
pub struct Timeline {
    client: deadpool_postgres::Object,
    statement: tokio_postgres::Statement,
    filter: LogFilter,
    /// The user named by the filter; `None` with a username: no such user, no events.
    user_id: Option<uuid::Uuid>,
    nobody: bool,
}

impl Timeline {
    pub async fn open(pool: &Pool, filter: &LogFilter) -> Result<Self, StoreError> {
        let client = pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let user_id: Option<uuid::Uuid> = match &filter.username {
            Some(name) => client
                .query_opt("SELECT user_id FROM users WHERE username = $1", &[name])
                .await
                .map_err(db_error)?
                .map(|row| row.get(0)),
            None => None,
        };
        let statement = client
            .prepare(&format!("SELECT {EVENT_COLUMNS} {FROM_WHERE}"))
            .await
            .map_err(db_error)?;
        Ok(Timeline {
            client,
            statement,
            nobody: filter.username.is_some() && user_id.is_none(),
            filter: filter.clone(),
            user_id,
        })
    }

    /// At most `limit` events after `after`, in log order.
    pub async fn page(
        &self,
        after: LogCursor,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if self.nobody {
            return Ok(Vec::new());
        }
        let since = self.filter.since_micros.map(micros_to_system_time);
        let until = self.filter.until_micros.map(micros_to_system_time);
        let params: [&(dyn ToSql + Sync); 8] = [
            &after.xact,
            &after.position,
            &self.filter.stream,
            &since,
            &until,
            &self.filter.client_id,
            &self.user_id,
            &limit,
        ];
        let rows = self
            .client
            .query(&self.statement, &params)
            .await
            .map_err(db_error)?;
        rows.iter().map(recorded_row).collect()
    }
}

// A client's or user's events live in their own stream, in their grants' streams,
// in codes issued to them and in consent streams (whose ids embed both); a user's
// also in their sessions' streams, and both in logout deliveries. The
// filters read the stored payloads: this is the store's edge, where events are JSON.
const FROM_WHERE: &str = "         FROM events e
         WHERE (e.xact, e.position) > ($1, $2)
           AND ($3::text IS NULL OR e.stream_id = $3)
           AND ($4::timestamptz IS NULL OR e.recorded_at >= $4)
           AND ($5::timestamptz IS NULL OR e.recorded_at <= $5)
           AND ($6::text IS NULL
                OR e.stream_id = 'client-' || $6
                OR e.payload->>'client_id' = $6
                OR e.payload->'delivery'->>'client_id' = $6
                OR e.stream_id LIKE 'consent-%-' || $6
                OR e.stream_id IN (SELECT 'grant-' || grant_id FROM grants WHERE client_id = $6))
           AND ($7::uuid IS NULL
                OR e.stream_id = 'user-' || $7::text
                OR e.stream_id LIKE 'consent-' || $7::text || '-%'
                OR e.stream_id IN (SELECT c.stream_id FROM events c
                                   WHERE c.stream_id LIKE 'code-%' AND c.payload->>'user_id' = $7::text)
                OR e.stream_id IN (SELECT 'grant-' || grant_id FROM grants WHERE user_id = $7)
                OR e.stream_id IN (SELECT 'session-' || session_id FROM sessions WHERE user_id = $7)
                OR e.payload->'delivery'->>'user_id' = $7::text)
         ORDER BY e.xact, e.position
         LIMIT $8";

/// Streams the events matching `filter` in log order, `page` at a time, to `sink`.
pub async fn log(
    pool: &Pool,
    filter: &LogFilter,
    page: i64,
    sink: &mut (dyn FnMut(&RecordedEvent) -> std::io::Result<()> + Send),
) -> Result<u64, StoreError> {
    let timeline = Timeline::open(pool, filter).await?;
    let mut cursor = LogCursor::START;
    let mut count = 0u64;
    loop {
        let events = timeline.page(cursor, page).await?;
        for event in &events {
            sink(event).map_err(|e| StoreError::Unavailable(format!("output: {e}")))?;
            count += 1;
            cursor = event.cursor();
        }
        if (events.len() as i64) < page {
            return Ok(count);
        }
    }
}

fn micros_to_system_time(micros: i64) -> std::time::SystemTime {
    if micros >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros as u64)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_micros(micros.unsigned_abs())
    }
}
