//! The back-channel logout dispatcher: follows the log like the relay (one active across
//! processes, under its own lease) and POSTs a signed logout token to each client that
//! registered a `backchannel_logout_uri` when a session it took part in ends, its user
//! removes it, or the user is disabled (see `valet_app::backchannel`).
//!
//! - At least once: every attempt's outcome is an event (`logout-<delivery id>`), and the
//!   checkpoint never passes the cause of a delivery that is not finished. After a crash
//!   the dispatcher reads again from there; a delivery's stream says what is left (a
//!   delivered token is not sent again, an attempt cut short by the crash is).
//! - Retried with exponential backoff up to a cap, for a window after the cause; then
//!   abandoned (recorded too).
//! - A client that does not answer delays no one else: posts run side by side, and the
//!   lease's stall check only watches the dispatcher's own PostgreSQL work.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use valet_app::backchannel::{DeliveryStep, PlannedDelivery, LOGOUT_CAUSES};
use valet_app::oauth::{OAuth, OAuthError};
use valet_app::outbox::{Leadership, Lease, LeaseError, RelayStatus};
use valet_app::read::ReadModels;
use valet_app::{Clock, EventStore, LogCursor, LogFollower, Scanned, StoreError};
use valet_domain::backchannel::{DeliveryId, Outcome, RetryPolicy};
use valet_domain::Timestamp;

use crate::leading::{stand_by_and_lead, DelivererThread, LeadError, Role};
use crate::progress::Progress;

/// How long the dispatcher waits before reading again after a read that found no cause.
const IDLE_COALESCE: Duration = Duration::from_millis(5);

/// The longest the dispatcher's checkpoint lags behind what it has read.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The dispatcher's lease (and checkpoint) name.
pub const DISPATCHER_LEASE: &str = "backchannel-logout";

/// Logout tokens are retried 1 s, 2 s, 4 s… after a failure, at most a minute apart,
/// for a day after their cause.
pub const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
    first: 1,
    cap: 60,
    window: 86_400,
};

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Who this process is, as the lease names its holder.
    pub holder: String,
    pub retry: RetryPolicy,
    /// How long one POST may take.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("{0}")]
    UseCase(String),
}

impl From<OAuthError> for DispatchError {
    fn from(e: OAuthError) -> Self {
        DispatchError::UseCase(e.to_string())
    }
}

/// Runs the dispatcher on a thread of its own (see [`DelivererThread`]) until stopped.
pub fn start_dispatcher<S, R, C>(
    oauth: OAuth<S, R, C>,
    config: DispatcherConfig,
    status: Arc<RelayStatus>,
) -> std::io::Result<DelivererThread>
where
    S: EventStore + Leadership,
    R: ReadModels,
    C: Clock,
{
    DelivererThread::spawn("valet-backchannel", move |stopped| async move {
        let http = match reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(http) => http,
            Err(error) => {
                tracing::error!(%error, "back-channel logout dispatcher cannot start its HTTP client");
                return;
            }
        };
        let role = Role {
            lease: DISPATCHER_LEASE,
            holder: &config.holder,
            what: "back-channel logout dispatcher",
            status: &status,
        };
        let shutdown = async {
            let _ = stopped.await;
        };
        let (oauth_ref, http, config_ref, status_ref) = (&oauth, &http, &config, &status);
        stand_by_and_lead(
            &oauth.store,
            &role,
            shutdown,
            |lease, progress| {
                Box::pin(async move {
                    lead(oauth_ref, &*lease, http, config_ref, status_ref, &progress)
                        .await
                        .map_err(|e| match e {
                            DispatchError::Lease(LeaseError::Lost) => LeadError::Lost,
                            other => LeadError::Failed(other),
                        })
                })
            },
            || {},
        )
        .await;
    })
}

/// A delivery waiting for its next attempt, with the cursor just before its cause (the
/// checkpoint may not pass it while it waits).
struct Waiting {
    planned: PlannedDelivery,
    before_cause: LogCursor,
    at: Timestamp,
}

async fn lead<S, R, C, L>(
    oauth: &OAuth<S, R, C>,
    lease: &L,
    http: &reqwest::Client,
    config: &DispatcherConfig,
    status: &RelayStatus,
    progress: &Progress,
) -> Result<std::convert::Infallible, DispatchError>
where
    S: EventStore + Leadership,
    R: ReadModels,
    C: Clock,
    L: Lease,
{
    progress.busy();
    let mut read_to = oauth
        .store
        .checkpoint(DISPATCHER_LEASE)
        .await?
        .unwrap_or(LogCursor::START);
    let (mut saved, mut saved_at) = (read_to, std::time::Instant::now());
    // Only the causes are read (PostgreSQL skips the rest of the log for it).
    let mut follower = LogFollower::of_types(&oauth.store, read_to, LOGOUT_CAUSES);
    let mut waiting: BTreeMap<DeliveryId, Waiting> = BTreeMap::new();
    let mut in_flight: JoinSet<(DeliveryId, Outcome)> = JoinSet::new();
    let mut flying: BTreeMap<DeliveryId, Waiting> = BTreeMap::new();
    progress.idle();
    loop {
        // Send what is due.
        let now = oauth.now();
        let due: Vec<DeliveryId> = waiting
            .iter()
            .filter(|(_, w)| w.at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(w) = waiting.remove(&id) else {
                continue;
            };
            match oauth.logout_token(&w.planned) {
                Ok(token) => {
                    let (http, uri) = (http.clone(), w.planned.uri.clone());
                    in_flight.spawn(async move { (id, post(&http, &uri, &token).await) });
                    flying.insert(id, w);
                }
                Err(error) => {
                    // No active key for the client's algorithm yet: try again shortly.
                    tracing::warn!(%error, "cannot sign a logout token; retrying");
                    waiting.insert(
                        id,
                        Waiting {
                            at: now.plus_seconds(1),
                            ..w
                        },
                    );
                }
            }
        }
        // Never past the cause of an unfinished delivery.
        let low = waiting
            .values()
            .chain(flying.values())
            .map(|w| w.before_cause)
            .min()
            .unwrap_or(read_to)
            .min(read_to);
        // At most once a second: under load every commit moves the cursor, and a
        // checkpoint a second behind costs a restart only a re-read of the causes.
        if low != saved && saved_at.elapsed() >= CHECKPOINT_EVERY {
            progress.busy();
            lease.save_checkpoint(low).await?;
            progress.idle();
            (saved, saved_at) = (low, std::time::Instant::now());
        }
        let next_due = waiting.values().map(|w| w.at).min();
        let sleep = next_due.map_or(Duration::from_secs(3600), |at| {
            Duration::from_millis(
                u64::try_from(at.as_unix_millis() - oauth.now().as_unix_millis())
                    .unwrap_or(0)
                    .max(1),
            )
        });
        tokio::select! {
            batch = follower.next() => {
                let batch = batch?;
                progress.busy();
                let mut before = read_to;
                for scanned in &batch {
                    let Scanned::Event(event) = scanned else {
                        before = scanned.cursor();
                        continue;
                    };
                    for planned in oauth.logout_deliveries(event).await? {
                        let id = planned.id;
                        if waiting.contains_key(&id) || flying.contains_key(&id) {
                            continue;
                        }
                        let w = Waiting { planned, before_cause: before, at: oauth.now() };
                        if let Some(w) = next_step(oauth, w, config.retry).await? {
                            waiting.insert(id, w);
                        }
                    }
                    before = event.cursor();
                }
                read_to = before;
                progress.idle();
                if !batch.iter().any(|s| matches!(s, Scanned::Event(_))) {
                    // Only other events committed: under load that is every commit, so
                    // wait a moment before reading again (bounds the lag it adds).
                    tokio::time::sleep(IDLE_COALESCE).await;
                }
            }
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                let Ok((id, outcome)) = joined else {
                    continue;
                };
                let Some(w) = flying.remove(&id) else {
                    continue;
                };
                progress.busy();
                match &outcome {
                    Outcome::Delivered { .. } => status.record_published(1, 0, 0),
                    failed => {
                        status.record_failure();
                        tracing::info!(
                            client_id = %w.planned.delivery.client_id,
                            outcome = ?failed,
                            "logout token not delivered; will retry"
                        )
                    }
                }
                oauth.record_attempt(&w.planned, outcome).await?;
                if let Some(w) = next_step(oauth, w, config.retry).await? {
                    waiting.insert(id, w);
                }
                progress.idle();
            }
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

/// When to attempt a delivery next, from its stream: `None` when it is finished (or
/// was abandoned now, its window over).
async fn next_step<S, R, C>(
    oauth: &OAuth<S, R, C>,
    w: Waiting,
    retry: RetryPolicy,
) -> Result<Option<Waiting>, DispatchError>
where
    S: EventStore,
    R: ReadModels,
    C: Clock,
{
    Ok(match oauth.delivery_step(&w.planned, retry).await? {
        DeliveryStep::Done => None,
        DeliveryStep::GiveUp => {
            tracing::warn!(
                client_id = %w.planned.delivery.client_id,
                "logout token abandoned: its retry window is over"
            );
            oauth.abandon_delivery(&w.planned).await?;
            None
        }
        DeliveryStep::AttemptAt(at) => Some(Waiting { at, ..w }),
    })
}

/// One POST of a logout token (`application/x-www-form-urlencoded`, §2.5).
async fn post(http: &reqwest::Client, uri: &str, token: &str) -> Outcome {
    let body = format!("logout_token={token}");
    let sent = http
        .post(uri)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) if resp.status().is_success() => Outcome::Delivered {
            status: resp.status().as_u16(),
        },
        Ok(resp) => Outcome::Refused {
            status: resp.status().as_u16(),
        },
        // The kind of failure only: never the request (it holds the token).
        Err(e) if e.is_timeout() => Outcome::Unreachable {
            error: "timed out".into(),
        },
        Err(e) if e.is_connect() => Outcome::Unreachable {
            error: "cannot connect".into(),
        },
        Err(_) => Outcome::Unreachable {
            error: "the request failed".into(),
        },
    }
}
