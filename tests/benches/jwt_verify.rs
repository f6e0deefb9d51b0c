//! The SDK verifying JWT access tokens offline, on one thread: a first-seen token
//! (signature and claims checked, then cached) and a cached one (the SHA-256 of the token,
//! the store's lookup and the cache's), for each algorithm Valet signs with. Keys are
//! generated as Valet generates them and announced as the stream announces them.
//!
//! `cargo bench -p valet-tests --bench jwt_verify`
//! (`JWT_BENCH_TOKENS`: distinct tokens per algorithm, default 20,000;
//! `JWT_BENCH_SECS`: length of the cached run, default 1.5 s.)
//!
//! Prints a markdown table with the goals (first seen ≥ 20,000/s, cached ≥ 1,000,000/s
//! per core) and one JSON line per algorithm.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use valet_app::keys::material::generate;
use valet_domain::signing_key::Algorithm;
use valet_resource::valet_wire::{KeyEvent, KeyEventType, SCHEMA_VERSION};
use valet_resource::{JwtConfig, MemoryTokenStore, Source, Validator};

const ISSUER: &str = "https://valet.example";
const AUDIENCE: &str = "https://designs.example";
const GOAL_FIRST_SEEN: f64 = 20_000.0;
const GOAL_CACHED: f64 = 1_000_000.0;

fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

struct Result {
    alg: &'static str,
    first_seen_per_s: f64,
    cached_per_s: f64,
    /// The signature check alone (ring, through jsonwebtoken), for scale.
    signature_per_s: f64,
}

fn measure(algorithm: Algorithm, tokens: usize, secs: f64) -> Result {
    let pair = generate(algorithm).expect("a key pair");
    let kid = format!("bench-{}", algorithm.as_str());
    let mut jwk = pair.public.members().clone();
    jwk.insert("kid".into(), kid.clone());
    let validator = Validator::detached_with_jwt(
        Arc::new(MemoryTokenStore::new()),
        None,
        Some(JwtConfig::new(ISSUER, AUDIENCE)),
    )
    .expect("validator");
    let now = now();
    validator.apply_key_event(&KeyEvent {
        schema_version: SCHEMA_VERSION,
        event_id: kid.clone(),
        position: 1,
        event_type: KeyEventType::KeyActivated,
        occurred_at: "2026-01-01T00:00:00.000Z".into(),
        kid: kid.clone(),
        alg: algorithm.as_str().into(),
        jwk,
        activates_at: now - 60,
        retired_at: None,
        published_until: None,
    });
    let (jose, key) = match algorithm {
        Algorithm::RS256 => (
            jsonwebtoken::Algorithm::RS256,
            EncodingKey::from_rsa_der(&pair.private_der),
        ),
        Algorithm::ES256 => (
            jsonwebtoken::Algorithm::ES256,
            EncodingKey::from_ec_der(&pair.private_der),
        ),
        Algorithm::EdDSA => (
            jsonwebtoken::Algorithm::EdDSA,
            EncodingKey::from_ed_der(&pair.private_der),
        ),
    };
    let mut header = Header::new(jose);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid);
    let signed: Vec<String> = (0..tokens)
        .map(|i| {
            let claims = json!({
                "iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-{}", i % 1000),
                "client_id": "printer", "iat": now, "exp": now + 3600,
                "jti": format!("jti-{i}"), "scope": "designs:read designs:write",
            });
            jsonwebtoken::encode(&header, &claims, &key).expect("signed")
        })
        .collect();

    // The signature alone: what no verifier can go below.
    let decoding = match algorithm {
        Algorithm::RS256 => jsonwebtoken::DecodingKey::from_rsa_components(
            &pair.public.members()["n"],
            &pair.public.members()["e"],
        ),
        Algorithm::ES256 => jsonwebtoken::DecodingKey::from_ec_components(
            &pair.public.members()["x"],
            &pair.public.members()["y"],
        ),
        Algorithm::EdDSA => {
            jsonwebtoken::DecodingKey::from_ed_components(&pair.public.members()["x"])
        }
    }
    .expect("a decoding key");
    let parts: Vec<(&str, &str)> = signed
        .iter()
        .map(|t| t.rsplit_once('.').expect("a JWS"))
        .collect();
    let start = Instant::now();
    for (message, signature) in &parts {
        let ok = jsonwebtoken::crypto::verify(signature, message.as_bytes(), &decoding, jose)
            .expect("verifies");
        assert!(black_box(ok));
    }
    let signature_per_s = tokens as f64 / start.elapsed().as_secs_f64();

    // First seen: each token once.
    let start = Instant::now();
    for token in &signed {
        let info = validator.check(black_box(token)).expect("verifies");
        assert_eq!(info.source, Source::Jwt);
    }
    let first_seen_per_s = tokens as f64 / start.elapsed().as_secs_f64();

    // Cached: round-robin over the same tokens, the clock read every 4096 checks.
    let limit = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut checks: u64 = 0;
    'outer: loop {
        for token in &signed {
            black_box(validator.check(black_box(token)).is_ok());
            checks += 1;
            if checks % 4096 == 0 && start.elapsed() >= limit {
                break 'outer;
            }
        }
    }
    let cached_per_s = checks as f64 / start.elapsed().as_secs_f64();
    Result {
        alg: algorithm.as_str(),
        first_seen_per_s,
        cached_per_s,
        signature_per_s,
    }
}

fn main() {
    let tokens = env_num("JWT_BENCH_TOKENS", 20_000.0).max(1.0) as usize;
    let secs = env_num("JWT_BENCH_SECS", 1.5);
    let results: Vec<Result> = Algorithm::ALL
        .into_iter()
        .map(|algorithm| measure(algorithm, tokens, secs))
        .collect();
    let met = |rate: f64, goal: f64| if rate >= goal { "met" } else { "missed" };
    println!(
        "| alg | first seen /s (goal ≥ 20,000) | cached /s (goal ≥ 1,000,000) | the signature alone /s |"
    );
    println!("|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {:.0} ({}) | {:.0} ({}) | {:.0} |",
            r.alg,
            r.first_seen_per_s,
            met(r.first_seen_per_s, GOAL_FIRST_SEEN),
            r.cached_per_s,
            met(r.cached_per_s, GOAL_CACHED),
            r.signature_per_s
        );
    }
    for r in &results {
        println!(
            "{}",
            json!({
                "bench": "jwt_verify", "alg": r.alg, "tokens": tokens,
                "first_seen_per_s": r.first_seen_per_s.round(),
                "cached_per_s": r.cached_per_s.round(),
                "signature_per_s": r.signature_per_s.round(),
            })
        );
    }
}
