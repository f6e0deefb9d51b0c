//! End to end against a release `valet serve`: how long a revocation takes to reach a
//! resource service, and how local validation compares with a call to /introspect.
//!
//! ```text
//! cargo build --release -p valet-cli
//! cargo bench -p valet-resource --bench propagation
//! ```
//!
//! Setup (all torn down at the end except the database, left for inspection):
//! - a private nats-server with JetStream on a free loopback port (temporary store), or
//!   the NATS of `LAG_BENCH_NATS_URL` (e.g. `nats://127.0.0.1:4222`; then the SDK replays
//!   whatever that stream already holds);
//! - database `valet_lag_bench` on `LAG_BENCH_PG` (dropped and re-created with
//!   `valet migrate`), two confidential clients made with `valet client create --json`;
//! - `target/release/valet serve` on 127.0.0.1:<free port> (log:
//!   `.build/bench/propagation-valet.log`);
//! - the SDK in this process: `Validator::connect` on the same NATS.
//!
//! Measured:
//! 1. Revocation propagation lag: tokens are issued and seen by the SDK; then, while a
//!    background loop keeps issuing client_credentials tokens, each one is revoked in turn
//!    (POST /revoke) and a blocking thread polls `Validator::check` (about every 50 µs)
//!    from the moment the 200 arrives until it answers `Revoked`. p50/p99/max over
//!    `LAG_BENCH_SAMPLES` revocations (default 1,000, after 20 warm-up ones). A plain
//!    NATS subscription on `valet.v1.token.revoked.>` timestamps each message as it is
//!    published, which splits the lag into the server side (commit, relay, JetStream)
//!    and the SDK side (JetStream consumer, store).
//! 2. Local validation on one thread: `Validator::check` over the live tokens of that
//!    run (SHA-256 of the token included): checks per second and per-call latency.
//! 3. Remote validation of the same tokens: POST /introspect from one client thread
//!    (a current-thread runtime), one request in flight (round-trip latency) and 16 in
//!    flight (throughput from one core).
//!
//! 1b. The same for JWT access tokens (a client with `--access-token-format jwt`, ES256;
//!    the SDK verifies them offline and must still refuse them once revoked):
//!    `LAG_BENCH_JWT_SAMPLES` revocations (default 500).
//!
//! 4. Revocation propagation while the relay leader is killed: two more `valet serve`
//!    replicas join the first; for `LAG_BENCH_FAILOVER_SECS` (30) a token is revoked
//!    every 20 ms through any live replica while, once a second, the replica whose relay
//!    is active is killed (`kill -9`) and started again. p50/p99 of the lag and the
//!    worst one (the longest gap a revocation waited through), and the kills made.
//!
//! Prints a markdown table with the goals (propagation p99 < 50 ms, and < 5 ms without
//! faults; local ≥ 1,000,000 checks/s per core; a local check ≥ 1,000× faster than an
//! introspection round trip), also written to `.build/bench/propagation-report.md`, and one JSON line to
//! `.build/bench/propagation-results.jsonl`. Missing goals are reported, not fatal; the
//! exit status is non-zero only when something could not be measured.
//!
//! Environment: `VALET_BIN` (default `<workspace>/target/release/valet`),
//! `LAG_BENCH_PG` (default `postgres://postgres@127.0.0.1:5432`), `LAG_BENCH_DB`
//! (default `valet_lag_bench`), `LAG_BENCH_NATS_URL` (default: a private server),
//! `LAG_BENCH_SAMPLES` (1000), `LAG_BENCH_ISSUERS` (background issuance loops, 2),
//! `LAG_BENCH_SECS` (length of each validation measurement, 3), `LAG_BENCH_FAILOVER_SECS`
//! (length of the leader-kill phase, 30).

mod failover;
mod http;
mod lag;
mod processes;
mod report;
mod stats;
mod validation;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;
use valet_resource::{JwtConfig, Validator, ValidatorConfig};

use crate::http::{http, issue};
use crate::lag::{measure_lag, wait_valid, Lag};
use crate::processes::{create_client, run, serve, valet, Client, PrivateNats};
use crate::report::report;
use crate::validation::{measure_local, measure_remote, Local, Remote, REMOTE_IN_FLIGHT};

type Error = Box<dyn std::error::Error + Send + Sync>;

const WARMUP: usize = 20;
const POLL_EVERY: Duration = Duration::from_micros(50);
const GOAL_P99_MS: f64 = 50.0;
const GOAL_P99_NO_FAULTS_MS: f64 = 5.0;
const GOAL_LOCAL_PER_SEC: f64 = 1_000_000.0;
const GOAL_RATIO: f64 = 1_000.0;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn log(message: impl AsRef<str>) {
    eprintln!("[bench-propagation] {}", message.as_ref());
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(error) = runtime.block_on(bench()) {
        log(format!("error: {error}"));
        std::process::exit(1);
    }
}

async fn bench() -> Result<(), Error> {
    let root = workspace();
    let bin = std::env::var_os("VALET_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/valet"));
    if !bin.is_file() {
        return Err(format!(
            "{} not found: cargo build --release -p valet-cli",
            bin.display()
        )
        .into());
    }
    let samples = env_num("LAG_BENCH_SAMPLES", 1000).max(1);
    let background = env_num("LAG_BENCH_ISSUERS", 2);
    let secs: f64 = env_or("LAG_BENCH_SECS", "3").parse().unwrap_or(3.0);
    let pg = env_or("LAG_BENCH_PG", "postgres://postgres@127.0.0.1:5432");
    let pg = pg.trim_end_matches('/');
    let db = env_or("LAG_BENCH_DB", "valet_lag_bench");
    if !db.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err("LAG_BENCH_DB: letters, digits and _ only".into());
    }
    let db_url = format!("{pg}/{db}");
    let out_dir = root.join(".build/bench");
    std::fs::create_dir_all(&out_dir)?;

    let private;
    let nats_url = match std::env::var("LAG_BENCH_NATS_URL")
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(url) => url,
        None => {
            private = PrivateNats::start().await?;
            private.url.clone()
        }
    };
    log(format!("NATS {nats_url}; database {db} (re-created)"));
    let mut drop_db = Command::new("psql");
    drop_db.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        &format!("{pg}/postgres"),
        "-c",
        &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
    ]);
    run(drop_db, "psql DROP DATABASE").await?;
    let mut migrate = valet(&bin, &db_url, &nats_url);
    migrate.arg("migrate");
    run(migrate, "valet migrate").await?;
    let issuer = create_client(&bin, &db_url, &nats_url, "lag-bench-issuer", &[]).await?;
    let rs = create_client(&bin, &db_url, &nats_url, "lag-bench-resource-server", &[]).await?;
    let jwt_issuer = create_client(
        &bin,
        &db_url,
        &nats_url,
        "lag-bench-jwt-issuer",
        &[
            "--access-token-format",
            "jwt",
            "--access-token-signed-response-alg",
            "ES256",
        ],
    )
    .await?;
    let log_path = out_dir.join("propagation-valet.log");
    // Dropping a server kills it (`kill_on_drop`), on errors too.
    let (server, base) = serve(&bin, &db_url, &nats_url, &log_path, "127.0.0.1:0").await?;
    log(format!(
        "{} serve on {base} (release: {})",
        bin.display(),
        bin.starts_with(root.join("target/release"))
    ));

    // JWTs for the server's default audience (its issuer) are verified too.
    let validator =
        Validator::connect(ValidatorConfig::new(&nats_url).with_jwt(JwtConfig::new(&base, &base)))
            .await?;
    // The stream appears once the relay leads; the SDK retries until then.
    validator
        .wait_ready(Some(Duration::from_secs(60)))
        .await
        .map_err(|e| format!("the SDK did not become ready: {e}"))?;
    log("SDK ready");
    let (lag, local, remote) = measure(
        &validator, &base, &nats_url, &issuer, &rs, samples, background, secs,
    )
    .await?;
    let jwt_samples = env_num("LAG_BENCH_JWT_SAMPLES", 500).max(1);
    log(format!(
        "revocation propagation of {jwt_samples} JWT access tokens (ES256)"
    ));
    let jwt_lag = measure_lag(
        &validator,
        &nats_url,
        &base,
        &jwt_issuer,
        jwt_samples,
        background,
        Arc::new(Mutex::new(Vec::new())),
    )
    .await?;
    let fleet = failover::Fleet {
        bin,
        db_url,
        nats_url,
        log_path,
    };
    let failover_secs = env_num("LAG_BENCH_FAILOVER_SECS", 30) as u64;
    let failover = failover::measure(
        &fleet,
        (server, base),
        &validator,
        &issuer,
        Duration::from_secs(failover_secs),
    )
    .await?;
    report(
        &out_dir, &issuer.id, samples, background, &lag, &jwt_lag, &local, &remote, &failover,
    )
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    validator: &Validator,
    base: &str,
    nats_url: &str,
    issuer: &Client,
    rs: &Client,
    samples: usize,
    background: usize,
    secs: f64,
) -> Result<(Lag, Local, Remote), Error> {
    let live = Arc::new(Mutex::new(Vec::new()));
    let lag = measure_lag(
        validator,
        nats_url,
        base,
        issuer,
        samples,
        background,
        live.clone(),
    )
    .await?;

    // The background tokens are all valid and (once the last one arrived) known locally.
    let tokens: Vec<String> = std::mem::take(&mut *live.lock().unwrap());
    if let Some(last) = tokens.last() {
        wait_valid(validator, last, Duration::from_secs(30)).await?;
    }
    let mut tokens: Vec<String> = tokens
        .into_iter()
        .filter(|t| validator.check(t).is_ok())
        .collect();
    if tokens.len() < 100 {
        let http = http();
        for _ in 0..1000 {
            tokens.push(issue(&http, base, issuer).await?);
        }
        wait_valid(
            validator,
            tokens.last().expect("tokens"),
            Duration::from_secs(30),
        )
        .await?;
    }
    log(format!(
        "local validation over {} live tokens ({secs} s, one thread)",
        tokens.len()
    ));
    let v = validator.clone();
    let local_tokens = tokens.clone();
    let local = tokio::task::spawn_blocking(move || measure_local(&v, &local_tokens, secs)).await?;

    log(format!("introspection of the same tokens from one thread ({secs} s at 1, then {REMOTE_IN_FLIGHT} in flight)"));
    let (base, rs) = (base.to_owned(), rs.clone());
    let remote =
        tokio::task::spawn_blocking(move || measure_remote(base, rs, tokens, secs)).await??;
    Ok((lag, local, remote))
}
