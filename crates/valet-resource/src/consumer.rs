//! The JetStream consumer: replays the stream into the store, then follows it.
//!
//! One ephemeral *ordered* pull consumer (no acks, no durable state on the server),
//! starting with `DeliverPolicy::All` (or after the store's cursor, for a store that
//! persists itself). async-nats 0.51 recreates an ordered consumer by itself when it sees
//! a gap in consumer sequences, two missed idle heartbeats, a deleted consumer or no
//! responders, restarting at the stream sequence after the last message it delivered.
//! Errors it surfaces instead (a failed pull request, e.g. when the consumer vanished with
//! a restarted server) end the subscription here, and we subscribe again after the last
//! stream sequence *we applied*, with backoff. A reconnect to NATS also makes us
//! resubscribe at once: after a server restart the in-memory ephemeral consumer is gone,
//! and async-nats 0.51 only finds out after about 15 s of consumer-info retries, during
//! which revocations would wait.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures_util::StreamExt;
use valet_wire::Message;

use crate::store::Applied;
use crate::unix_now;
use crate::validator::{Shared, State};

pub(crate) async fn connect(
    url: &str,
    tls: &valet_wire::NatsTls,
    shared: Arc<Shared>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let events: Weak<Shared> = Arc::downgrade(&shared);
    let mut options = async_nats::ConnectOptions::new().require_tls(tls.required(url));
    if let Some(ca) = &tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &tls.client_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    options
        .name("valet-resource")
        // Start even when NATS is down; the client keeps trying (not ready meanwhile).
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .event_callback(move |event| {
            let shared = events.upgrade();
            async move {
                let Some(shared) = shared else { return };
                match event {
                    async_nats::Event::Connected => {
                        shared.connected.store(true, Ordering::Relaxed);
                        if shared.ever_connected.swap(true, Ordering::Relaxed) {
                            tracing::info!("reconnected to NATS; resubscribing");
                        } else {
                            tracing::info!("connected to NATS");
                        }
                        // Wakes a subscription (to resubscribe) or a backoff (to retry now).
                        shared.reconnected.notify_waiters();
                    }
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        shared.connected.store(false, Ordering::Relaxed);
                        tracing::warn!("disconnected from NATS; reconnecting");
                    }
                    _ => {}
                }
            }
        })
        .connect(valet_wire::nats_servers(url))
        .await
}

/// Why a subscription ended.
enum End {
    /// An event we cannot apply: the consumer stops for good.
    Fatal(String),
    /// Something transient: subscribe again after the last applied sequence.
    Retry(String),
}

/// Runs until the consumer fails (fail closed) or the validator is dropped.
pub(crate) async fn run(shared: Arc<Shared>, client: async_nats::Client, stream: String) {
    let js = jetstream::new(client);
    let mut resume_after = shared
        .store
        .last_applied()
        .map_or(0, |cursor| cursor.stream_sequence);
    let mut backoff = Backoff::new();
    loop {
        match follow(&shared, &js, &stream, &mut resume_after, &mut backoff).await {
            End::Fatal(reason) => {
                shared.fail(reason);
                return;
            }
            End::Retry(detail) => {
                tracing::warn!(%detail, resume_after, "token event subscription interrupted; resubscribing");
                if shared.state() != State::Ready {
                    shared.set_detail(Some(detail));
                }
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = shared.reconnected.notified() => {}
                }
            }
        }
    }
}

async fn follow(
    shared: &Shared,
    js: &jetstream::Context,
    name: &str,
    resume_after: &mut u64,
    backoff: &mut Backoff,
) -> End {
    let mut stream = match js.get_stream(name).await {
        Ok(stream) => stream,
        Err(error) => return End::Retry(format!("stream {name} unavailable: {error}")),
    };
    let state = stream.cached_info().state.clone();
    if *resume_after > state.last_sequence {
        tracing::warn!(
            resume_after = *resume_after,
            last_sequence = state.last_sequence,
            "stream {name} is behind the store's cursor (recreated?); replaying it from the start"
        );
        *resume_after = 0;
    }
    let deliver_policy = if *resume_after == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: *resume_after + 1,
        }
    };
    let consumer = match stream
        .create_consumer(OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await
    {
        Ok(consumer) => consumer,
        Err(error) => return End::Retry(format!("cannot create a consumer on {name}: {error}")),
    };
    let mut messages = match consumer.messages().await {
        Ok(messages) => messages,
        Err(error) => return End::Retry(format!("cannot read {name}: {error}")),
    };
    // We just talked to the server (the event callback may not have run yet).
    shared.connected.store(true, Ordering::Relaxed);
    shared.subscribed();
    backoff.reset();
    tracing::debug!(
        resume_after = *resume_after,
        last_sequence = state.last_sequence,
        "subscribed to {name}"
    );
    // Caught up once the last message that existed at subscription time is applied.
    let target = state.last_sequence;
    if state.messages == 0 || target <= *resume_after {
        shared.caught_up();
    }
    // While catching up, also ask the stream now and then: messages that expire before
    // they are delivered would otherwise leave `target` out of reach.
    let mut probe = tokio::time::interval(Duration::from_millis(500));
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = messages.next() => match next {
                Some(Ok(message)) => {
                    if let Err(end) = handle(shared, &message, resume_after, target) {
                        return end;
                    }
                }
                Some(Err(error)) => return End::Retry(format!("consumer error: {error}")),
                None => return End::Retry("consumer ended".to_owned()),
            },
            // The server may have restarted and lost our (in-memory, ephemeral) consumer;
            // async-nats would only notice after ~15 s of consumer-info retries.
            _ = shared.reconnected.notified() => {
                return End::Retry("reconnected to NATS".to_owned());
            }
            _ = probe.tick(), if shared.state() != State::Ready => {
                if let Ok(info) = stream.info().await {
                    if info.state.messages == 0 || info.state.last_sequence <= *resume_after {
                        shared.caught_up();
                    }
                }
            }
        }
    }
}

fn handle(
    shared: &Shared,
    message: &jetstream::Message,
    resume_after: &mut u64,
    target: u64,
) -> Result<(), End> {
    let info = message
        .info()
        .map_err(|error| End::Retry(format!("message without JetStream metadata: {error}")))?;
    let sequence = info.stream_sequence;
    let pending = info.pending;
    if sequence <= *resume_after {
        // Delivered again after a consumer was recreated: already applied.
        return Ok(());
    }
    if *resume_after > 0 && sequence > *resume_after + 1 {
        tracing::warn!(
            from = *resume_after + 1,
            to = sequence - 1,
            "stream messages expired or were deleted before this service read them"
        );
    }
    let event = match Message::from_json(&message.payload) {
        Ok(Message::Token(event)) => event,
        Ok(Message::Key(key)) => {
            tracing::info!(kid = %key.kid, alg = %key.alg, event = key.event_type.as_str(), "signing key");
            shared.keys.apply(&key);
            shared.applied.fetch_add(1, Ordering::Relaxed);
            advanced(shared, sequence, pending, resume_after, target);
            return Ok(());
        }
        Err(error) => {
            return Err(End::Fatal(format!(
                "stream message {sequence} on {} cannot be read: {error}",
                message.subject
            )))
        }
    };
    match shared.store.apply(&event, sequence, unix_now()) {
        Ok(Applied::Applied) => {
            shared.applied.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Applied::Duplicate) => {
            shared.duplicates.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(event_id = %event.event_id, sequence, "duplicate event ignored");
        }
        Err(error) => {
            return Err(End::Fatal(format!(
                "stream message {sequence} cannot be applied: {error}"
            )))
        }
    }
    advanced(shared, sequence, pending, resume_after, target);
    Ok(())
}

/// A message applied: the cursor moves past it, and the last one of the replay makes the
/// validator ready.
fn advanced(shared: &Shared, sequence: u64, pending: u64, resume_after: &mut u64, target: u64) {
    *resume_after = sequence;
    shared.pending.store(pending, Ordering::Relaxed);
    if pending == 0 || sequence >= target {
        shared.caught_up();
    }
}

/// Exponential backoff from 100 ms to 5 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }

    fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}
