//! The RFC 7662 fallback for tokens unknown locally.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use valet_resource::{Rejection, Source, Unavailable, Validator, ValidatorConfig};

fn active(token_type: &str, exp: i64) -> serde_json::Value {
    serde_json::json!({
        "active": true,
        "scope": "designs:read profile",
        "client_id": "printer",
        "token_type": token_type,
        "exp": exp,
        "iat": exp - 3600,
        "iss": "http://127.0.0.1:8080",
        "sub": "0192f4d2-0000-7000-8000-0000000b0b00",
        "username": "bob",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_for_unknown_tokens_and_caches_negative_answers() {
    let nats = TestNats::start().await;
    let js = nats.with_stream().await;
    let exp = unix_now() + 3600;
    publish(&js, &issued(1, "local", "grant-1", "designs:read", exp)).await;
    let stub = Introspection::start(HashMap::from([
        ("fresh-token".to_owned(), active("access_token", exp)),
        ("a-refresh-token".to_owned(), active("refresh_token", exp)),
    ]))
    .await;
    let validator = Validator::connect(config(&nats, &stub)).await.unwrap();
    validator.wait_ready(Some(WAIT)).await.unwrap();

    // Issued a moment ago, not yet on this service's stream: introspection says active.
    assert_eq!(validator.check("fresh-token"), Err(Rejection::Unknown));
    let info = validator
        .authenticate("fresh-token")
        .await
        .expect("active remotely");
    assert_eq!(info.source, Source::Introspection);
    assert_eq!(info.subject(), Some("bob"));
    assert_eq!(info.client_id, "printer");
    assert!(info.has_scope("designs:read"));
    assert_eq!(info.expires_at, exp);
    assert_eq!(info.grant_id, None);
    assert_eq!(stub.calls(), 1);
    assert_eq!(
        stub.seen_tokens(),
        ["fresh-token"],
        "the stub checked Basic auth and got the token"
    );

    // Unknown everywhere: one call, then the negative cache answers.
    assert_eq!(
        validator.authenticate("forged").await,
        Err(Rejection::Inactive)
    );
    assert_eq!(stub.calls(), 2);
    assert_eq!(
        validator.authenticate("forged").await,
        Err(Rejection::Inactive)
    );
    assert_eq!(stub.calls(), 2, "negative answers are cached");
    assert_eq!(validator.status().introspection_negative_hits, 1);

    // A refresh token introspects active but is no bearer credential.
    assert_eq!(
        validator.authenticate("a-refresh-token").await,
        Err(Rejection::Inactive)
    );
    assert_eq!(
        validator.authenticate("a-refresh-token").await,
        Err(Rejection::Inactive)
    );
    assert_eq!(stub.calls(), 3);

    // Local hits never call out.
    assert!(validator.authenticate("local").await.is_ok());
    assert_eq!(stub.calls(), 3);
    assert_eq!(validator.status().introspection_calls, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_answers_expire() {
    let nats = TestNats::start().await;
    let _js = nats.with_stream().await;
    let stub = Introspection::start(HashMap::new()).await;
    let mut introspection = stub.config();
    introspection.negative_ttl = Duration::from_millis(300);
    let validator =
        Validator::connect(ValidatorConfig::new(nats.url()).with_introspection(introspection))
            .await
            .unwrap();
    validator.wait_ready(Some(WAIT)).await.unwrap();
    assert_eq!(
        validator.authenticate("forged").await,
        Err(Rejection::Inactive)
    );
    assert_eq!(
        validator.authenticate("forged").await,
        Err(Rejection::Inactive)
    );
    assert_eq!(stub.calls(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        validator.authenticate("forged").await,
        Err(Rejection::Inactive)
    );
    assert_eq!(stub.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_off_unreachable_or_refused_is_never_a_pass() {
    let nats = TestNats::start().await;
    let _js = nats.with_stream().await;

    // Off: unknown tokens are simply unknown.
    let validator = Validator::connect(ValidatorConfig::new(nats.url()))
        .await
        .unwrap();
    validator.wait_ready(Some(WAIT)).await.unwrap();
    assert_eq!(
        validator.authenticate("whatever").await,
        Err(Rejection::Unknown)
    );

    // Unreachable: 503-class, not cached.
    let mut introspection = valet_resource::IntrospectionConfig::new(
        format!("http://127.0.0.1:{}/introspect", free_port()),
        RS_CLIENT_ID,
        RS_CLIENT_SECRET,
    );
    introspection.timeout = Duration::from_millis(500);
    let validator =
        Validator::connect(ValidatorConfig::new(nats.url()).with_introspection(introspection))
            .await
            .unwrap();
    validator.wait_ready(Some(WAIT)).await.unwrap();
    assert_eq!(
        validator.authenticate("whatever").await,
        Err(Rejection::Unavailable(Unavailable::Introspection))
    );

    // Wrong credentials: the stub answers 401, the SDK answers unavailable.
    let stub = Introspection::start(HashMap::new()).await;
    let mut introspection = stub.config();
    introspection.client_secret = "wrong".into();
    let validator =
        Validator::connect(ValidatorConfig::new(nats.url()).with_introspection(introspection))
            .await
            .unwrap();
    validator.wait_ready(Some(WAIT)).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            validator.authenticate("whatever").await,
            Err(Rejection::Unavailable(Unavailable::Introspection))
        );
    }
    assert_eq!(stub.calls(), 2, "errors are not cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_catching_up_authenticate_asks_the_server() {
    // No stream yet: the validator cannot be ready, but introspection still answers.
    let nats = TestNats::start().await;
    let exp = unix_now() + 3600;
    let stub = Introspection::start(HashMap::from([(
        "fresh-token".to_owned(),
        active("access_token", exp),
    )]))
    .await;
    let validator = Validator::connect(config(&nats, &stub)).await.unwrap();
    assert!(!validator.ready());
    assert_eq!(
        validator.check("fresh-token"),
        Err(Rejection::Unavailable(Unavailable::CatchingUp))
    );
    let info = validator.authenticate("fresh-token").await.unwrap();
    assert_eq!(info.source, Source::Introspection);
    assert_eq!(
        validator.authenticate("forged").await,
        Err(Rejection::Inactive)
    );
    assert_eq!(stub.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unknown_tokens_respect_the_cap() {
    let nats = TestNats::start().await;
    let _js = nats.with_stream().await;
    let stub = Introspection::start_slow(HashMap::new(), Duration::from_millis(100)).await;
    let mut introspection = stub.config();
    introspection.max_concurrency = 2;
    let validator =
        Validator::connect(ValidatorConfig::new(nats.url()).with_introspection(introspection))
            .await
            .unwrap();
    validator.wait_ready(Some(WAIT)).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let validator = validator.clone();
            tokio::spawn(async move { validator.authenticate(&format!("forged-{}", i % 5)).await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().is_err());
    }
    assert_eq!(stub.max_in_flight(), 2, "never more than the cap in flight");
    // 5 distinct tokens; the re-check of the negative cache after waiting for a slot
    // keeps most repeats off the wire (no single-flight: a repeat can overlap its first).
    assert!((5..=10).contains(&stub.calls()), "{}", stub.calls());
}
