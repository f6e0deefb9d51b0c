//! Revocation propagation while the relay leader is killed (`kill -9`) once a second:
//! three `valet serve` replicas on one database; every second the replica whose relay is
//! active is killed and started again (it comes back as a standby). Meanwhile a token is
//! revoked every `PACE` through any live replica, and a thread polls the SDK until each
//! one is refused. Reported: the lag's distribution, the longest a revocation waited (the
//! worst gap), and the kills made.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio::process::Child;
use valet_resource::{Rejection, Validator};

use crate::http::{form, issue, post};
use crate::lag::wait_valid;
use crate::processes::{serve, Client};
use crate::stats::Dist;
use crate::{log, Error, POLL_EVERY};

/// One revocation this often.
const PACE: Duration = Duration::from_millis(20);
/// A revocation not seen by the SDK this long after its 200 counts as lost.
const GIVE_UP: Duration = Duration::from_secs(30);

pub(crate) struct Failover {
    pub(crate) lag: Dist,
    pub(crate) lost: usize,
    pub(crate) kills: usize,
    pub(crate) seconds: f64,
}

/// How to start a replica.
pub(crate) struct Fleet {
    pub(crate) bin: PathBuf,
    pub(crate) db_url: String,
    pub(crate) nats_url: String,
    pub(crate) log_path: PathBuf,
}

struct Replica {
    child: Child,
    base: String,
}

impl Fleet {
    async fn start(&self, listen: &str) -> Result<Replica, Error> {
        let (child, base) = serve(
            &self.bin,
            &self.db_url,
            &self.nats_url,
            &self.log_path,
            listen,
        )
        .await?;
        Ok(Replica { child, base })
    }
}

fn listen_of(base: &str) -> &str {
    base.trim_start_matches("http://")
}

/// The replica whose relay is active, if one says so now.
async fn leader(http: &reqwest::Client, bases: &[String]) -> Option<usize> {
    for (i, base) in bases.iter().enumerate() {
        let Ok(resp) = http.get(format!("{base}/readyz")).send().await else {
            continue;
        };
        let Ok(bytes) = resp.bytes().await else {
            continue;
        };
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if body["relay"]["active"] == true {
            return Some(i);
        }
    }
    None
}

/// Runs the phase for `duration`; `first` is the server already running (it becomes one
/// of the three replicas).
pub(crate) async fn measure(
    fleet: &Fleet,
    first: (Child, String),
    validator: &Validator,
    issuer: &Client,
    duration: Duration,
) -> Result<Failover, Error> {
    let mut replicas = vec![Replica {
        child: first.0,
        base: first.1,
    }];
    for _ in 0..2 {
        replicas.push(fleet.start("127.0.0.1:0").await?);
    }
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()?;

    let count = (duration.as_millis() / PACE.as_millis()) as usize + 100;
    log(format!("failover: issuing {count} tokens to revoke"));
    let tokens: Vec<String> = futures_util::stream::iter(0..count)
        .map(|i| issue(&http, &bases[i % bases.len()], issuer))
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    wait_valid(validator, tokens.last().expect("tokens"), GIVE_UP).await?;
    for token in &tokens {
        wait_valid(validator, token, GIVE_UP).await?;
    }

    let pending: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let revoking = Arc::new(AtomicBool::new(true));
    let poller = {
        let (validator, pending, revoking) = (validator.clone(), pending.clone(), revoking.clone());
        tokio::task::spawn_blocking(move || poll(&validator, &pending, &revoking))
    };

    log(format!(
        "failover: for {duration:?}, a revocation every {PACE:?} while the relay leader is killed once a second (3 replicas)"
    ));
    let start = Instant::now();
    let revoker = {
        let (http, bases, basic) = (http.clone(), bases.clone(), issuer.basic.clone());
        let pending = pending.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PACE);
            let mut next_replica = 0;
            for token in tokens {
                tick.tick().await;
                if start.elapsed() >= duration {
                    break;
                }
                // Any live replica: one being killed refuses the connection.
                for _ in 0..bases.len() * 20 {
                    let base = &bases[next_replica % bases.len()];
                    next_replica += 1;
                    let answer = post(
                        &http,
                        &format!("{base}/revoke"),
                        &basic,
                        form(&token, "access_token"),
                    )
                    .await;
                    if matches!(answer, Ok((200, _))) {
                        pending.lock().unwrap().push((token, Instant::now()));
                        break;
                    }
                }
            }
        })
    };

    let mut kills = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while start.elapsed() < duration {
        tick.tick().await;
        let Some(i) = leader(&http, &bases).await else {
            continue;
        };
        let _ = replicas[i].child.start_kill();
        let _ = replicas[i].child.wait().await;
        kills += 1;
        replicas[i] = fleet.start(listen_of(&bases[i])).await?;
    }
    revoker.await?;
    let seconds = start.elapsed().as_secs_f64();
    revoking.store(false, Ordering::Relaxed);
    let (lags, lost) = poller.await?;
    for mut replica in replicas {
        let _ = replica.child.start_kill();
        let _ = replica.child.wait().await;
    }
    Ok(Failover {
        lag: Dist::new(lags),
        lost,
        kills,
        seconds,
    })
}

/// Polls the SDK for every pending revocation until it refuses the token; returns the
/// lags (ns) and how many were never seen within [`GIVE_UP`].
fn poll(
    validator: &Validator,
    pending: &Mutex<Vec<(String, Instant)>>,
    revoking: &AtomicBool,
) -> (Vec<u64>, usize) {
    let (mut lags, mut lost) = (Vec::new(), 0);
    loop {
        let waiting = std::mem::take(&mut *pending.lock().unwrap());
        let mut still = Vec::new();
        for (token, t0) in waiting {
            if validator.check(&token) == Err(Rejection::Revoked) {
                lags.push(t0.elapsed().as_nanos() as u64);
            } else if t0.elapsed() > GIVE_UP {
                lost += 1;
            } else {
                still.push((token, t0));
            }
        }
        let done = still.is_empty() && !revoking.load(Ordering::Relaxed);
        pending.lock().unwrap().extend(still);
        if done && pending.lock().unwrap().is_empty() {
            return (lags, lost);
        }
        std::thread::sleep(POLL_EVERY);
    }
}
