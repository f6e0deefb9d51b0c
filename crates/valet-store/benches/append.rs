//! `make bench`: append throughput of the PostgreSQL event store at 1, 8 and 32
//! concurrent writers, side by side with raw single-row INSERT transactions driven by
//! pgbench against the same PostgreSQL in the same run.
//!
//! Each append is what issuing a client_credentials token costs the log: one event
//! (~0.5 KB of JSON) opening a new stream, in its own transaction. pgbench inserts the
//! same JSON into a table with only a primary key, one row per transaction.
//!
//! Environment: BENCH_SECONDS (default 10), BENCH_WRITERS (default "1,8,32"),
//! VALET_TEST_DATABASE_URL (server URL, default postgres://postgres@127.0.0.1:5432);
//! the bench drops and recreates the database `valet_bench` on it.

use std::error::Error;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::config::Host;
use uuid::Uuid;
use valet_app::{EventMetadata, EventStore, ExpectedVersion, NewEvent};
use valet_domain::grant::{self, AccessTokenIssue, GrantOrigin};
use valet_domain::{ClientId, Event, GrantId, ScopeSet, StreamId, Timestamp, TokenHash};
use valet_store::{PgEventStore, PgStoreConfig};

type BoxError = Box<dyn Error + Send + Sync>;

struct Row {
    writers: usize,
    appends_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    pgbench_tps: Option<f64>,
}

/// A client_credentials token, as /token records it.
fn sample_event() -> Event {
    let at = Timestamp::from_unix_millis(1_764_300_000_000);
    let scope = ScopeSet::parse("read write").expect("scope");
    grant::Event::GrantIssued {
        grant_id: GrantId::new(Uuid::now_v7()),
        client_id: ClientId::parse("bench-client").expect("client id"),
        subject: None,
        scope: scope.clone(),
        origin: GrantOrigin::ClientCredentials,
        access: AccessTokenIssue {
            jti: None,
            hash: TokenHash::of("bench-token"),
            scope,
            issued_at: at,
            expires_at: at.plus_seconds(3600),
        },
        refresh: None,
        at,
    }
    .into()
}

fn main() -> Result<(), BoxError> {
    let seconds: u64 = env_or("BENCH_SECONDS", "10").parse()?;
    let writers: Vec<usize> = env_or("BENCH_WRITERS", "1,8,32")
        .split(',')
        .map(|w| w.trim().parse())
        .collect::<Result<_, _>>()?;
    let server = env_or(
        "VALET_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432",
    );
    let url = format!("{}/valet_bench", server.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(prepare_database(&url))?;

    let pgbench = pgbench_script(&url)?;
    let mut rows = Vec::new();
    for &n in &writers {
        eprintln!("[bench] {n} writer(s): valet appends for {seconds} s");
        runtime.block_on(checkpoint(&url))?;
        let (rate, p50, p99) =
            runtime.block_on(valet_appends(&url, n, Duration::from_secs(seconds)))?;
        eprintln!("[bench] {n} writer(s): pgbench single-row INSERT for {seconds} s");
        runtime.block_on(checkpoint(&url))?;
        let tps = match &pgbench {
            Some(args) => run_pgbench(args, n, seconds)?,
            None => None,
        };
        rows.push(Row {
            writers: n,
            appends_per_s: rate,
            p50_ms: p50,
            p99_ms: p99,
            pgbench_tps: tps,
        });
    }

    println!();
    println!("Event store appends vs raw single-row INSERT transactions ({seconds} s each, same PostgreSQL)");
    println!();
    println!("| writers | valet appends/s | append p50 ms | append p99 ms | pgbench INSERT tx/s | valet / pgbench |");
    println!("|--------:|----------------:|--------------:|--------------:|--------------------:|----------------:|");
    for row in &rows {
        let (tps, ratio) = match row.pgbench_tps {
            Some(tps) => (
                format!("{tps:.0}"),
                format!("{:.0}%", 100.0 * row.appends_per_s / tps),
            ),
            None => ("n/a".to_owned(), "n/a".to_owned()),
        };
        println!(
            "| {:>7} | {:>15.0} | {:>13.2} | {:>13.2} | {:>19} | {:>15} |",
            row.writers, row.appends_per_s, row.p50_ms, row.p99_ms, tps, ratio
        );
    }
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn admin(url: &str, database: &str) -> Result<tokio_postgres::Client, BoxError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.dbname(database);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn prepare_database(url: &str) -> Result<(), BoxError> {
    admin(url, "postgres")
        .await?
        .batch_execute("DROP DATABASE IF EXISTS valet_bench WITH (FORCE)")
        .await?;
    valet_store::migrate(url).await?;
    admin(url, "valet_bench")
        .await?
        .batch_execute(
            "CREATE TABLE raw_inserts (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                payload JSONB NOT NULL
            )",
        )
        .await?;
    Ok(())
}

/// Starts each measurement from a clean WAL state, so one run's checkpoint does not land
/// in the next one.
async fn checkpoint(url: &str) -> Result<(), BoxError> {
    admin(url, "valet_bench")
        .await?
        .batch_execute("CHECKPOINT")
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

async fn valet_appends(
    url: &str,
    writers: usize,
    length: Duration,
) -> Result<(f64, f64, f64), BoxError> {
    let mut config = PgStoreConfig::new(url);
    config.pool_size = writers + 2;
    let store = Arc::new(PgEventStore::connect(config).await?);
    // Warm every connection's prepared statements outside the measurement.
    warm_up(&store, writers).await?;

    let start = Instant::now();
    let deadline = start + length;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            while Instant::now() < deadline {
                let began = Instant::now();
                append_one(&store).await?;
                latencies.push(began.elapsed().as_micros() as u32);
            }
            Ok::<_, BoxError>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        let index = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(index).copied().unwrap_or(0) as f64 / 1000.0
    };
    Ok((latencies.len() as f64 / elapsed, pct(0.50), pct(0.99)))
}

async fn warm_up(store: &Arc<PgEventStore>, writers: usize) -> Result<(), BoxError> {
    let mut tasks = Vec::new();
    for _ in 0..writers + 2 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                append_one(&store).await?;
            }
            Ok::<_, BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// The event is the caller's work, not the store's: build it once, as pgbench's script
/// holds one literal. (Serializing it is the store's: that is measured.)
static EVENT: std::sync::LazyLock<Event> = std::sync::LazyLock::new(sample_event);

async fn append_one(store: &PgEventStore) -> Result<(), BoxError> {
    let stream = StreamId::grant(&GrantId::new(Uuid::now_v7()));
    let event = NewEvent::new(
        Uuid::now_v7(),
        EVENT.clone(),
        EventMetadata {
            actor: Some("client:bench-client".to_owned()),
            request_id: Some(Uuid::now_v7().to_string()),
            ..EventMetadata::default()
        },
    );
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event])
        .await?;
    Ok(())
}

/// The pgbench connection arguments and script, or None (with a note) when pgbench is
/// not installed.
fn pgbench_script(url: &str) -> Result<Option<Vec<String>>, BoxError> {
    if Command::new("pgbench").arg("--version").output().is_err() {
        eprintln!("[bench] pgbench not found: install postgresql-contrib (make setup does)");
        return Ok(None);
    }
    let config: tokio_postgres::Config = url.parse()?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let script =
        std::env::temp_dir().join(format!("valet-bench-insert-{}.sql", std::process::id()));
    let sql = format!(
        "INSERT INTO raw_inserts (payload) VALUES ('{}');\n",
        sample_event().payload_json().replace('\'', "''")
    );
    std::fs::write(&script, sql)?;
    Ok(Some(vec![
        "-h".into(),
        host,
        "-p".into(),
        port.to_string(),
        "-U".into(),
        user,
        "-n".into(),
        "-f".into(),
        script.display().to_string(),
    ]))
}

fn run_pgbench(args: &[String], clients: usize, seconds: u64) -> Result<Option<f64>, BoxError> {
    let threads = clients.min(2);
    let output = Command::new("pgbench")
        .args(args)
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &threads.to_string(),
            "-T",
            &seconds.to_string(),
        ])
        .arg("valet_bench")
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "pgbench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    // "tps = 1234.567890 (without initial connection time)"
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout
        .lines()
        .filter_map(|line| line.trim().strip_prefix("tps = "))
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok()))
}
