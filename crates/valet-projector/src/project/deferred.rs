//! A rebuild's changes to rows of earlier batches, deferred: recorded in tables of their
//! own (numbered in log order) and applied once after the last batch, by hash joins, so
//! that the big token tables need no index while the log streams in.

use deadpool_postgres::GenericClient;
use valet_app::StoreError;
use valet_store::WriteSql;

use super::batch::Batch;
use super::statements::{unzip3, Writes};
use crate::db_error;

/// The tables of deferred changes, created unqualified (in the first schema of the
/// search path). `seq` orders the changes of one table in log order.
pub const DEFERRED_TABLES: &str = "
    CREATE UNLOGGED TABLE deferred_rotations (hash BYTEA NOT NULL);
    CREATE UNLOGGED TABLE deferred_access_revocations (
        hash BYTEA NOT NULL, at BIGINT NOT NULL, reason TEXT NOT NULL, seq BIGINT NOT NULL);
    CREATE UNLOGGED TABLE deferred_grant_revocations (
        grant_id UUID NOT NULL, at BIGINT NOT NULL, reason TEXT NOT NULL, seq BIGINT NOT NULL);
";

const DEFER_ROTATIONS: WriteSql =
    WriteSql::new("INSERT INTO deferred_rotations (hash) SELECT * FROM unnest($1::bytea[])");
const DEFER_ACCESS_REVOCATIONS: WriteSql = WriteSql::new(
    "INSERT INTO deferred_access_revocations (hash, at, reason, seq)
     SELECT * FROM unnest($1::bytea[], $2::int8[], $3::text[], $4::int8[])",
);
const DEFER_GRANT_REVOCATIONS: WriteSql = WriteSql::new(
    "INSERT INTO deferred_grant_revocations (grant_id, at, reason, seq)
     SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::int8[])",
);

/// Moves the batch's changes to earlier rows into deferred-change rows numbered from
/// `seq` up; nothing is left for `statements::updates`.
pub(super) fn defer(batch: &mut Batch, seq: i64, out: &mut Writes) -> Result<(), StoreError> {
    let numbered = |n: usize| (seq..seq + n as i64).collect::<Vec<i64>>();
    let rotations = std::mem::take(&mut batch.old_rotations);
    if !rotations.is_empty() {
        out.push(DEFER_ROTATIONS, vec![Box::new(rotations)])?;
    }
    let revocations = std::mem::take(&mut batch.old_access_revocations);
    if !revocations.is_empty() {
        let seqs = numbered(revocations.len());
        let (hashes, ats, reasons) = unzip3(revocations);
        out.push(
            DEFER_ACCESS_REVOCATIONS,
            vec![
                Box::new(hashes),
                Box::new(ats),
                Box::new(reasons),
                Box::new(seqs),
            ],
        )?;
    }
    let revocations = std::mem::take(&mut batch.old_grant_revocations);
    if !revocations.is_empty() {
        let seqs = numbered(revocations.len());
        let (ids, ats, reasons) = unzip3(revocations);
        out.push(
            DEFER_GRANT_REVOCATIONS,
            vec![
                Box::new(ids),
                Box::new(ats),
                Box::new(reasons),
                Box::new(seqs),
            ],
        )?;
    }
    Ok(())
}

/// Applies the deferred changes, set-based (hash joins, no index needed), and empties
/// the tables. The order is `statements::updates`', and the earliest change per row
/// wins, so the result equals updating batch after batch.
pub async fn apply_deferred<C: GenericClient + Sync>(db: &C) -> Result<(), StoreError> {
    db.batch_execute(
        "UPDATE refresh_tokens r SET status = 'rotated'
         FROM (SELECT DISTINCT hash FROM deferred_rotations) d
         WHERE r.token_sha256 = d.hash AND r.status = 'current';
         UPDATE access_tokens a SET revoked_at = d.at, revoked_reason = d.reason
         FROM (SELECT DISTINCT ON (hash) hash, at, reason FROM deferred_access_revocations
               ORDER BY hash, seq) d
         WHERE a.token_sha256 = d.hash AND a.revoked_at IS NULL;
         CREATE TEMP TABLE deferred_grants AS
             SELECT DISTINCT ON (grant_id) grant_id, at, reason FROM deferred_grant_revocations
             ORDER BY grant_id, seq;
         UPDATE grants g SET revoked_at = d.at, revoked_reason = d.reason
         FROM deferred_grants d WHERE g.grant_id = d.grant_id AND g.revoked_at IS NULL;
         UPDATE access_tokens a SET revoked_at = d.at, revoked_reason = d.reason
         FROM deferred_grants d WHERE a.grant_id = d.grant_id AND a.revoked_at IS NULL;
         UPDATE refresh_tokens r SET status = 'revoked'
         FROM deferred_grants d WHERE r.grant_id = d.grant_id AND r.status <> 'revoked';
         DROP TABLE deferred_grants;
         TRUNCATE deferred_rotations, deferred_access_revocations, deferred_grant_revocations;",
    )
    .await
    .map_err(db_error)
}
