//! The contract between the store and the read-model projection it runs inside every
//! append: typed events in, typed writes out.
//!
//! A [`RowWrite`] is a statement the store may embed, as one part, in the single
//! statement that appends the events (or run in a caller's transaction). What makes
//! that safe is checked when its SQL is built ([`WriteSql::new`], in a `const`, so at
//! compile time) and when its parameters are attached ([`RowWrite::new`]); the one rule
//! no check can see is the projection's own: the writes of one plan touch disjoint
//! rows, because parts of one statement do not see each other's changes.

use std::future::Future;
use std::pin::Pin;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use valet_app::{StoreError, StreamWrite};
use valet_domain::{Event, StreamId};

use super::errors::db_error;
use super::in_order::{in_order, Flight};

/// Writes read-model rows inside the append's statement, so a reader of the read models
/// sees exactly the committed log (read-your-writes).
pub trait InlineProjection: Send + Sync + 'static {
    /// The writes that `events` (in log order, not yet numbered by the log) imply. It
    /// may read, outside the append, what never changes (a grant's owner); the writes
    /// must touch disjoint rows.
    fn plan<'a>(
        &'a self,
        db: &'a deadpool_postgres::Client,
        events: Vec<(&'a StreamId, &'a Event)>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<RowWrite>, StoreError>> + Send + 'a>>;
}

/// The SQL of a read-model write: one INSERT, UPDATE or DELETE, without RETURNING (the
/// store's statement returns only the log's rows), whose parameters are exactly `$1`
/// to `$n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteSql {
    text: &'static str,
    params: usize,
}

impl WriteSql {
    /// Checks `text` and counts its parameters. Meant for `const` items, where a
    /// statement that breaks the contract fails the build.
    pub const fn new(text: &'static str) -> Self {
        let bytes = text.as_bytes();
        let start = skip_space(bytes, 0);
        assert!(
            starts_with_word(bytes, start, b"INSERT")
                || starts_with_word(bytes, start, b"UPDATE")
                || starts_with_word(bytes, start, b"DELETE"),
            "a read-model write is an INSERT, UPDATE or DELETE"
        );
        assert!(
            !contains_word(bytes, b"RETURNING"),
            "a read-model write returns nothing"
        );
        let mut seen = 0u64; // bit n-1 set: $n appears
        let mut i = 0;
        while i < bytes.len() {
            assert!(bytes[i] != b';', "a read-model write is one statement");
            if bytes[i] == b'$' {
                let mut n = 0usize;
                let mut j = i + 1;
                while j < bytes.len() && bytes[j].is_ascii_digit() {
                    n = n * 10 + (bytes[j] - b'0') as usize;
                    j += 1;
                }
                assert!(n >= 1 && n <= 64, "parameters are $1 to $64");
                seen |= 1 << (n - 1);
                i = j;
            } else {
                i += 1;
            }
        }
        // $1..$n with no gap: seen is a run of ones from bit 0.
        assert!(
            seen & (seen + 1) == 0,
            "parameters are numbered $1 to $n without gaps"
        );
        WriteSql {
            text,
            params: seen.count_ones() as usize,
        }
    }

    pub const fn text(&self) -> &'static str {
        self.text
    }

    pub const fn params(&self) -> usize {
        self.params
    }

    /// The text with its parameters shifted by `offset` (`$1` becomes `$(1 + offset)`),
    /// to embed it in a statement whose parameters so far are `offset`.
    pub fn embedded_at(&self, offset: usize) -> String {
        let mut out = String::with_capacity(self.text.len() + 8);
        let mut rest = self.text;
        while let Some(dollar) = rest.find('$') {
            out.push_str(&rest[..=dollar]);
            rest = &rest[dollar + 1..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            // WriteSql::new checked that every `$` starts a parameter number.
            let n: usize = rest[..digits].parse().unwrap_or(0);
            out.push_str(&(n + offset).to_string());
            rest = &rest[digits..];
        }
        out.push_str(rest);
        out
    }
}

const fn skip_space(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

const fn starts_with_word(bytes: &[u8], at: usize, word: &[u8]) -> bool {
    if at + word.len() > bytes.len() {
        return false;
    }
    let mut k = 0;
    while k < word.len() {
        if bytes[at + k].to_ascii_uppercase() != word[k] {
            return false;
        }
        k += 1;
    }
    at + word.len() == bytes.len() || !is_word_byte(bytes[at + word.len()])
}

const fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

const fn contains_word(bytes: &[u8], word: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if (i == 0 || !is_word_byte(bytes[i - 1])) && starts_with_word(bytes, i, word) {
            return true;
        }
        i += 1;
    }
    false
}

/// Parameters of a write, owned (they travel to the group-commit thread).
pub type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// A read-model write with its parameters.
pub struct RowWrite {
    sql: WriteSql,
    params: Params,
}

impl RowWrite {
    /// Fails when the parameters are not the ones the SQL numbers.
    pub fn new(sql: WriteSql, params: Params) -> Result<Self, StoreError> {
        if params.len() != sql.params {
            return Err(StoreError::Malformed(format!(
                "a read-model write takes {} parameters, not {}",
                sql.params,
                params.len()
            )));
        }
        Ok(RowWrite { sql, params })
    }

    pub fn sql(&self) -> WriteSql {
        self.sql
    }

    fn params(&self) -> impl Iterator<Item = &(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
    }
}

/// The projection's writes for the events of `writes` (none without a projection).
pub(super) async fn plan_writes<'w>(
    client: &'w deadpool_postgres::Client,
    projection: Option<&'w dyn InlineProjection>,
    writes: impl IntoIterator<Item = &'w StreamWrite>,
) -> Result<Vec<RowWrite>, StoreError> {
    let Some(projection) = projection else {
        return Ok(Vec::new());
    };
    let events = writes
        .into_iter()
        .flat_map(|w| w.events.iter().map(move |e| (&w.stream, &e.event)))
        .collect();
    projection.plan(client, events).await
}

/// The writes as parts `p0 AS (…)`, `p1 AS (…)`… of a larger statement whose
/// parameters so far are `params`; theirs are appended.
pub(super) fn embed<'a>(
    writes: &'a [RowWrite],
    params: &mut Vec<&'a (dyn ToSql + Sync)>,
) -> Vec<String> {
    writes
        .iter()
        .enumerate()
        .map(|(j, w)| {
            let part = format!("p{j} AS ({})", w.sql.embedded_at(params.len()));
            params.extend(w.params());
            part
        })
        .collect()
}

/// Runs writes pipelined on `db` (e.g. inside a caller's transaction).
pub async fn execute_writes<C: GenericClient + Sync>(
    db: &C,
    writes: &[RowWrite],
) -> Result<(), StoreError> {
    let mut statements = Vec::with_capacity(writes.len());
    for w in writes {
        statements.push(db.prepare_cached(w.sql.text).await.map_err(db_error)?);
    }
    let requests: Vec<Flight<'_>> = writes
        .iter()
        .zip(&statements)
        .map(|(w, statement)| {
            let params: Vec<&(dyn ToSql + Sync)> = w.params().collect();
            Box::pin(async move { db.query(statement, &params).await }) as Flight<'_>
        })
        .collect();
    for result in in_order(requests).await {
        result.map_err(db_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPSERT: WriteSql =
        WriteSql::new("INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET b = $2");

    #[test]
    fn parameters_are_counted_and_shifted() {
        assert_eq!(UPSERT.params(), 2);
        assert_eq!(
            UPSERT.embedded_at(7),
            "INSERT INTO t (a, b) VALUES ($8, $9) ON CONFLICT (a) DO UPDATE SET b = $9"
        );
        let many = WriteSql::new(
            "UPDATE t SET a = $10 WHERE b = ANY($1) AND c IN ($2,$3,$4,$5,$6,$7,$8,$9)",
        );
        assert_eq!(many.params(), 10);
        assert_eq!(
            many.embedded_at(90),
            "UPDATE t SET a = $100 WHERE b = ANY($91) AND c IN ($92,$93,$94,$95,$96,$97,$98,$99)"
        );
        assert_eq!(WriteSql::new("  delete FROM t").params(), 0);
    }

    fn refused(text: &'static str) -> bool {
        std::panic::catch_unwind(|| WriteSql::new(text)).is_err()
    }

    #[test]
    fn statements_outside_the_contract_are_refused() {
        assert!(refused("SELECT 1"));
        assert!(refused("INSERTED INTO t VALUES ($1)"));
        assert!(refused("INSERT INTO t VALUES ($1) RETURNING a"));
        assert!(refused("INSERT INTO t VALUES ($1); DELETE FROM t"));
        assert!(refused("INSERT INTO t VALUES ($1, $3)"));
        assert!(refused("INSERT INTO t VALUES ($0)"));
        assert!(refused("UPDATE t SET a = $"));
        // A word that merely contains a keyword is fine.
        assert_eq!(WriteSql::new("UPDATE t SET returning_at = $1").params(), 1);
    }

    #[test]
    fn a_write_needs_exactly_its_parameters() {
        assert!(RowWrite::new(UPSERT, vec![Box::new(1i64), Box::new(2i64)]).is_ok());
        assert!(matches!(
            RowWrite::new(UPSERT, vec![Box::new(1i64)]),
            Err(StoreError::Malformed(_))
        ));
    }
}
