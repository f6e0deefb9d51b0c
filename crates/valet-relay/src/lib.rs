//! The outbox relay: publishes committed token lifecycle events from the PostgreSQL log
//! to NATS JetStream, in log order, exactly once for consumers.
//!
//! - One active relay across processes: it holds a lease (an advisory lock); the others
//!   stand by and take over when the holder's session ends.
//! - It follows the log with a commit-safe cursor, woken by new commits.
//! - Each message carries `Nats-Msg-Id` = the event id, so a republish after a crash
//!   between PubAck and checkpoint is dropped by JetStream's duplicate window.
//! - A batch is published pipelined (all messages sent, then the acks awaited in order;
//!   once the stream's sequence is known, only the last message asks for an ack, and
//!   the sequence it reports confirms the whole batch) and the checkpoint advances only
//!   after the batch is confirmed: at most every 100 ms under load, and whenever the
//!   relay has caught up. NATS down: the batch is retried with backoff; nothing is
//!   skipped and the HTTP API is unaffected.

mod mapping;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream::StorageType};
use async_nats::HeaderMap;
use valet_app::outbox::{Confirmation, Leadership, Lease, RelayStatus};
use valet_app::{EventStore, LogCursor, LogFollower, ReplayEvent, StoreError};
use valet_wire::{TokenEvent, MSG_ID_HEADER, STREAM, SUBJECTS};

pub use mapping::{GrantDirectory, MappingError};

/// How long the relay waits after catching up before reading again (bounds its read
/// rate under load; adds at most this much to the propagation lag).
const COALESCE: Duration = Duration::from_millis(2);

/// The longest the checkpoint lags behind what was published while the relay is busy.
/// Each save is a statement and a commit in PostgreSQL; saving per batch cost one per
/// few dozen tokens. A takeover republishes at most this much more, which JetStream
/// drops as duplicates.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The lease name of the relay.
pub const LEASE: &str = "nats-relay";

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub nats_url: String,
    /// JetStream keeps messages this long: at least the longest access-token lifetime,
    /// so a new resource service can bootstrap by replaying the stream.
    pub max_age: Duration,
    /// Events read from the log per batch.
    pub batch: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("nats: {0}")]
    Nats(String),
}

/// Runs forever: stand by until this process leads, then relay until the lease is lost.
pub async fn run<S>(store: S, config: RelayConfig, status: Arc<RelayStatus>)
where
    S: EventStore + Leadership + Clone,
{
    let nats = connect(&config.nats_url, status.clone()).await;
    let mut backoff = Backoff::new();
    loop {
        let lease = match store.try_acquire(LEASE).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "relay cannot reach PostgreSQL; retrying");
                backoff.wait().await;
                continue;
            }
        };
        tracing::info!("relay is active");
        status.set_active(true);
        let result = lead(&store, lease, &nats, &config, &status).await;
        status.set_active(false);
        if let Err(error) = result {
            tracing::warn!(%error, "relay stopped leading; standing by");
        }
        backoff.wait().await;
    }
}

/// A relay running on a thread of its own (see [`start`]); stopped by [`stop`](Self::stop)
/// or when dropped.
pub struct RelayThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RelayThread {
    /// Stops the relay and waits for its thread, which closes its connections (and so
    /// frees the lease for a standby at once).
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RelayThread {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Runs [`run`] on a thread of its own with a single-threaded runtime. The store should
/// open its connections on first use (`PgEventStore::with_own_pool`), so that their I/O
/// is driven on that thread too.
///
/// Why: on the server's runtime, the relay's reads, decoding and publishing queued
/// behind the HTTP tasks under load and theirs behind it. The group-commit workers run
/// on their own thread for the same reason.
pub fn start<S>(
    store: S,
    config: RelayConfig,
    status: Arc<RelayStatus>,
) -> std::io::Result<RelayThread>
where
    S: EventStore + Leadership + Clone,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("valet-relay".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    () = run(store, config, status) => {}
                    _ = stopped => {}
                }
            });
        })?;
    Ok(RelayThread {
        stop: Some(stop),
        thread: Some(thread),
    })
}

async fn connect(url: &str, status: Arc<RelayStatus>) -> async_nats::Client {
    let events = status.clone();
    let options = async_nats::ConnectOptions::new()
        // Start even when NATS is down: events wait in PostgreSQL.
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .event_callback(move |event| {
            let status = events.clone();
            async move {
                match event {
                    async_nats::Event::Connected => status.set_connected(true),
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        status.set_connected(false)
                    }
                    _ => {}
                }
            }
        });
    loop {
        match options.clone().connect(url).await {
            Ok(client) => {
                status.set_connected(
                    client.connection_state() == async_nats::connection::State::Connected,
                );
                return client;
            }
            Err(error) => {
                // Only a malformed URL gets here (retry_on_initial_connect handles the rest).
                tracing::error!(%error, "cannot create the NATS client; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Creates or updates the stream so its definition matches this version of Valet.
pub async fn ensure_stream(js: &jetstream::Context, max_age: Duration) -> Result<(), RelayError> {
    js.create_or_update_stream(jetstream::stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![SUBJECTS.to_owned()],
        storage: StorageType::File,
        max_age,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(nats_error)?;
    Ok(())
}

async fn lead<S, L>(
    store: &S,
    mut lease: L,
    nats: &async_nats::Client,
    config: &RelayConfig,
    status: &RelayStatus,
) -> Result<(), RelayError>
where
    S: EventStore,
    L: Lease,
{
    let js = jetstream::new(nats.clone());
    let mut backoff = Backoff::new();
    while let Err(error) = ensure_stream(&js, config.max_age).await {
        status.record_failure();
        tracing::warn!(%error, "cannot set up stream {STREAM}; retrying");
        backoff.wait().await;
    }
    let mut cursor = lease.checkpoint().await?.unwrap_or(LogCursor::START);
    status.set_backlog(lease.backlog(cursor).await?);
    let mut follower =
        LogFollower::<_, ReplayEvent>::from_cursor(store, cursor).with_batch(config.batch);
    let mut directory = GrantDirectory::default();
    // The checkpoint saved last, and when: under load it is saved at most every
    // CHECKPOINT_EVERY, and always before the relay waits for new commits.
    let mut saved = cursor;
    let mut saved_at = tokio::time::Instant::now();
    // The stream's sequence after the last confirmed batch (see `publish`).
    let mut stream_seq = None;
    loop {
        let mut batch = follower.poll().await?;
        if saved != cursor && (batch.is_empty() || saved_at.elapsed() >= CHECKPOINT_EVERY) {
            lease.save_checkpoint(cursor).await?;
            saved = cursor;
            saved_at = tokio::time::Instant::now();
        }
        if batch.is_empty() {
            batch = follower.next().await?;
        }
        let messages = directory.map_batch(store, &batch).await?;
        let last = batch.last().map(ReplayEvent::cursor).unwrap_or(cursor);
        let mut backoff = Backoff::new();
        loop {
            match publish(nats, &js, &messages, &mut stream_seq).await {
                Ok((confirmation, duplicates)) => {
                    status.set_connected(true);
                    status.record_published(messages.len() as u64, duplicates, last.position);
                    if let Some(confirmation) = confirmation {
                        status.record_confirmation(confirmation);
                    }
                    break;
                }
                Err(error) => {
                    status.record_failure();
                    status.set_connected(false);
                    tracing::warn!(%error, pending = messages.len(), "publishing to NATS failed; retrying");
                    // The checkpoint has not moved: report how far behind we are.
                    status.set_backlog(lease.backlog(cursor).await?);
                    backoff.wait().await;
                }
            }
        }
        cursor = last;
        if batch.len() >= config.batch {
            status.set_backlog(lease.backlog(cursor).await?);
        } else {
            status.set_backlog(0);
            // Caught up: let a few more commits gather before the next read, so a busy
            // server costs the relay one read per interval, not one per token.
            tokio::time::sleep(COALESCE).await;
        }
    }
}

fn nats_error(e: impl std::fmt::Display) -> RelayError {
    RelayError::Nats(e.to_string())
}

/// The wire form of one message: its headers (`Nats-Msg-Id`) and payload.
fn outgoing(message: &TokenEvent) -> (HeaderMap, bytes::Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID_HEADER, message.event_id.as_str());
    (headers, message.to_json().into())
}

/// Publishes a batch; says how JetStream confirmed it (`None`: nothing to publish) and
/// how many messages it reported as duplicates (a republish after a crash). `stream_seq`
/// is the stream's sequence after the relay's previous batch when that batch confirmed
/// it, else `None`.
///
/// With a known sequence only the batch's last message asks for an ack: one
/// connection's messages are stored in the order sent, so an ack at `stream_seq + n`
/// proves that all n were stored, and NATS and the relay are spared n − 1 acks (about a
/// third of NATS's CPU per token under load). Any other answer (a duplicate, a failed
/// store, a message from another publisher in between, no answer) and the batch is
/// sent again with an ack per message: JetStream drops what it already holds by
/// `Nats-Msg-Id`, so nothing is lost or doubled either way. The one case the count
/// cannot tell apart, a message of ours refused while exactly as many from another
/// publisher land in the same batch, would need a refusal that spares the batch's last
/// message, and JetStream refuses for a full store, which refuses every later one too.
async fn publish(
    nats: &async_nats::Client,
    js: &jetstream::Context,
    messages: &[TokenEvent],
    stream_seq: &mut Option<u64>,
) -> Result<(Option<Confirmation>, u64), RelayError> {
    let Some((last, rest)) = messages.split_last() else {
        // A batch of events resource services do not see: nothing to confirm.
        return Ok((None, 0));
    };
    let mut confirmation = Confirmation::EveryAck;
    if let Some(before) = stream_seq.take() {
        for message in rest {
            let (headers, payload) = outgoing(message);
            nats.publish_with_headers(message.subject(), headers, payload)
                .await
                .map_err(nats_error)?;
        }
        let (headers, payload) = outgoing(last);
        // An ack that fails (e.g. times out) confirms nothing either: the republish below
        // reports a real outage as its own error.
        let ack = js
            .send_publish(
                last.subject(),
                PublishMessage::build().payload(payload).headers(headers),
            )
            .await
            .map_err(nats_error)?
            .await;
        let expected = before + messages.len() as u64;
        match ack {
            Ok(ack) if !ack.duplicate && ack.sequence == expected => {
                *stream_seq = Some(ack.sequence);
                return Ok((Some(Confirmation::LastAck), 0));
            }
            Ok(ack) => tracing::debug!(
                expected,
                acked = ack.sequence,
                duplicate = ack.duplicate,
                "the last ack does not account for the batch; republishing it with an ack per message"
            ),
            Err(error) => tracing::debug!(
                %error,
                "the batch's last ack failed; republishing it with an ack per message"
            ),
        }
        confirmation = Confirmation::Republished;
    }
    let mut acks = Vec::with_capacity(messages.len());
    for message in messages {
        let (headers, payload) = outgoing(message);
        let publish = PublishMessage::build().payload(payload).headers(headers);
        let ack = js
            .send_publish(message.subject(), publish)
            .await
            .map_err(nats_error)?;
        acks.push(ack);
    }
    let mut duplicates = 0;
    let mut last = None;
    for ack in acks {
        let ack = ack.await.map_err(nats_error)?;
        if ack.duplicate {
            duplicates += 1;
        }
        last = Some(ack);
    }
    // A duplicate's sequence is the original's, not necessarily the stream's last.
    *stream_seq = last.filter(|a| !a.duplicate).map(|a| a.sequence);
    Ok((Some(confirmation), duplicates))
}

/// Exponential backoff from 100 ms to 5 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}
