//! Event → read-model rows, applied a batch at a time: the inline projection (the events
//! of one append) and rebuilds (thousands of events per transaction) run the same code.
//! Every value comes from the events (no clock, no positions), so replaying the log
//! twice gives identical tables.
//!
//! By job: `batch` renders the fold into rows (pure), `statements` turns rows into SQL,
//! `owners` reads the owners of earlier grants, `deferred` and `copy` are a rebuild's.

mod batch;
mod copy;
mod deferred;
mod owners;
mod statements;

use std::future::Future;
use std::pin::Pin;

use deadpool_postgres::GenericClient;
use valet_app::StoreError;
use valet_domain::{Event, StreamId};
use valet_store::{InlineProjection, RowWrite};

use batch::Batch;
use statements::Writes;

pub use deferred::{apply_deferred, DEFERRED_TABLES};

/// The projection of the whole log into clients, users, grants, tokens and consents.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadModelProjection;

impl InlineProjection for ReadModelProjection {
    fn plan<'a>(
        &'a self,
        db: &'a deadpool_postgres::Client,
        events: Vec<(&'a StreamId, &'a Event)>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<RowWrite>, StoreError>> + Send + 'a>> {
        let folded = fold(events);
        Box::pin(folded.plan(db, EarlierRows::Update))
    }
}

/// What a batch does with changes to rows that earlier batches created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlierRows {
    /// UPDATE them now, by primary key or grant id (the live read models).
    Update,
    /// Record them in the deferred-change tables (see [`DEFERRED_TABLES`]), numbered
    /// from `seq` up, for [`apply_deferred`] to apply once at the end.
    Defer { seq: i64 },
}

/// A batch of events folded into the rows it creates and the changes it makes: the
/// CPU half of applying it, which needs no database (a rebuild folds the next batch
/// while the previous one is written).
pub struct Folded(Batch);

/// Folds events of the log, in log order.
pub fn fold<'e>(events: impl IntoIterator<Item = (&'e StreamId, &'e Event)>) -> Folded {
    let events = events.into_iter();
    let mut batch = Batch::with_capacity(events.size_hint().0);
    for (stream, event) in events {
        batch.add(stream, event);
    }
    Folded(batch)
}

impl Folded {
    /// The writes that apply this batch to the read models of `db`.
    pub async fn plan<C: GenericClient + Sync>(
        self,
        db: &C,
        earlier: EarlierRows,
    ) -> Result<Vec<RowWrite>, StoreError> {
        let mut batch = self.0;
        owners::fill_owners(&mut batch, db).await?;
        let mut writes = Writes::default();
        if let EarlierRows::Defer { seq } = earlier {
            deferred::defer(&mut batch, seq, &mut writes)?;
        }
        statements::updates(&mut batch, &mut writes)?;
        statements::inserts(&batch, &mut writes)?;
        Ok(writes.into_inner())
    }

    /// Writes this batch into a rebuild's scratch tables (changes to earlier rows are
    /// deferred, numbered from `seq`). The grant and token rows, nearly all of a
    /// rebuild's rows, go in with binary COPY.
    pub async fn write_scratch(
        self,
        tx: &deadpool_postgres::Transaction<'_>,
        seq: i64,
    ) -> Result<(), StoreError> {
        let mut batch = self.0;
        owners::fill_owners(&mut batch, tx).await?;
        let grants = std::mem::take(&mut batch.grants);
        let access = std::mem::take(&mut batch.access);
        let refresh = std::mem::take(&mut batch.refresh);
        let planned = Folded(batch).plan(tx, EarlierRows::Defer { seq }).await?;
        valet_store::execute_writes(tx, &planned).await?;
        copy::copy_grants(tx, &grants).await?;
        copy::copy_access(tx, &access).await?;
        copy::copy_refresh(tx, &refresh).await
    }
}

/// Applies events of the log (in log order) to the read models reachable through `db`.
pub async fn apply_batch<'e, C: GenericClient + Sync>(
    db: &C,
    events: impl IntoIterator<Item = (&'e StreamId, &'e Event)>,
    earlier: EarlierRows,
) -> Result<(), StoreError> {
    let planned = fold(events).plan(db, earlier).await?;
    valet_store::execute_writes(db, &planned).await
}
