//! The ways an append reaches the log, from the lightest to the largest:
//! - one stream, no read models: one autocommit statement ([`append_on`]);
//! - a few streams with read models, alone: ONE statement composed of a part per
//!   stream and per read-model write ([`append_composed`]), no BEGIN/COMMIT;
//! - concurrent appends: group commit (`group`), one statement for many appends;
//! - many streams (bulk seeding): a transaction with every statement pipelined
//!   ([`append_in_transaction`]).
//!
//! Every path checks each stream's expected version in the statement that inserts, and
//! the unique (stream_id, stream_version) index makes concurrent writers collide, so no
//! lock is held across commit.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::{Json, ToSql};
use uuid::Uuid;
use valet_app::{
    AppendError, AppendOutcome, EventMetadata, ExpectedVersion, NewEvent, RecordedEvent,
    StoreError, StreamVersion, StreamWrite,
};
use valet_domain::StreamId;

use super::errors::{classify, db_error, AppendFailure};
use super::projection::{embed, execute_writes, plan_writes, InlineProjection};
use super::read::current_version;
use super::rows::{micros, EncodedEvent, JsonText};

const APPEND_SQL: &str = "
WITH cur AS (
    SELECT coalesce(max(stream_version), 0) AS v FROM events WHERE stream_id = $1
)
INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT e.event_id, $1, cur.v + e.ord, e.event_type, e.schema_version, e.payload, e.metadata
FROM cur,
     unnest($3::uuid[], $4::text[], $5::int4[], $6::jsonb[], $7::jsonb[])
         WITH ORDINALITY AS e(event_id, event_type, schema_version, payload, metadata, ord)
WHERE cur.v = $2
ORDER BY e.ord
RETURNING position, stream_version, xact, recorded_at";

/// APPEND_SQL for exactly one event.
const APPEND_ONE_SQL: &str = "
INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT $3, $1, cur.v + 1, $4, $5, $6, $7
FROM (SELECT coalesce(max(stream_version), 0) AS v FROM events WHERE stream_id = $1) cur
WHERE cur.v = $2
RETURNING position, stream_version, xact, recorded_at";

/// The parameters of one stream's append, column by column (each event serialized once,
/// into its payload's JSON text).
pub(super) struct AppendInput<'e> {
    pub stream: String,
    pub expected: i64,
    pub ids: Vec<Uuid>,
    pub types: Vec<&'static str>,
    pub versions: Vec<i32>,
    pub payloads: Vec<JsonText>,
    pub metadata: Vec<Json<&'e EventMetadata>>,
}

impl<'e> AppendInput<'e> {
    pub fn new(write: &'e StreamWrite) -> Result<Self, AppendError> {
        Self::of(&write.stream, write.expected, &write.events)
    }

    pub fn of(
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &'e [NewEvent],
    ) -> Result<Self, AppendError> {
        if let Some(foreign) = events.iter().find(|e| !e.event.fits(stream)) {
            return Err(StoreError::ForeignEvent {
                stream: stream.clone(),
                event_type: foreign.event.event_type(),
            }
            .into());
        }
        let mut input = AppendInput {
            stream: stream.to_string(),
            expected: i64::try_from(expected.as_version().0)
                .map_err(|_| StoreError::Malformed("expected version out of range".into()))?,
            ids: Vec::with_capacity(events.len()),
            types: Vec::with_capacity(events.len()),
            versions: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metadata: Vec::with_capacity(events.len()),
        };
        for event in events {
            let encoded = EncodedEvent::of(event);
            input.ids.push(encoded.event_id);
            input.types.push(encoded.event_type);
            input.versions.push(encoded.schema_version);
            input.payloads.push(encoded.payload);
            input.metadata.push(encoded.metadata);
        }
        Ok(input)
    }

    /// `$1`…`$7` of [`APPEND_SQL`].
    pub fn params(&self) -> [&(dyn ToSql + Sync); 7] {
        [
            &self.stream,
            &self.expected,
            &self.ids,
            &self.types,
            &self.versions,
            &self.payloads,
            &self.metadata,
        ]
    }

    /// `$1`…`$7` of [`APPEND_ONE_SQL`] (the input has exactly one event).
    fn one_params(&self) -> [&(dyn ToSql + Sync); 7] {
        [
            &self.stream,
            &self.expected,
            &self.ids[0],
            &self.types[0],
            &self.versions[0],
            &self.payloads[0],
            &self.metadata[0],
        ]
    }
}

/// Appends inside the caller's connection or transaction, so read-model rows can be
/// written atomically with the events. The caller announces the commit.
pub async fn append_on<C: GenericClient + Sync>(
    client: &C,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<AppendOutcome, AppendError> {
    let input = AppendInput::of(stream, expected, events)?;
    let rows = if events.len() == 1 {
        // The common case (one event, e.g. a token issued) without array parameters.
        let statement = client
            .prepare_cached(APPEND_ONE_SQL)
            .await
            .map_err(db_error)?;
        client.query(&statement, &input.one_params()).await
    } else {
        let statement = client.prepare_cached(APPEND_SQL).await.map_err(db_error)?;
        client.query(&statement, &input.params()).await
    };
    let conflict = |actual| AppendError::Conflict {
        stream: stream.clone(),
        expected,
        actual,
    };
    match rows {
        Ok(rows) if rows.len() == events.len() => {
            let landed = rows
                .iter()
                .map(|r| (r.get(1), r.get(0), r.get(2), micros(r.get(3))))
                .collect();
            Ok(recorded(
                stream,
                expected.as_version(),
                events.iter().cloned(),
                landed,
            ))
        }
        // No rows: the expectation was wrong. Outside an aborted transaction we can ask
        // what the stream is at.
        Ok(_) => Err(conflict(current_version(client, stream).await?)),
        Err(e) => Err(match e.as_db_error().map(classify) {
            // A unique violation on (stream, version): a concurrent writer got there first.
            Some(AppendFailure::ConcurrentWriter) => {
                conflict(StreamVersion(expected.as_version().0 + 1))
            }
            Some(AppendFailure::DuplicateEventId) => AppendError::DuplicateEventId(
                events.first().map(|e| e.event_id).unwrap_or_default(),
            ),
            Some(AppendFailure::Constraint(name)) => StoreError::Constraint(name).into(),
            _ => db_error(e).into(),
        }),
    }
}

/// The transactional append as ONE statement: a data-modifying part per stream (an
/// empty write only checks the version) and one per read-model write. A wrong
/// expected version raises `valet_version_conflict`, so nothing of it commits; no
/// BEGIN/COMMIT round trips, one plan per shape of append (cached).
pub(super) async fn append_composed(
    client: &deadpool_postgres::Client,
    projection: Option<&dyn InlineProjection>,
    writes: &[StreamWrite],
) -> Result<Vec<AppendOutcome>, AppendError> {
    let planned = plan_writes(client, projection, writes).await?;
    let inputs: Vec<AppendInput> = writes
        .iter()
        .map(AppendInput::new)
        .collect::<Result<_, _>>()?;
    let mut sql = String::from("WITH ");
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    let mut outputs = Vec::new();
    for (i, (write, input)) in writes.iter().zip(&inputs).enumerate() {
        let n = params.len();
        let (s, x) = (n + 1, n + 2);
        if write.events.is_empty() {
            sql.push_str(&format!(
                "w{i} AS (SELECT CASE WHEN v = ${x} THEN v ELSE valet_version_conflict(${s}, ${x}, v) END AS v
                 FROM (SELECT coalesce(max(stream_version), 0) AS v FROM events WHERE stream_id = ${s}) cur), "
            ));
            params.push(&input.stream);
            params.push(&input.expected);
            outputs.push(format!(
                "SELECT {i}, v, 0::bigint, 0::bigint, NULL::timestamptz FROM w{i}"
            ));
            continue;
        }
        if write.events.len() == 1 {
            // One event (the common case): plain parameters, no unnest.
            let (id, t, v, p, m) = (n + 3, n + 4, n + 5, n + 6, n + 7);
            sql.push_str(&format!(
                "w{i} AS (INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
                 SELECT ${id}, ${s},
                        CASE WHEN cur.v = ${x} THEN cur.v + 1 ELSE valet_version_conflict(${s}, ${x}, cur.v) END,
                        ${t}, ${v}, ${p}, ${m}
                 FROM (SELECT coalesce(max(stream_version), 0) AS v FROM events WHERE stream_id = ${s}) cur
                 RETURNING position, stream_version, xact, recorded_at), "
            ));
            params.extend(input.one_params());
        } else {
            let (a, b, c, d, f) = (n + 3, n + 4, n + 5, n + 6, n + 7);
            sql.push_str(&format!(
                "w{i} AS (INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
                 SELECT e.event_id, ${s},
                        CASE WHEN cur.v = ${x} THEN cur.v + e.ord ELSE valet_version_conflict(${s}, ${x}, cur.v) END,
                        e.event_type, e.schema_version, e.payload, e.metadata
                 FROM (SELECT coalesce(max(stream_version), 0) AS v FROM events WHERE stream_id = ${s}) cur,
                      unnest(${a}::uuid[], ${b}::text[], ${c}::int4[], ${d}::jsonb[], ${f}::jsonb[])
                          WITH ORDINALITY AS e(event_id, event_type, schema_version, payload, metadata, ord)
                 ORDER BY e.ord
                 RETURNING position, stream_version, xact, recorded_at), "
            ));
            params.extend(input.params());
        }
        outputs.push(format!(
            "SELECT {i}, position, stream_version, xact, recorded_at FROM w{i}"
        ));
    }
    for part in embed(&planned, &mut params) {
        sql.push_str(&part);
        sql.push_str(", ");
    }
    sql.truncate(sql.len() - 2);
    sql.push(' ');
    sql.push_str(&outputs.join(" UNION ALL "));
    let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
    let rows = match client.query(&statement, &params).await {
        Ok(rows) => rows,
        Err(e) => return Err(append_failure(client, e, writes).await),
    };
    let mut outcomes = Vec::with_capacity(writes.len());
    for (i, write) in writes.iter().enumerate() {
        if write.events.is_empty() {
            outcomes.push(AppendOutcome {
                version: write.expected.as_version(),
                recorded: Vec::new(),
            });
            continue;
        }
        let landed: Vec<(i64, i64, i64, i64)> = rows
            .iter()
            .filter(|r| r.get::<_, i32>(0) as usize == i)
            .map(|r| (r.get(2), r.get(1), r.get(3), micros(r.get(4))))
            .collect();
        if landed.len() != write.events.len() {
            return Err(StoreError::Malformed("an append returned the wrong rows".into()).into());
        }
        outcomes.push(recorded(
            &write.stream,
            write.expected.as_version(),
            write.events.iter().cloned(),
            landed,
        ));
    }
    Ok(outcomes)
}

/// Large multi-stream appends (bulk seeding, imports): a transaction with every insert
/// and read-model write pipelined. (A statement with thousands of parts would spend
/// longer being planned than executed.)
pub(super) async fn append_in_transaction(
    client: &mut deadpool_postgres::Client,
    projection: Option<&dyn InlineProjection>,
    writes: &[StreamWrite],
) -> Result<Vec<AppendOutcome>, AppendError> {
    let planned = plan_writes(client, projection, writes).await?;
    let tx = client.transaction().await.map_err(db_error)?;
    let appends = writes.iter().map(|write| {
        let tx = &tx;
        async move {
            if write.events.is_empty() {
                check_version(tx, write).await
            } else {
                append_on(tx, &write.stream, write.expected, &write.events).await
            }
        }
    });
    let outcomes = futures_util::future::try_join_all(appends).await?;
    execute_writes(&tx, &planned).await?;
    tx.commit().await.map_err(db_error)?;
    Ok(outcomes)
}

/// The appended events as recorded, from the (stream version, position, xact,
/// recorded-at micros) the insert returned. Takes the events by value: the group-commit
/// path moves its callers' events into their outcomes instead of copying them.
pub(super) fn recorded(
    stream: &StreamId,
    expected_version: StreamVersion,
    events: impl ExactSizeIterator<Item = NewEvent>,
    mut landed: Vec<(i64, i64, i64, i64)>,
) -> AppendOutcome {
    let version = StreamVersion(expected_version.0 + events.len() as u64);
    landed.sort_unstable();
    let recorded = landed
        .into_iter()
        .zip(events)
        .map(
            |((version, position, xact, recorded_at_micros), event)| RecordedEvent {
                position,
                xact,
                event_id: event.event_id,
                stream: stream.clone(),
                stream_version: StreamVersion(version as u64),
                event: event.event,
                metadata: event.metadata,
                recorded_at_micros,
            },
        )
        .collect();
    AppendOutcome { version, recorded }
}

/// An empty write still asserts the stream's version.
pub(super) async fn check_version<C: GenericClient + Sync>(
    client: &C,
    write: &StreamWrite,
) -> Result<AppendOutcome, AppendError> {
    let actual = current_version(client, &write.stream).await?;
    if actual == write.expected.as_version() {
        Ok(AppendOutcome {
            version: actual,
            recorded: Vec::new(),
        })
    } else {
        Err(AppendError::Conflict {
            stream: write.stream.clone(),
            expected: write.expected,
            actual,
        })
    }
}

/// Maps the failure of a statement that appended `writes` (and wrote their read
/// models). A concurrent writer is found by asking where the streams are now: the
/// first whose version moved is the one that conflicted.
async fn append_failure<C: GenericClient + Sync>(
    client: &C,
    e: tokio_postgres::Error,
    writes: &[StreamWrite],
) -> AppendError {
    let Some(db) = e.as_db_error() else {
        return AppendError::Store(db_error(e));
    };
    let conflict = |write: &StreamWrite, actual| AppendError::Conflict {
        stream: write.stream.clone(),
        expected: write.expected,
        actual: StreamVersion(actual),
    };
    match classify(db) {
        AppendFailure::VersionConflict { stream, actual } => {
            match StreamId::parse(&stream)
                .ok()
                .and_then(|stream| writes.iter().find(|w| w.stream == stream))
            {
                Some(write) => conflict(write, actual),
                None => AppendError::Store(db_error(e)),
            }
        }
        AppendFailure::ConcurrentWriter => {
            for write in writes.iter().filter(|w| !w.events.is_empty()) {
                match current_version(client, &write.stream).await {
                    Ok(actual) if actual != write.expected.as_version() => {
                        return conflict(write, actual.0)
                    }
                    Ok(_) => {}
                    Err(error) => return AppendError::Store(error),
                }
            }
            // The other writer's version is not visible yet: name the first stream
            // written, one past what was expected.
            match writes.iter().find(|w| !w.events.is_empty()) {
                Some(write) => conflict(write, write.expected.as_version().0 + 1),
                None => AppendError::Store(db_error(e)),
            }
        }
        AppendFailure::DuplicateEventId => {
            let id = writes
                .iter()
                .flat_map(|w| &w.events)
                .map(|e| e.event_id)
                .next();
            AppendError::DuplicateEventId(id.unwrap_or_default())
        }
        AppendFailure::Constraint(name) => AppendError::Store(StoreError::Constraint(name)),
        AppendFailure::Other => AppendError::Store(db_error(e)),
    }
}
