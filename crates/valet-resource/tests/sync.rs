//! The SDK against a real nats-server: replay, revocations, duplicates, catch-up,
//! fail-closed decoding, expiry, reconnects.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use valet_resource::valet_wire::{STREAM, SUBJECTS};
use valet_resource::{
    MemoryTokenStore, Rejection, Source, State, TokenStore, Unavailable, Validator,
    ValidatorConfig, WaitError,
};

const HOUR: i64 = 3600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_token_validates_locally() {
    let nats = TestNats::start().await;
    let js = nats.with_stream().await;
    let stub = Introspection::start(HashMap::new()).await;
    let expires_at = unix_now() + HOUR;
    publish(
        &js,
        &issued(
            1,
            "tok-alice",
            "grant-1",
            "designs:read profile",
            expires_at,
        ),
    )
    .await;

    let validator = Validator::connect(config(&nats, &stub)).await.unwrap();
    validator.wait_ready(Some(WAIT)).await.unwrap();

    let info = validator.check("tok-alice").expect("valid locally");
    assert_eq!(
        info.sub.as_deref(),
        Some("0192f4d2-0000-7000-8000-0000000a11ce")
    );
    assert_eq!(info.username.as_deref(), Some("alice"));
    assert_eq!(info.subject(), Some("alice"));
    assert_eq!(info.client_id, "printer");
    assert!(info.has_scope("designs:read") && info.has_scope("profile"));
    assert_eq!(info.expires_at, expires_at);
    assert_eq!(info.grant_id.as_deref(), Some("grant-1"));
    assert_eq!(info.source, Source::Local);
    assert_eq!(validator.authenticate("tok-alice").await.unwrap(), info);
    assert_eq!(validator.check("tok-other"), Err(Rejection::Unknown));
    assert_eq!(stub.calls(), 0, "a local hit never introspects");

    let status = validator.status();
    assert!(status.ready && status.connected, "{status:?}");
    assert_eq!(status.applied, 1);
    assert_eq!(status.last_applied.unwrap().stream_sequence, 1);

    // Events published after ready are followed live.
    publish(
        &js,
        &issued(2, "tok-later", "grant-2", "designs:read", expires_at),
    )
    .await;
    assert!(eventually(WAIT, || validator.check("tok-later").is_ok()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_apply_without_introspection() {
    let nats = TestNats::start().await;
    let js = nats.with_stream().await;
    let stub = Introspection::start(HashMap::new()).await;
    let exp = unix_now() + HOUR;
    // Grant 1 has two access tokens (a refresh happened); grant 2 one.
    publish(&js, &issued(10, "g1-a", "grant-1", "designs:read", exp)).await;
    publish(&js, &issued(11, "g1-b", "grant-1", "designs:read", exp)).await;
    publish(&js, &issued(12, "g2-a", "grant-2", "designs:read", exp)).await;
    publish(&js, &issued(13, "g3-a", "grant-3", "designs:read", exp)).await;

    let validator = Validator::connect(config(&nats, &stub)).await.unwrap();
    validator.wait_ready(Some(WAIT)).await.unwrap();
    for token in ["g1-a", "g1-b", "g2-a", "g3-a"] {
        assert!(validator.authenticate(token).await.is_ok(), "{token}");
    }

    publish(&js, &revoked(20, "g2-a", "grant-2")).await;
    publish(&js, &grant_revoked(21, "grant-1")).await;
    // Commit order: a revocation may carry a smaller log position than what came before.
    publish(&js, &revoked(5, "g3-a", "grant-3")).await;
    assert!(eventually(WAIT, || validator.status().applied == 7).await);

    for token in ["g1-a", "g1-b", "g2-a", "g3-a"] {
        assert_eq!(validator.check(token), Err(Rejection::Revoked), "{token}");
        assert_eq!(
            validator.authenticate(token).await,
            Err(Rejection::Revoked),
            "{token}"
        );
    }

    // A late duplicate issuance of the revoked grant (a token never seen before) and a
    // republished issuance of a revoked token do not resurrect anything.
    publish(&js, &issued(22, "g1-c", "grant-1", "designs:read", exp)).await;
    publish_with_id(
        &js,
        &issued(12, "g2-a", "grant-2", "designs:read", exp),
        "republish-12",
    )
    .await;
    assert!(
        eventually(WAIT, || validator
            .status()
            .last_applied
            .unwrap()
            .stream_sequence
            == 9)
        .await
    );
    assert_eq!(validator.check("g2-a"), Err(Rejection::Revoked));
    // Known as revoked, not merely unknown (a JWT's signature alone must not let it in).
    assert_eq!(validator.check("g1-c"), Err(Rejection::Revoked));
    assert_eq!(
        stub.calls(),
        0,
        "revocations are enforced from the stream alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_message_is_applied_once() {
    let nats = TestNats::start().await;
    let js = nats.with_stream().await;
    let exp = unix_now() + HOUR;
    let issuance = issued(1, "tok", "grant-1", "designs:read", exp);
    publish(&js, &issuance).await;
    publish(&js, &revoked(2, "tok", "grant-1")).await;
    // The relay crashed before its checkpoint and republished after the duplicate window:
    // same event, new Nats-Msg-Id, so JetStream keeps it.
    let sequence = publish_with_id(&js, &issuance, "relay-republish-1").await;
    assert_eq!(sequence, 3, "JetStream kept the copy");
    // Within the window, JetStream itself drops the copy.
    let ack = send(
        &js,
        issuance.subject(),
        issuance.to_json(),
        &issuance.event_id,
    )
    .await
    .await
    .unwrap();
    assert!(ack.duplicate);

    let validator = Validator::connect(ValidatorConfig::new(nats.url()))
        .await
        .unwrap();
    validator.wait_ready(Some(WAIT)).await.unwrap();
    let status = validator.status();
    assert_eq!((status.applied, status.duplicates), (2, 1), "{status:?}");
    assert_eq!(validator.check("tok"), Err(Rejection::Revoked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_up_after_1000_revocations_before_reporting_ready() {
    let nats = TestNats::start().await;
    let js = nats.with_stream().await;
    let stub = Introspection::start(HashMap::new()).await;
    let exp = unix_now() + HOUR;
    let tokens: Vec<String> = (0..1000).map(|i| format!("tok-{i:04}")).collect();
    let issuances: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| issued(i as i64 + 1, t, &format!("grant-{i}"), "designs:read", exp))
        .collect();
    publish_all(&js, &issuances).await;

    // The resource service is up and accepts the tokens...
    let online = Validator::connect(config(&nats, &stub)).await.unwrap();
    online.wait_ready(Some(WAIT)).await.unwrap();
    assert!(tokens.iter().all(|t| online.check(t).is_ok()));
    drop(online);

    // ...then goes offline while all 1,000 are revoked.
    let revocations: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| revoked(1001 + i as i64, t, &format!("grant-{i}")))
        .collect();
    publish_all(&js, &revocations).await;

    // It restarts: until ready no revoked token may pass (none can, ever).
    let validator = Validator::connect(config(&nats, &stub)).await.unwrap();
    let mut checks_before_ready = 0u64;
    let mut i = 0usize;
    let deadline = std::time::Instant::now() + WAIT;
    while !validator.ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            validator.status()
        );
        let token = &tokens[i % tokens.len()];
        assert!(
            validator.check(token).is_err(),
            "{token} accepted during catch-up"
        );
        i += 1;
        checks_before_ready += 1;
        if checks_before_ready % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let status = validator.status();
    assert_eq!(
        status.last_applied.unwrap().stream_sequence,
        2000,
        "{status:?}"
    );
    assert_eq!(status.applied, 2000);
    for token in &tokens {
        assert_eq!(validator.check(token), Err(Rejection::Revoked), "{token}");
        assert_eq!(validator.authenticate(token).await, Err(Rejection::Revoked));
    }
    assert_eq!(stub.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_schema_version_fails_closed() {
    let nats = TestNats::start().await;
    let js = nats.with_stream().await;
    let stub = Introspection::start(HashMap::new()).await;
    let exp = unix_now() + HOUR;
    publish(&js, &issued(1, "tok", "grant-1", "designs:read", exp)).await;
    let mut future: serde_json::Value =
        serde_json::from_slice(&revoked(2, "tok", "grant-1").to_json()).unwrap();
    future["schema_version"] = 2.into();
    future["new_field"] = "from the future".into();
    send(
        &js,
        "valet.v1.token.revoked.printer".into(),
        future.to_string().into_bytes(),
        "evt-2",
    )
    .await
    .await
    .unwrap();
    publish(&js, &issued(3, "tok-after", "grant-3", "designs:read", exp)).await;

    let validator = Validator::connect(config(&nats, &stub)).await.unwrap();
    let err = validator.wait_ready(Some(WAIT)).await.unwrap_err();
    assert!(
        matches!(&err, WaitError::Failed(why) if why.contains("unknown schema version 2")),
        "{err}"
    );
    let status = validator.status();
    assert_eq!(status.state, State::Failed);
    assert!(!status.ready && !validator.ready());
    assert_eq!(
        status.last_applied.unwrap().stream_sequence,
        1,
        "stopped at the bad message"
    );

    for token in ["tok", "tok-after", "unknown"] {
        assert_eq!(
            validator.check(token),
            Err(Rejection::Unavailable(Unavailable::Failed))
        );
        assert_eq!(
            validator.authenticate(token).await,
            Err(Rejection::Unavailable(Unavailable::Failed))
        );
    }
    assert_eq!(
        stub.calls(),
        0,
        "a failed validator does not fall back either"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!validator.ready(), "stays failed");

    // An undecodable payload stops it the same way.
    let other = TestNats::start().await;
    let js = other.with_stream().await;
    send(
        &js,
        "valet.v1.token.issued.printer".into(),
        b"{not json".to_vec(),
        "evt-x",
    )
    .await
    .await
    .unwrap();
    let validator = Validator::connect(ValidatorConfig::new(other.url()))
        .await
        .unwrap();
    assert!(matches!(
        validator.wait_ready(Some(WAIT)).await,
        Err(WaitError::Failed(_))
    ));
    assert_eq!(
        validator.check("tok"),
        Err(Rejection::Unavailable(Unavailable::Failed))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_rejected_and_evicted() {
    let nats = TestNats::start().await;
    let js = nats.with_stream().await;
    let stub = Introspection::start(HashMap::new()).await;
    let now = unix_now();
    publish(&js, &issued(1, "short", "grant-1", "designs:read", now + 2)).await;
    publish(&js, &issued(2, "stale", "grant-2", "designs:read", now - 5)).await;
    publish(
        &js,
        &issued(3, "long", "grant-3", "designs:read", now + HOUR),
    )
    .await;

    let store = Arc::new(MemoryTokenStore::new());
    let mut config = config(&nats, &stub);
    config.eviction_interval = Duration::from_secs(3600); // evicted by hand below
    let validator = Validator::connect_with_store(config, store.clone())
        .await
        .unwrap();
    validator.wait_ready(Some(WAIT)).await.unwrap();

    assert!(validator.check("short").is_ok());
    assert_eq!(
        validator.check("stale"),
        Err(Rejection::Unknown),
        "expired on arrival: not kept"
    );
    assert_eq!(store.stats().tokens, 2);
    assert!(eventually(Duration::from_secs(5), || unix_now() >= now + 2).await);
    assert_eq!(validator.check("short"), Err(Rejection::Expired));
    assert_eq!(
        validator.authenticate("short").await,
        Err(Rejection::Expired)
    );
    assert_eq!(
        stub.calls(),
        0,
        "an expired local token is not introspected"
    );

    assert_eq!(validator.evict_expired(), 1);
    assert_eq!(store.stats().tokens, 1);
    assert_eq!(validator.check("short"), Err(Rejection::Unknown));
    assert!(validator.check("long").is_ok());

    // The periodic eviction does the same on its own.
    let store = Arc::new(MemoryTokenStore::new());
    let mut config = ValidatorConfig::new(nats.url());
    config.eviction_interval = Duration::from_millis(100);
    publish(
        &js,
        &issued(4, "brief", "grant-4", "designs:read", unix_now() + 1),
    )
    .await;
    let validator = Validator::connect_with_store(config, store.clone())
        .await
        .unwrap();
    validator.wait_ready(Some(WAIT)).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || store.stats().tokens == 1).await);
    assert_eq!(validator.check("brief"), Err(Rejection::Unknown));
    assert!(validator.check("long").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_the_stream_then_catches_up() {
    let nats = TestNats::start().await;
    let validator = Validator::connect(ValidatorConfig::new(nats.url()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = validator.status();
    assert_eq!(status.state, State::Starting);
    assert!(status.detail.unwrap_or_default().contains(STREAM));
    assert_eq!(
        validator.check("tok"),
        Err(Rejection::Unavailable(Unavailable::CatchingUp))
    );

    let js = nats.jetstream().await;
    create_stream(&js, STREAM, SUBJECTS).await;
    publish(
        &js,
        &issued(1, "tok", "grant-1", "designs:read", unix_now() + HOUR),
    )
    .await;
    validator.wait_ready(Some(WAIT)).await.unwrap();
    assert!(eventually(WAIT, || validator.check("tok").is_ok()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_nats_restart_and_resumes() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut nats = TestNats::start().await;
    let js = nats.with_stream().await;
    let exp = unix_now() + HOUR;
    publish(&js, &issued(1, "tok-1", "grant-1", "designs:read", exp)).await;
    publish(&js, &issued(2, "tok-2", "grant-2", "designs:read", exp)).await;
    let validator = Validator::connect(ValidatorConfig::new(nats.url()))
        .await
        .unwrap();
    validator.wait_ready(Some(WAIT)).await.unwrap();

    nats.stop().await;
    assert!(eventually(WAIT, || !validator.status().connected).await);
    assert!(validator.ready(), "the local store keeps answering");
    assert!(validator.check("tok-1").is_ok());

    nats.resume().await;
    let js = nats.jetstream().await;
    publish(&js, &revoked(3, "tok-1", "grant-1")).await;
    publish(&js, &issued(4, "tok-3", "grant-3", "designs:read", exp)).await;
    let started = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(60), || validator.check("tok-3").is_ok()).await,
        "{:?}",
        validator.status()
    );
    eprintln!("resumed {:?} after the restart", started.elapsed());
    assert_eq!(validator.check("tok-1"), Err(Rejection::Revoked));
    assert!(validator.check("tok-2").is_ok());
    let status = validator.status();
    assert_eq!(
        (status.applied, status.duplicates),
        (4, 0),
        "nothing replayed twice: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_a_cursor_resumes_after_it() {
    let nats = TestNats::start().await;
    let js = nats.with_stream().await;
    let exp = unix_now() + HOUR;
    publish(&js, &issued(1, "tok-1", "grant-1", "designs:read", exp)).await;
    let store = Arc::new(MemoryTokenStore::new());
    {
        let validator =
            Validator::connect_with_store(ValidatorConfig::new(nats.url()), store.clone())
                .await
                .unwrap();
        validator.wait_ready(Some(WAIT)).await.unwrap();
    }
    // Dropping the validator aborts its consumer task; let the abort land before
    // message 2 exists, or that task may still apply it behind the next validator's back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&js, &revoked(2, "tok-1", "grant-1")).await;
    // Same store (think: persisted), new validator: only message 2 is read.
    let validator = Validator::connect_with_store(ValidatorConfig::new(nats.url()), store.clone())
        .await
        .unwrap();
    validator.wait_ready(Some(WAIT)).await.unwrap();
    assert!(eventually(WAIT, || validator.check("tok-1") == Err(Rejection::Revoked)).await);
    // Message 1 was not replayed: it would show up as a duplicate (the store remembers
    // its id).
    let status = validator.status();
    assert_eq!((status.applied, status.duplicates), (1, 0), "{status:?}");
    assert_eq!(store.last_applied().unwrap().stream_sequence, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_nats_is_down() {
    let mut nats = TestNats::start().await;
    let js = nats.with_stream().await;
    publish(
        &js,
        &issued(1, "tok-1", "grant-1", "designs:read", unix_now() + HOUR),
    )
    .await;
    publish(&js, &revoked(2, "tok-1", "grant-1")).await;
    nats.stop().await;

    let validator = Validator::connect(ValidatorConfig::new(nats.url()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!validator.ready());
    assert!(!validator.status().connected);
    assert_eq!(
        validator.check("tok-1"),
        Err(Rejection::Unavailable(Unavailable::CatchingUp))
    );

    nats.resume().await;
    validator.wait_ready(Some(WAIT)).await.unwrap();
    assert_eq!(validator.check("tok-1"), Err(Rejection::Revoked));
}
