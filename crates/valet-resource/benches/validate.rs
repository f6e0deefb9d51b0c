//! Local `Validator::check` throughput on one thread (SHA-256 of the presented token
//! included) and the latency distribution of a local hit. Prints one line of JSON.
//!
//! `cargo bench -p valet-resource --bench validate`
//! (`VALIDATE_BENCH_SECS` sets the throughput run, default 1.5 s.)

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use valet_resource::valet_wire::{EventType, TokenEvent, SCHEMA_VERSION};
use valet_resource::{token_digest, MemoryTokenStore, TokenStore, Validator};

const TOKENS: usize = 100_000;

/// A Valet-like access token: 32 random-looking bytes, base64url (43 characters).
fn token(i: usize) -> String {
    let bytes = Sha256::digest(i.to_le_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn main() {
    let secs: f64 = std::env::var("VALIDATE_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.5);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let store = Arc::new(MemoryTokenStore::new());
    let tokens: Vec<String> = (0..TOKENS).map(token).collect();
    for (i, token) in tokens.iter().enumerate() {
        let event = TokenEvent {
            schema_version: SCHEMA_VERSION,
            event_id: format!("event-{i}"),
            position: i as i64 + 1,
            event_type: EventType::TokenIssued,
            occurred_at: "2026-01-01T00:00:00.000Z".into(),
            client_id: "printer".into(),
            grant_id: format!("grant-{}", i / 2),
            token_sha256: Some(hex::encode(token_digest(token))),
            token_type: Some("access_token".into()),
            sub: Some(format!("user-{}", i % 1000)),
            username: Some(format!("user{}", i % 1000)),
            scope: Some("designs:read designs:write".into()),
            expires_at: Some(now + 3600),
            reason: None,
        };
        store.apply(&event, i as u64 + 1, now).expect("apply");
    }
    let validator = Validator::detached(store, None).expect("validator");

    // Warm up.
    for token in tokens.iter().take(20_000) {
        black_box(validator.check(black_box(token)).is_ok());
    }

    // Throughput: one thread, round-robin over the tokens, checking the clock every 4096.
    let limit = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut checks: u64 = 0;
    let mut ok: u64 = 0;
    'outer: loop {
        for token in &tokens {
            ok += u64::from(validator.check(black_box(token)).is_ok());
            checks += 1;
            if checks % 4096 == 0 && start.elapsed() >= limit {
                break 'outer;
            }
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(ok, checks, "every check is a hit");
    let per_sec = checks as f64 / elapsed.as_secs_f64();

    // For scale: the SHA-256 of a token alone, same loop shape.
    let start_sha = Instant::now();
    let mut rounds: u64 = 0;
    'sha: loop {
        for token in &tokens {
            black_box(token_digest(black_box(token)));
            rounds += 1;
            if rounds % 4096 == 0 && start_sha.elapsed() >= limit / 3 {
                break 'sha;
            }
        }
    }
    let sha_ns = start_sha.elapsed().as_nanos() as f64 / rounds as f64;

    // Latency of single hits.
    let samples = 200_000;
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let token = &tokens[(i * 7919) % TOKENS];
        let t0 = Instant::now();
        let result = validator.check(black_box(token));
        let dt = t0.elapsed();
        assert!(black_box(result).is_ok());
        latencies.push(dt.as_nanos() as u64);
    }
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{}",
        serde_json::json!({
            "bench": "valet_resource_check",
            "threads": 1,
            "tokens_in_store": TOKENS,
            "token_len": tokens[0].len(),
            "checks": checks,
            "seconds": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "checks_per_sec_per_core": per_sec.round(),
            "sha256_only_ns": (sha_ns * 10.0).round() / 10.0,
            "latency_ns": { "p50": pct(0.50), "p99": pct(0.99), "p999": pct(0.999), "max": latencies[latencies.len() - 1] },
        })
    );
}
