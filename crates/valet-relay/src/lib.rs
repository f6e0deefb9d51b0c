//! The outbox relay: publishes committed token lifecycle events from the PostgreSQL log
//! to NATS JetStream, in log order, exactly once for consumers.
//!
//! - One active relay across processes: it holds a lease (an advisory lock); the others
//!   stand by and take over when the holder's session ends.
//! - It follows the log with a commit-safe cursor, woken by new commits.
//! - Each message carries `Nats-Msg-Id` = the event id, so a republish after a crash
//!   between PubAck and checkpoint is dropped by JetStream's duplicate window, and names
//!   its predecessor, so JetStream never stores it ahead of one that was lost (see
//!   `confirm`). A relay that starts leading begins after the stream's real end when
//!   that is at or before its checkpoint, naming it (`publish::start_at_stream_end`).
//! - A batch is published pipelined (all messages sent, then the acks awaited in order;
//!   once a batch has been confirmed, only the next one's last message asks for an ack,
//!   and it confirms the whole batch) and the checkpoint advances only
//!   after the batch is confirmed: at most every 100 ms under load, and whenever the
//!   relay has caught up. NATS down: the batch is retried with backoff; nothing is
//!   skipped and the HTTP API is unaffected.

mod backchannel;
mod backlog;
mod checkpoint;
mod confirm;
mod key_mapping;
mod leading;
mod mapping;
mod progress;
mod publish;
mod tenure;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream::StorageType};
use valet_app::outbox::{Confirmation, Leadership, Lease, LeaseError, RelayStatus};
use valet_app::{EventStore, LogCursor, LogFollower, ReplayEvent, StoreError};
use valet_wire::{STREAM, SUBJECTS};

use checkpoint::Checkpoints;
use confirm::{Chain, LastRewind, Plan, Rewind};
use leading::{stand_by_and_lead, Backoff, LeadError, Role};
use progress::Progress;
use publish::{
    lost_tail, message_ids, publish, start_at_stream_end, stream_end, stream_last_id, Published,
};

pub use backchannel::{
    start_dispatcher, DispatchError, DispatcherConfig, DEFAULT_RETRY, DISPATCHER_LEASE,
};
pub use mapping::{GrantDirectory, MappingError};

/// How long the relay waits after catching up before reading again (bounds its read
/// rate under load; adds at most this much to the propagation lag).
const COALESCE: Duration = Duration::from_millis(2);

/// A batch at least this long means a busy server: wait [`COALESCE`] before the next
/// read. After a smaller one the relay reads again at once (it then waits for the next
/// commit), so a quiet server's revocations do not wait for a busy one's batching.
const COALESCE_FROM: usize = 8;

/// The longest the checkpoint lags behind what was published while the relay is busy
/// (see `checkpoint`).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// While idle, how often the leader checks that the stream still ends with its last
/// confirmed message (JetStream can lose confirmed messages when a node dies; with no new
/// event to publish, no refusal would reveal it).
const VERIFY_IDLE_EVERY: Duration = Duration::from_secs(1);

/// The lease name of the relay.
pub const LEASE: &str = "nats-relay";

pub use leading::{DelivererThread as RelayThread, LEASE_TTL, STANDBY_POLL};

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub nats_url: String,
    /// JetStream keeps messages this long: at least the longest access-token lifetime,
    /// so a new resource service can bootstrap by replaying the stream.
    pub max_age: Duration,
    /// How long JetStream remembers message ids to drop a republished event. A relay
    /// that resumes later than this after a crash stores again what it had published
    /// since its last checkpoint (consumers drop those by event id).
    pub duplicate_window: Duration,
    /// Events read from the log per batch.
    pub batch: usize,
    /// Who this relay is, as `/readyz` shows the leader (see [`this_process`]).
    pub holder: String,
    /// Copies of the stream JetStream keeps (1, or 3 or 5 on a cluster).
    pub stream_replicas: usize,
    /// TLS to NATS (with a `tls://` URL, or to trust a private CA, or mutual TLS).
    pub tls: valet_wire::NatsTls,
}

/// The client options of a connection to `urls` with `tls`.
pub fn nats_options(urls: &str, tls: &valet_wire::NatsTls) -> async_nats::ConnectOptions {
    let mut options = async_nats::ConnectOptions::new().require_tls(tls.required(urls));
    if let Some(ca) = &tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &tls.client_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    options
}

/// One attempt to reach NATS with `tls`, at start: a certificate NATS does not trust,
/// or one Valet does not, is a configuration error worth stopping for (`Err` says
/// what to change); NATS merely down is not (events wait in PostgreSQL).
pub async fn check_nats_tls(urls: &str, tls: &valet_wire::NatsTls) -> Result<(), String> {
    if !tls.required(urls) {
        return Ok(());
    }
    let attempt = nats_options(urls, tls)
        .connection_timeout(Duration::from_secs(3))
        .connect(valet_wire::nats_servers(urls))
        .await;
    match attempt {
        Ok(client) => {
            drop(client);
            Ok(())
        }
        // A refused certificate surfaces as an I/O error of the handshake.
        Err(error)
            if error.kind() == async_nats::ConnectErrorKind::Tls
                || format!("{error:?}").contains("Certificate") =>
        {
            Err(format!(
            "TLS to NATS at {urls} failed ({error}): give --nats-ca-file the CA that signed              its certificate (and --nats-client-cert/--nats-client-key if it verifies clients)"
            ))
        }
        Err(error) => {
            tracing::warn!(%error, "NATS is not reachable at start; the relay keeps trying");
            Ok(())
        }
    }
}

/// `host:pid`, naming this process as a lease holder.
pub fn this_process() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

/// JetStream's default duplicate window, and Valet's.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("nats: {0}")]
    Nats(String),
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

/// Runs forever: stand by until this process leads, then relay until it steps down.
pub async fn run<S>(store: S, config: RelayConfig, status: Arc<RelayStatus>)
where
    S: EventStore + Leadership + Clone,
{
    run_until(store, config, status, std::future::pending()).await;
}

/// [`run`] until `shutdown` completes; a leading relay then releases its lease, so a
/// standby takes over at once.
pub async fn run_until<S>(
    store: S,
    config: RelayConfig,
    status: Arc<RelayStatus>,
    shutdown: impl std::future::Future<Output = ()>,
) where
    S: EventStore + Leadership + Clone,
{
    tokio::pin!(shutdown);
    let nats = tokio::select! {
        nats = connect(&config.nats_url, &config.tls, status.clone()) => nats,
        () = &mut shutdown => return,
    };
    let confirmed = backlog::Confirmed::standing_by();
    let _reporter = backlog::Reporter::start(store.clone(), confirmed.clone(), status.clone());
    let role = Role {
        lease: LEASE,
        holder: &config.holder,
        what: "relay",
        status: &status,
    };
    let (store_ref, nats, config, status_ref, confirmed_ref) =
        (&store, &nats, &config, &status, &confirmed);
    stand_by_and_lead(
        &store,
        &role,
        shutdown,
        |lease, progress| {
            Box::pin(async move {
                lead(
                    store_ref,
                    &*lease,
                    nats,
                    config,
                    status_ref,
                    confirmed_ref,
                    &progress,
                )
                .await
                .map_err(|e| match e {
                    RelayError::Lease(LeaseError::Lost) => LeadError::Lost,
                    other => LeadError::Failed(other),
                })
            })
        },
        || confirmed.stand_by(),
    )
    .await;
}

/// Runs [`run`] on a thread of its own with a single-threaded runtime. The store should
/// open its connections on first use (`PgEventStore::with_own_pool`), so that their I/O
/// is driven on that thread too.
pub fn start<S>(
    store: S,
    config: RelayConfig,
    status: Arc<RelayStatus>,
) -> std::io::Result<RelayThread>
where
    S: EventStore + Leadership + Clone,
{
    RelayThread::spawn("valet-relay", move |stopped| {
        run_until(store, config, status, async {
            let _ = stopped.await;
        })
    })
}

/// The relay's NATS connection, and word of each time it was lost.
struct Nats {
    client: async_nats::Client,
    /// Counts disconnections: a publish waiting for acks gives up when it changes (the
    /// acks of messages sent on a lost connection never come).
    lost: tokio::sync::watch::Receiver<u64>,
}

async fn connect(url: &str, tls: &valet_wire::NatsTls, status: Arc<RelayStatus>) -> Nats {
    let events = status.clone();
    let (disconnected, lost) = tokio::sync::watch::channel(0u64);
    let disconnected = Arc::new(disconnected);
    let options = nats_options(url, tls)
        // Start even when NATS is down: events wait in PostgreSQL.
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .event_callback(move |event| {
            let status = events.clone();
            let disconnected = disconnected.clone();
            async move {
                match event {
                    async_nats::Event::Connected => status.set_connected(true),
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        status.set_connected(false);
                        disconnected.send_modify(|n| *n += 1);
                    }
                    _ => {}
                }
            }
        });
    loop {
        match options.clone().connect(valet_wire::nats_servers(url)).await {
            Ok(client) => {
                status.set_connected(
                    client.connection_state() == async_nats::connection::State::Connected,
                );
                return Nats { client, lost };
            }
            Err(error) => {
                // Only a malformed URL gets here (retry_on_initial_connect handles the rest).
                tracing::error!(%error, "cannot create the NATS client; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// The stream's definition for this version of Valet and `config`.
fn stream_config(config: &RelayConfig) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![SUBJECTS.to_owned()],
        storage: StorageType::File,
        max_age: config.max_age,
        // JetStream refuses a window longer than the stream keeps messages.
        duplicate_window: config.duplicate_window.min(config.max_age),
        num_replicas: config.stream_replicas,
        ..Default::default()
    }
}

/// Creates or updates the stream so its definition matches this version of Valet.
/// Reading the stream's definition needs only its leader; changing it needs JetStream's
/// meta leader, which a cluster may still be electing after losing a node, so an
/// unchanged definition is left alone.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: &RelayConfig,
) -> Result<(), RelayError> {
    let wanted = stream_config(config);
    if let Ok(stream) = js.get_stream(STREAM).await {
        let current = &stream.cached_info().config;
        if current.subjects == wanted.subjects
            && current.storage == wanted.storage
            && current.max_age == wanted.max_age
            && current.duplicate_window == wanted.duplicate_window
            && current.num_replicas == wanted.num_replicas
        {
            return Ok(());
        }
    }
    js.create_or_update_stream(wanted)
        .await
        .map_err(nats_error)?;
    Ok(())
}

async fn lead<S, L>(
    store: &S,
    lease: &L,
    nats: &Nats,
    config: &RelayConfig,
    status: &Arc<RelayStatus>,
    confirmed: &backlog::Confirmed,
    progress: &Progress,
) -> Result<std::convert::Infallible, RelayError>
where
    S: EventStore + Leadership + Clone,
    L: Lease,
{
    progress.busy();
    let js = jetstream::new(nats.client.clone());
    let mut backoff = Backoff::new();
    while let Err(error) = ensure_stream(&js, config).await {
        status.record_failure();
        tracing::warn!(%error, "cannot set up stream {STREAM}; retrying");
        tokio::time::sleep(backoff.next()).await;
    }
    let mut cursor = store.checkpoint(LEASE).await?.unwrap_or(LogCursor::START);
    let mut chain = Chain::default();
    let mut last_rewind = None;
    let start = loop {
        match start_at_stream_end(store, &js, cursor).await {
            Ok(start) => break start,
            Err(error) => {
                status.record_failure();
                tracing::warn!(%error, "cannot read where the stream ends; retrying");
                tokio::time::sleep(backoff.next()).await;
            }
        }
    };
    if let Some(start) = start {
        if start.to < cursor {
            tracing::info!(stream_ends_with = %start.id, "the stream ends before the checkpoint; publishing from its end");
        }
        cursor = start.to;
        chain = Chain::ending_at(&start.id);
        last_rewind = Some(LastRewind {
            cursor,
            reissued: false,
        });
    }
    confirmed.set(cursor);
    let mut follower =
        LogFollower::<_, ReplayEvent>::from_cursor(store, cursor).with_batch(config.batch);
    let mut directory = GrantDirectory::default();
    let mut checkpoints = Checkpoints::new(cursor, Instant::now(), CHECKPOINT_EVERY);
    // Events up to here go out under new message ids (see `Recovery::Reissue`).
    let mut reissue_through = None;
    // Where the stream really ends, when it ends before what JetStream confirmed.
    let mut rewind: Option<Rewind> = None;
    loop {
        if let Some(to) = rewind.take() {
            status.record_rewind();
            if to.reissue_through.is_some() {
                status.record_reissue();
            }
            last_rewind = Some(LastRewind {
                cursor: to.to,
                reissued: to.reissue_through.is_some(),
            });
            reissue_through = to.reissue_through;
            follower =
                LogFollower::<_, ReplayEvent>::from_cursor(store, to.to).with_batch(config.batch);
            chain = Chain::ending_at(&to.id);
            cursor = to.to;
            confirmed.set(cursor);
        }
        progress.busy();
        let mut batch = follower.poll().await?;
        if checkpoints.due(cursor, batch.is_empty(), Instant::now()) {
            lease.save_checkpoint(cursor).await?;
            checkpoints.saved(cursor, Instant::now());
        }
        if batch.is_empty() {
            // Waiting for commits is no stall. `next` starts with a read, so leaving it
            // for the check loses no commit.
            progress.idle();
            tokio::select! {
                next = follower.next() => batch = next?,
                () = tokio::time::sleep(VERIFY_IDLE_EVERY) => {
                    rewind = lost_tail(store, &js, &chain, cursor, last_rewind).await;
                    continue;
                }
            }
            progress.busy();
        }
        let messages = directory.map_batch(store, &batch).await?;
        let last = batch.last().map(ReplayEvent::cursor).unwrap_or(cursor);
        let reissue = reissue_through
            .filter(|through| batch.first().is_some_and(|e| e.cursor() <= *through))
            .map(|_| reissue_suffix());
        let ids = message_ids(&messages, reissue);
        let mut backoff = Backoff::new();
        // The first message of the batch not known to be stored.
        let mut from = 0;
        // A batch refused after its last ack was asked for counts as republished.
        let mut republished = false;
        loop {
            let mut lost = nats.lost.clone();
            lost.borrow_and_update();
            let published = tokio::select! {
                published = publish(&nats.client, &js, &messages[from..], &ids[from..], &mut chain) => published,
                // Sent on a lost connection: republish at once (the chain keeps order,
                // JetStream drops what was stored already).
                Ok(()) = lost.changed() => Err(RelayError::Nats("the connection was lost".into())),
            };
            let error = match published {
                Ok(Published::Confirmed(confirmation, duplicates)) => {
                    status.record_published(messages.len() as u64, duplicates, last.position);
                    if let Some(confirmation) = confirmation {
                        status.record_confirmation(match republished {
                            true => Confirmation::Republished,
                            false => confirmation,
                        });
                    }
                    break;
                }
                Ok(Published::Refused(at, plan)) => {
                    republished |= plan == Plan::LastAck;
                    let refused = messages[from + at].event_id();
                    let end = match stream_last_id(&js).await {
                        Ok(last_id) => stream_end(store, last_id).await,
                        Err(error) => Err(error),
                    };
                    match end {
                        Ok(end) => match confirm::recovery(end, last, last_rewind).rewind(last) {
                            Some(to) => {
                                tracing::warn!(
                                    event_id = %refused,
                                    stream_ends_with = %to.id,
                                    new_ids = to.reissue_through.is_some(),
                                    "the stream ends before messages NATS confirmed; publishing again from its end"
                                );
                                rewind = Some(to);
                                break;
                            }
                            None => {
                                // Rare enough to say: the stream does not end where this
                                // relay knew it to end (a second publisher during a
                                // takeover, or an outage longer than the duplicate window).
                                tracing::warn!(
                                    event_id = %refused,
                                    "the stream does not end with this event's predecessor; publishing it after the stream's last message"
                                );
                                from += at;
                                continue;
                            }
                        },
                        Err(error) => error,
                    }
                }
                Err(error) => error,
            };
            // `nats_connected` follows the connection only: a refusal from JetStream (a
            // stream without a leader) is no disconnection.
            status.record_failure();
            tracing::warn!(%error, pending = messages.len() - from, "publishing to NATS failed; retrying");
            tokio::time::sleep(backoff.next()).await;
        }
        progress.idle();
        if rewind.is_some() {
            continue;
        }
        cursor = last;
        confirmed.set(cursor);
        if batch.len() < config.batch {
            // Caught up with what the read saw: nothing waits (the reporter counts anew
            // within its interval).
            status.set_backlog(0);
            // Caught up: let a few more commits gather before the next read, so a busy
            // server costs the relay one read per interval, not one per token.
            if batch.len() >= COALESCE_FROM {
                tokio::time::sleep(COALESCE).await;
            }
        }
    }
}

/// A suffix for message ids JetStream has not seen: the time in milliseconds, so a later
/// reissue by this or another relay draws another.
fn reissue_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn nats_error(e: impl std::fmt::Display) -> RelayError {
    RelayError::Nats(e.to_string())
}
