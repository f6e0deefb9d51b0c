//! Writing a group: every append's version checks, events and read-model writes as ONE
//! statement; if it fails, one append at a time, so each caller gets exactly the answer
//! it would have got alone.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;
use valet_app::{AppendError, AppendOutcome, StoreError, StreamWrite};

use super::super::append::{append_composed, recorded, AppendInput};
use super::super::errors::db_error;
use super::super::projection::{embed, plan_writes, InlineProjection};
use super::super::rows::micros;

/// Writes `jobs` with one statement when there are several, falling back to one
/// statement per append if that fails. One result per job, in order.
pub(in crate::pg) async fn write_group(
    client: &deadpool_postgres::Client,
    projection: Option<&dyn InlineProjection>,
    jobs: Vec<Vec<StreamWrite>>,
) -> Vec<Result<Vec<AppendOutcome>, AppendError>> {
    if jobs.len() > 1 {
        match append_together(client, projection, &jobs).await {
            Ok(mut landed) => {
                return jobs
                    .into_iter()
                    .map(|writes| {
                        Ok(writes
                            .into_iter()
                            .map(|w| {
                                let rows = w
                                    .events
                                    .iter()
                                    .filter_map(|e| landed.remove(&e.event_id))
                                    .collect();
                                recorded(
                                    &w.stream,
                                    w.expected.as_version(),
                                    w.events.into_iter(),
                                    rows,
                                )
                            })
                            .collect())
                    })
                    .collect()
            }
            Err(error) => tracing::debug!(
                appends = jobs.len(),
                %error,
                "grouped append failed; retrying one at a time"
            ),
        }
    }
    let mut results = Vec::with_capacity(jobs.len());
    for writes in &jobs {
        results.push(append_composed(client, projection, writes).await);
    }
    results
}

const GROUP_SQL: &str = "
checked AS (
    SELECT w.stream_id,
           CASE WHEN cur.v = w.expected THEN cur.v
                ELSE valet_version_conflict(w.stream_id, w.expected, cur.v) END AS v
    FROM unnest($1::text[], $2::int8[]) AS w(stream_id, expected)
    CROSS JOIN LATERAL (
        SELECT coalesce(max(e.stream_version), 0) AS v FROM events e WHERE e.stream_id = w.stream_id
    ) cur
),
appended AS (
    INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
    SELECT i.event_id, i.stream_id, c.v + i.nth, i.event_type, i.schema_version, i.payload, i.metadata
    FROM unnest($3::text[], $4::int8[], $5::uuid[], $6::text[], $7::int4[], $8::jsonb[], $9::jsonb[])
             WITH ORDINALITY AS i(stream_id, nth, event_id, event_type, schema_version, payload, metadata, ord)
    JOIN checked c ON c.stream_id = i.stream_id
    ORDER BY i.ord
    RETURNING event_id, position, stream_version, xact, recorded_at
)";

/// Every job's writes as one statement: each (stream, expected version) checked once, all
/// events in one `unnest` insert, then the read-model writes for all of their events. Returns, by event id,
/// the (stream version, position, xact, recorded-at micros) each event landed with.
async fn append_together(
    client: &deadpool_postgres::Client,
    projection: Option<&dyn InlineProjection>,
    jobs: &[Vec<StreamWrite>],
) -> Result<HashMap<Uuid, (i64, i64, i64, i64)>, AppendError> {
    let writes = || jobs.iter().flatten();
    let planned = plan_writes(client, projection, writes()).await?;
    // Per write: its stream and expected version (checked); per event: its stream,
    // its place in the write (its version is the checked one plus that) and its columns.
    let inputs: Vec<AppendInput> = writes().map(AppendInput::new).collect::<Result<_, _>>()?;
    // Each (stream, expected version) is checked once: the tokens of one client all
    // assert the same client version, and a group of them would otherwise look it up
    // once per token.
    let mut seen = HashSet::new();
    let (checks, expected): (Vec<&str>, Vec<i64>) = inputs
        .iter()
        .filter(|i| seen.insert((i.stream.as_str(), i.expected)))
        .map(|i| (i.stream.as_str(), i.expected))
        .unzip();
    let mut streams = Vec::new();
    let mut nth = Vec::new();
    for input in &inputs {
        streams.extend(std::iter::repeat_n(input.stream.as_str(), input.ids.len()));
        nth.extend(1..=input.ids.len() as i64);
    }
    let ids: Vec<Uuid> = inputs.iter().flat_map(|i| i.ids.iter().copied()).collect();
    let types: Vec<&str> = inputs
        .iter()
        .flat_map(|i| i.types.iter().copied())
        .collect();
    let versions: Vec<i32> = inputs
        .iter()
        .flat_map(|i| i.versions.iter().copied())
        .collect();
    let payloads: Vec<_> = inputs.iter().flat_map(|i| i.payloads.iter()).collect();
    let metadata: Vec<_> = inputs.iter().flat_map(|i| i.metadata.iter()).collect();

    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
        &checks, &expected, &streams, &nth, &ids, &types, &versions, &payloads, &metadata,
    ];
    let mut sql = String::from("WITH ");
    sql.push_str(GROUP_SQL.trim_start());
    for part in embed(&planned, &mut params) {
        sql.push_str(", ");
        sql.push_str(&part);
    }
    // `min(v)` reads every check, so every version is asserted even for streams that
    // get no events.
    sql.push_str(
        " SELECT event_id, position, stream_version, xact, recorded_at FROM appended
          UNION ALL SELECT NULL, min(v), NULL, NULL, NULL FROM checked",
    );
    let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
    let rows = client
        .query(&statement, &params)
        .await
        .map_err(|e| AppendError::Store(db_error(e)))?;
    let landed: HashMap<Uuid, (i64, i64, i64, i64)> = rows
        .iter()
        .filter_map(|r| {
            let id: Option<Uuid> = r.get(0);
            id.map(|id| (id, (r.get(2), r.get(1), r.get(3), micros(r.get(4)))))
        })
        .collect();
    if landed.len() != ids.len() {
        return Err(
            StoreError::Malformed("a grouped append returned the wrong rows".into()).into(),
        );
    }
    Ok(landed)
}
