//! An in-memory event store with the same contract as PostgreSQL, for fast tests.
//!
//! Appends are serialised by a mutex, so commit order equals position order and the
//! transaction half of the cursor is simply the position. With read models attached
//! ([`MemoryEventStore::with_read_models`]) every append also applies its events to
//! them under the same lock, as the PostgreSQL store does in the append's transaction.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use valet_domain::StreamId;

use super::MemoryReadModels;
use crate::log::{LogCursor, RecordedEvent};
use crate::ports::{
    AppendError, AppendOutcome, EventStore, StoreError, StreamVersion, StreamWrite,
};

#[derive(Clone)]
pub struct MemoryEventStore {
    inner: Arc<Mutex<Log>>,
    wake: Arc<watch::Sender<u64>>,
    read_models: Option<MemoryReadModels>,
}

#[derive(Default)]
struct Log {
    events: Vec<RecordedEvent>,
    streams: HashMap<StreamId, Vec<usize>>,
    ids: HashSet<uuid::Uuid>,
}

impl Default for MemoryEventStore {
    fn default() -> Self {
        MemoryEventStore {
            inner: Arc::default(),
            wake: Arc::new(watch::channel(0).0),
            read_models: None,
        }
    }
}

impl Log {
    fn version(&self, stream: &StreamId) -> StreamVersion {
        StreamVersion(self.streams.get(stream).map_or(0, |i| i.len() as u64))
    }

    fn push(&mut self, write: StreamWrite, recorded_at_micros: i64) -> AppendOutcome {
        let current = self.version(&write.stream);
        let mut recorded = Vec::with_capacity(write.events.len());
        for (offset, event) in write.events.into_iter().enumerate() {
            let position = self.events.len() as i64 + 1;
            let index = self.events.len();
            self.ids.insert(event.event_id);
            let event = RecordedEvent {
                position,
                xact: position,
                event_id: event.event_id,
                stream: write.stream.clone(),
                stream_version: StreamVersion(current.0 + offset as u64 + 1),
                event: event.event,
                metadata: event.metadata,
                recorded_at_micros,
            };
            recorded.push(event.clone());
            self.events.push(event);
            self.streams
                .entry(write.stream.clone())
                .or_default()
                .push(index);
        }
        AppendOutcome {
            version: StreamVersion(current.0 + recorded.len() as u64),
            recorded,
        }
    }
}

impl MemoryEventStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that keeps `read_models` in step with every append.
    pub fn with_read_models(read_models: MemoryReadModels) -> Self {
        MemoryEventStore {
            read_models: Some(read_models),
            ..Self::default()
        }
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        // A panic while holding the lock cannot leave the log half-written (every append
        // validates before it pushes), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl EventStore for MemoryEventStore {
    async fn append_all(
        &self,
        writes: Vec<StreamWrite>,
    ) -> Result<Vec<AppendOutcome>, AppendError> {
        let outcomes = {
            let mut log = self.log();
            // Validate every write before touching the log: all or nothing.
            let mut seen = HashSet::new();
            for write in &writes {
                if let Some(foreign) = write.events.iter().find(|e| !e.event.fits(&write.stream)) {
                    return Err(AppendError::Store(StoreError::ForeignEvent {
                        stream: write.stream.clone(),
                        event_type: foreign.event.event_type(),
                    }));
                }
                let current = log.version(&write.stream);
                if current != write.expected.as_version() {
                    return Err(AppendError::Conflict {
                        stream: write.stream.clone(),
                        expected: write.expected,
                        actual: current,
                    });
                }
                for event in &write.events {
                    if log.ids.contains(&event.event_id) || !seen.insert(event.event_id) {
                        return Err(AppendError::DuplicateEventId(event.event_id));
                    }
                }
            }
            let recorded_at_micros = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            let outcomes: Vec<AppendOutcome> = writes
                .into_iter()
                .map(|write| log.push(write, recorded_at_micros))
                .collect();
            if let Some(read_models) = &self.read_models {
                for event in outcomes.iter().flat_map(|o| &o.recorded) {
                    read_models.apply(&event.stream, &event.event);
                }
            }
            outcomes
        };
        self.wake.send_modify(|v| *v = v.wrapping_add(1));
        Ok(outcomes)
    }

    async fn read_stream(&self, stream: &StreamId) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.log();
        Ok(log
            .streams
            .get(stream)
            .map(|indexes| indexes.iter().map(|&i| log.events[i].clone()).collect())
            .unwrap_or_default())
    }

    async fn read_log(
        &self,
        after: LogCursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.log();
        let start = log.events.partition_point(|e| e.cursor() <= after);
        Ok(log.events[start..].iter().take(limit).cloned().collect())
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }
}

impl crate::ports::Readiness for MemoryEventStore {
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
