//! The authorization-code round trip of a signed-in user whose consent is remembered —
//! `GET /authorize` → 302 with a code → `POST /token` — with and without `openid`, and
//! what the id_token costs: the server's CPU time per round trip (from /proc), so the
//! ratio holds whatever else the machine is doing.
//!
//! Run: `cargo build --release -p valet-cli && VALET_BIN=$PWD/target/release/valet \
//!       cargo bench -p valet-tests --bench code_flow`
//! Environment: DURATION (seconds per measurement, default 10), CONCURRENCY (default 32),
//! ROUNDS (default 3, alternating the variants), ALGS (id_token algorithms to measure,
//! default "RS256 ES256 EdDSA").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use valet_tests::server::{AuthRequest, ClientCreds, ClientSpec, Pkce, TestServer, APP_CB};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + system) of process `pid` so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // SAFETY-free: the clock tick is 100 Hz on Linux unless configured otherwise.
    ticks / env_or("CLK_TCK", 100.0)
}

struct Measurement {
    label: String,
    flows: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_ms_per_flow: f64,
}

/// Whether a variant's token responses carry an id_token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdToken {
    Expected,
    Absent,
}

/// One way of running the flow: a client and the scope it asks for.
struct Variant {
    label: String,
    client: ClientCreds,
    scope: &'static str,
    id_token: IdToken,
}

/// How hard to push.
#[derive(Debug, Clone, Copy)]
struct Load {
    duration: Duration,
    concurrency: usize,
}

/// One variant: `load.concurrency` loops of authorize → token for `load.duration`.
async fn measure(server: &TestServer, variant: &Variant, cookie: &str, load: Load) -> Measurement {
    let (label, client, scope) = (&variant.label, &variant.client, variant.scope);
    let expect_id_token = variant.id_token == IdToken::Expected;
    let (duration, concurrency) = (load.duration, load.concurrency);
    let pkce = Pkce::new();
    let authorize = server.url(
        &AuthRequest::new(&client.client_id, APP_CB)
            .pkce(&pkce)
            .scope(scope)
            .path(),
    );
    let token_url = server.url("/token");
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = cpu_seconds(server.pid());
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (authorize, token_url, stop) = (authorize.clone(), token_url.clone(), stop.clone());
            let (cookie, verifier) = (cookie.to_owned(), pkce.verifier.clone());
            let (id, secret) = (
                client.client_id.clone(),
                client.client_secret.clone().expect("secret"),
            );
            tokio::spawn(async move {
                let http = valet_tests::server::http_client();
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let resp = http
                        .get(&authorize)
                        .header("cookie", &cookie)
                        .send()
                        .await
                        .expect("GET /authorize");
                    assert_eq!(resp.status(), 302, "a remembered consent answers 302");
                    let location = resp.headers()["location"]
                        .to_str()
                        .expect("location")
                        .to_owned();
                    let code = url::Url::parse(&location)
                        .expect("url")
                        .query_pairs()
                        .find(|(k, _)| k == "code")
                        .map(|(_, v)| v.into_owned())
                        .expect("a code");
                    let resp = http
                        .post(&token_url)
                        .basic_auth(&id, Some(&secret))
                        .form(&[
                            ("grant_type", "authorization_code"),
                            ("code", &code),
                            ("redirect_uri", APP_CB),
                            ("code_verifier", &verifier),
                        ])
                        .send()
                        .await
                        .expect("POST /token");
                    assert_eq!(resp.status(), 200);
                    let body = resp.text().await.expect("body");
                    assert_eq!(body.contains("\"id_token\""), expect_id_token, "{body}");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("a load task"));
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.pid()) - cpu_before;
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let flows = latencies.len() as u64;
    Measurement {
        label: label.to_owned(),
        flows,
        seconds,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        cpu_ms_per_flow: cpu * 1000.0 / flows.max(1) as f64,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let duration = Duration::from_secs(env_or("DURATION", 10));
    let concurrency = env_or("CONCURRENCY", 32usize);
    let rounds = env_or("ROUNDS", 3usize);
    let algs: Vec<String> = std::env::var("ALGS")
        .unwrap_or_else(|_| "RS256 ES256 EdDSA".into())
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    // Plenty of failed-auth headroom and long codes: nothing but the flow is measured.
    let server = TestServer::start_with(&[("VALET_LOG", "warn")]).await;
    let user = server.create_user("alice", "a long passphrase").await;
    let mut variants: Vec<Variant> = Vec::new();
    let plain = server
        .create_client(
            &ClientSpec::confidential("plain")
                .redirect(APP_CB)
                .scopes("read openid"),
        )
        .await;
    variants.push(Variant {
        label: "without openid".into(),
        client: plain,
        scope: "read",
        id_token: IdToken::Absent,
    });
    for alg in &algs {
        let client = server
            .create_client(
                &ClientSpec::confidential(alg)
                    .redirect(APP_CB)
                    .scopes("read openid")
                    .id_token_alg(alg),
            )
            .await;
        variants.push(Variant {
            label: format!("openid, id_token {alg}"),
            client,
            scope: "openid read",
            id_token: IdToken::Expected,
        });
    }
    // Sign in once and remember consent for every client (one browser, one session).
    let mut browser = server.browser();
    for variant in &variants {
        let req = AuthRequest::new(&variant.client.client_id, APP_CB)
            .pkce(&Pkce::new())
            .scope(variant.scope);
        server.code(&mut browser, &user, &req).await;
    }
    let cookie = browser.cookie_header().expect("a session cookie");
    eprintln!(
        "code flow: {} variants, {rounds} rounds of {duration:?} at {concurrency} connections",
        variants.len()
    );
    let mut results: Vec<Vec<Measurement>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, variant) in variants.iter().enumerate() {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let load = Load {
                duration,
                concurrency,
            };
            let m = measure(&server, variant, &cookie, load).await;
            eprintln!(
                "round {}: {:<22} {:>7.0} flows/s  p50 {:>6.2} ms  p99 {:>6.2} ms  server CPU {:.3} ms/flow",
                round + 1,
                m.label,
                m.flows as f64 / m.seconds,
                m.p50_ms,
                m.p99_ms,
                m.cpu_ms_per_flow
            );
            results[i].push(m);
        }
    }
    let base_cpu = median(
        &mut results[0]
            .iter()
            .map(|m| m.cpu_ms_per_flow)
            .collect::<Vec<_>>(),
    );
    println!(
        "| variant | flows/s | p50 ms | p99 ms | server CPU ms/flow | CPU vs without openid |"
    );
    println!("|---|---|---|---|---|---|");
    for ms in &results {
        let rps = median(
            &mut ms
                .iter()
                .map(|m| m.flows as f64 / m.seconds)
                .collect::<Vec<_>>(),
        );
        let p50 = median(&mut ms.iter().map(|m| m.p50_ms).collect::<Vec<_>>());
        let p99 = median(&mut ms.iter().map(|m| m.p99_ms).collect::<Vec<_>>());
        let cpu = median(&mut ms.iter().map(|m| m.cpu_ms_per_flow).collect::<Vec<_>>());
        println!(
            "| {} | {rps:.0} | {p50:.2} | {p99:.2} | {cpu:.3} | {:+.0}% |",
            ms[0].label,
            (cpu / base_cpu - 1.0) * 100.0
        );
    }
    println!(
        "(medians of {rounds} rounds; goal: id_token signing adds at most 25% to the flow's CPU)"
    );
    server.stop().await;
}
