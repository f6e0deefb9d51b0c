//! The pattern every deliverer from the log shares (the NATS relay, the back-channel
//! logout dispatcher): stand by until this process holds the named lease; lead while
//! the lease is renewed; step down when renewals fail or the sink has held work for too
//! long; release the lease on shutdown so a standby takes over at once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use valet_app::outbox::{Acquisition, Leadership, Lease, LeaseError, RelayStatus};

use crate::progress::Progress;
use crate::tenure::{Bounds, Decision, StepDown, Tenure};

/// How long a lease lasts without renewal. A standby takes over at most this long after
/// the leader's last renewal, plus one [`STANDBY_POLL`] and its start; within one poll
/// when the leader's process died (its PostgreSQL session ended).
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// How often a standby asks for the lease.
pub const STANDBY_POLL: Duration = Duration::from_millis(200);
const RENEW_EVERY: Duration = Duration::from_millis(500);
/// A renewal that takes longer is abandoned (the next is tried; the tenure decides).
pub(crate) const RENEW_TIMEOUT: Duration = Duration::from_millis(500);

const BOUNDS: Bounds = Bounds {
    ttl: LEASE_TTL,
    // One renewal interval and one renewal's timeout, with room to spare.
    margin: Duration::from_millis(1200),
    stall_limit: Duration::from_secs(3),
};

/// After stepping down, a leader waits this long (more than a standby's poll) before
/// asking for the lease again, so that a standby gets it first.
const AFTER_STEP_DOWN: Duration = Duration::from_secs(1);

/// Why leading stopped, as the lead function reports it.
pub(crate) enum LeadError<E> {
    /// Another process holds the lease now.
    Lost,
    Failed(E),
}

impl<E> From<LeaseError> for LeadError<E>
where
    E: From<LeaseError>,
{
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::Lost => LeadError::Lost,
            other => LeadError::Failed(other.into()),
        }
    }
}

/// What a leader does while it holds the lease: boxed and given the lease and progress
/// as `Arc`s, so the future can borrow the leader's surroundings and still be `Send`.
pub(crate) type Leading<'env, E> =
    Pin<Box<dyn Future<Output = Result<Infallible, LeadError<E>>> + Send + 'env>>;

/// Who leads, under which lease, reported where.
pub(crate) struct Role<'a> {
    pub lease: &'static str,
    pub holder: &'a str,
    /// For the operator's log: "relay", "back-channel logout dispatcher".
    pub what: &'static str,
    pub status: &'a RelayStatus,
}

enum Ended<E> {
    Failed(E),
    SteppedDown(StepDown),
    Lost,
    Shutdown,
}

/// Exponential backoff from 100 ms to 5 s.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }

    /// The next delay.
    pub fn next(&mut self) -> Duration {
        let delay = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        delay
    }
}

/// Stands by and leads until `shutdown` completes. `lead` runs while this process holds
/// the lease (it never returns unless it fails or loses the lease); `after_leading`
/// runs each time it stops.
pub(crate) async fn stand_by_and_lead<'env, S, E, Shutdown>(
    store: &S,
    role: &Role<'_>,
    shutdown: Shutdown,
    mut lead: impl FnMut(Arc<S::Lease>, Arc<Progress>) -> Leading<'env, E>,
    mut after_leading: impl FnMut(),
) where
    S: Leadership,
    E: std::fmt::Display,
    Shutdown: Future<Output = ()>,
{
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new();
    loop {
        let sent_at = Instant::now();
        let acquired = tokio::select! {
            acquired = store.try_acquire(role.lease, role.holder, LEASE_TTL) => acquired,
            () = &mut shutdown => return,
        };
        let pause = match acquired {
            Ok(Acquisition::Acquired(lease)) => {
                backoff = Backoff::new();
                tracing::info!(holder = %role.holder, "{} is active", role.what);
                role.status.set_leader(Some(role.holder));
                role.status.set_active(true);
                let (lease, progress) = (Arc::new(lease), Arc::new(Progress::default()));
                let ended = tokio::select! {
                    result = lead(lease.clone(), progress.clone()) => match result {
                        Err(LeadError::Lost) => Ended::Lost,
                        Err(LeadError::Failed(error)) => Ended::Failed(error),
                        Ok(never) => match never {},
                    },
                    ended = hold(&*lease, &progress, Tenure::new(BOUNDS, sent_at), role.what) => ended,
                    () = &mut shutdown => Ended::Shutdown,
                };
                role.status.set_active(false);
                after_leading();
                if !matches!(ended, Ended::Lost) {
                    if let Ok(Err(error)) =
                        tokio::time::timeout(RENEW_TIMEOUT, lease.release()).await
                    {
                        tracing::warn!(%error, "{}: cannot release the lease; it expires by itself", role.what);
                    }
                }
                match ended {
                    Ended::Shutdown => return,
                    Ended::Failed(error) => {
                        tracing::warn!(%error, "{} stopped leading; standing by", role.what)
                    }
                    Ended::SteppedDown(StepDown::Stalled) => {
                        // The unconfirmed work is abandoned: a failed delivery.
                        role.status.record_failure();
                        tracing::warn!(
                            "{} stepped down: its sink has not confirmed work in time; standing by",
                            role.what
                        )
                    }
                    Ended::SteppedDown(StepDown::LeaseRunningOut) => tracing::warn!(
                        "{} stepped down: the lease could not be renewed in time; standing by",
                        role.what
                    ),
                    Ended::Lost => tracing::warn!(
                        "{} lost its lease to another process; standing by",
                        role.what
                    ),
                }
                role.status.record_step_down();
                AFTER_STEP_DOWN
            }
            Ok(Acquisition::HeldBy(holder)) => {
                role.status.set_leader(Some(&holder));
                STANDBY_POLL
            }
            Err(error) => {
                tracing::warn!(%error, "{} cannot reach PostgreSQL; retrying", role.what);
                backoff.next()
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = &mut shutdown => return,
        }
    }
}

/// Renews the lease while the leader makes progress; returns when it must step down.
async fn hold<L: Lease, E>(
    lease: &L,
    progress: &Progress,
    mut tenure: Tenure,
    what: &str,
) -> Ended<E> {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        if let Decision::StepDown(why) = tenure.decide(Instant::now(), progress.busy_since()) {
            return Ended::SteppedDown(why);
        }
        let sent_at = Instant::now();
        match tokio::time::timeout(RENEW_TIMEOUT, lease.renew()).await {
            Ok(Ok(())) => tenure.renewed(sent_at),
            Ok(Err(LeaseError::Lost)) => return Ended::Lost,
            Ok(Err(LeaseError::Store(error))) => {
                tracing::warn!(%error, "{what}: cannot renew the lease")
            }
            Err(_) => tracing::warn!("{what}: renewing the lease timed out"),
        }
    }
}

/// A deliverer running on a thread of its own with a single-threaded runtime; stopped
/// by [`stop`](Self::stop) or when dropped.
///
/// Why a thread: on the server's runtime, a deliverer's reads, decoding and sending
/// queued behind the HTTP tasks under load and theirs behind it. The group-commit
/// workers run on their own thread for the same reason.
pub struct DelivererThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelivererThread {
    /// Runs `run(stopped)` on a new thread named `name`; `stopped` completes when the
    /// deliverer is asked to stop.
    pub(crate) fn spawn<F, Fut>(name: &str, run: F) -> std::io::Result<Self>
    where
        F: FnOnce(tokio::sync::oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || runtime.block_on(run(stopped)))?;
        Ok(DelivererThread {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the deliverer and waits for its thread, which releases the lease (so a
    /// standby takes over at once) and closes its connections.
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

impl Drop for DelivererThread {
    fn drop(&mut self) {
        self.shut_down();
    }
}
