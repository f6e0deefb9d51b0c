//! Revocation propagation with one server: /revoke's 200 → the SDK refusing the token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use valet_resource::valet_wire::TokenEvent;
use valet_resource::{token_digest, Rejection, Validator};

use crate::http::{form, http, issue, post};
use crate::processes::Client;
use crate::stats::Dist;
use crate::{log, Error, POLL_EVERY, WARMUP};

pub(crate) struct Lag {
    pub(crate) dist: Dist,
    /// /revoke's 200 → the `token.revoked` message reaching a plain NATS subscriber
    /// (the server side of the lag: commit, relay, JetStream).
    pub(crate) wire: Dist,
    pub(crate) timeouts: usize,
    pub(crate) polls: u64,
    pub(crate) poll_ns: u64,
    pub(crate) background_issued: u64,
    pub(crate) seconds: f64,
}

/// Polls until `check` answers `Revoked` (or 10 s): (lag from `t0`, polls made).
pub(crate) fn poll_until_revoked(
    validator: &Validator,
    token: &str,
    t0: Instant,
) -> (Option<Duration>, u64) {
    let mut polls = 0;
    loop {
        polls += 1;
        if validator.check(token) == Err(Rejection::Revoked) {
            return (Some(t0.elapsed()), polls);
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return (None, polls);
        }
        std::thread::sleep(POLL_EVERY);
    }
}

pub(crate) async fn wait_valid(
    validator: &Validator,
    token: &str,
    limit: Duration,
) -> Result<(), Error> {
    let start = Instant::now();
    while validator.check(token).is_err() {
        if start.elapsed() > limit {
            return Err(format!(
                "the SDK did not receive a token within {limit:?}: {:?}",
                validator.status()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

pub(crate) async fn measure_lag(
    validator: &Validator,
    nats_url: &str,
    base: &str,
    issuer: &Client,
    samples: usize,
    background: usize,
    live: Arc<Mutex<Vec<String>>>,
) -> Result<Lag, Error> {
    let http = http();
    // The tokens to revoke, issued (8 at a time) and seen by the SDK first.
    log(format!("issuing {} tokens to revoke", samples + WARMUP));
    let targets: Vec<String> = futures_util::stream::iter(0..samples + WARMUP)
        .map(|_| issue(&http, base, issuer))
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    for token in &targets {
        wait_valid(validator, token, Duration::from_secs(30)).await?;
    }

    // When each revocation is published: a core subscription sees it as the relay
    // publishes it (before the SDK's JetStream consumer can).
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let nats = async_nats::connect(nats_url).await?;
    let mut revocations = nats.subscribe("valet.v1.token.revoked.>").await?;
    nats.flush().await?;
    let seen = arrivals.clone();
    let listener = tokio::spawn(async move {
        while let Some(message) = revocations.next().await {
            let at = Instant::now();
            if let Ok(event) = TokenEvent::from_json(&message.payload) {
                if let Some(digest) = event.token_sha256 {
                    seen.lock().unwrap().insert(digest, at);
                }
            }
        }
    });

    // Background issuance for the whole measurement.
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for _ in 0..background {
        let (stop, issued, live, http, base, issuer) = (
            stop.clone(),
            issued.clone(),
            live.clone(),
            http.clone(),
            base.to_owned(),
            issuer.clone(),
        );
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match issue(&http, &base, &issuer).await {
                    Ok(token) => {
                        issued.fetch_add(1, Ordering::Relaxed);
                        let mut live = live.lock().unwrap();
                        if live.len() < 100_000 {
                            live.push(token);
                        }
                    }
                    Err(error) => {
                        log(format!("background issuance failed: {error}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    log(format!("revoking {samples} tokens (+{WARMUP} warm-up) one at a time, {background} issuer loop(s) in the background"));
    let start = Instant::now();
    let issued_before = issued.load(Ordering::Relaxed);
    let mut lags = Vec::with_capacity(samples);
    let mut wire = Vec::with_capacity(samples);
    let (mut timeouts, mut polls, mut poll_ns) = (0, 0u64, 0u64);
    for (i, token) in targets.into_iter().enumerate() {
        let (status, body) = post(
            &http,
            &format!("{base}/revoke"),
            &issuer.basic,
            form(&token, "access_token"),
        )
        .await?;
        let t0 = Instant::now();
        if status != 200 {
            return Err(format!(
                "/revoke answered {status}: {}",
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        let digest = hex::encode(token_digest(&token));
        let v = validator.clone();
        let (lag, n) =
            tokio::task::spawn_blocking(move || poll_until_revoked(&v, &token, t0)).await?;
        if i < WARMUP {
            continue;
        }
        polls += n;
        match lag {
            Some(lag) => {
                lags.push(lag.as_nanos() as u64);
                poll_ns += lag.as_nanos() as u64;
                // The listener task may record it a moment after the SDK applied it.
                let waited = Instant::now();
                loop {
                    let arrival = arrivals.lock().unwrap().remove(&digest);
                    if let Some(at) = arrival {
                        wire.push(at.saturating_duration_since(t0).as_nanos() as u64);
                        break;
                    }
                    if waited.elapsed() > Duration::from_secs(1) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            None => timeouts += 1,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let background_issued = issued.load(Ordering::Relaxed) - issued_before;
    stop.store(true, Ordering::Relaxed);
    for task in loops {
        let _ = task.await;
    }
    listener.abort();
    Ok(Lag {
        dist: Dist::new(lags),
        wire: Dist::new(wire),
        timeouts,
        polls,
        poll_ns,
        background_issued,
        seconds,
    })
}
