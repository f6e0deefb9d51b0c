//! The outbox relay against the real PostgreSQL and a private nats-server:
//! log order and Nats-Msg-Id, deduplicated republish after a crash before the
//! checkpoint (SECURITY.md 39, relay side), a NATS outage during issuance and
//! revocation (SECURITY.md 40), and standby takeover.

use std::sync::Arc;
use std::time::Duration;

use valet_app::admin::{ClientType, NewClient};
use valet_app::oauth::{ClientAuth, OAuth, RequestMeta, Settings};
use valet_app::outbox::{Acquisition, Leadership, Lease, RelayStatus};
use valet_app::{EventStore, LogCursor, SystemClock};
use valet_domain::{AccessTokenTtl, CodeTtl, RefreshTokenTtl, TokenHash};
use valet_projector::{PgReadModels, ReadModelProjection};
use valet_relay::RelayConfig;
use valet_store::{PgEventStore, PgStoreConfig};
use valet_tests::nats::{publishable_event_ids, stream_matches_log, TestNats};
use valet_tests::TestDb;
use valet_wire::{EventType, Message, TokenEvent, STREAM};

type App = OAuth<PgEventStore, PgReadModels, SystemClock>;

async fn app(db: &TestDb) -> App {
    let store = PgEventStore::connect_with(
        PgStoreConfig::new(db.url.clone()),
        Some(Arc::new(ReadModelProjection)),
    )
    .await
    .expect("store");
    let reads = PgReadModels::new(store.pool().clone());
    OAuth::new(
        store,
        reads,
        SystemClock,
        Settings {
            issuer: "http://127.0.0.1:8080".into(),
            access_ttl: AccessTokenTtl::new(3600).expect("ttl"),
            refresh_ttl: RefreshTokenTtl::new(86_400).expect("ttl"),
            code_ttl: CodeTtl::new(60).expect("ttl"),
        },
    )
}

#[derive(Clone)]
struct Service {
    auth: ClientAuth,
    client_id: String,
}

async fn service(app: &App) -> Service {
    let created = app
        .create_client(
            NewClient {
                name: "svc".into(),
                client_type: ClientType::Confidential,
                redirect_uris: vec![],
                grant_types: vec![],
                scopes: vec!["read".into()],
                id_token_alg: None,
                post_logout_redirect_uris: vec![],
                access_token_format: None,
                access_token_alg: None,
                backchannel_logout_uri: None,
                backchannel_logout_sid: valet_domain::client::LogoutSid::Optional,
            },
            &RequestMeta::default(),
        )
        .await
        .expect("client");
    Service {
        auth: ClientAuth::Secret {
            client_id: created.client_id.clone(),
            secret: created.client_secret.expect("secret"),
        },
        client_id: created.client_id,
    }
}

/// Issues `n` tokens and revokes every other one; returns the raw tokens.
async fn issue_and_revoke(app: &App, svc: &Service, n: usize) -> Vec<String> {
    let client = app.authenticate(&svc.auth).await.expect("auth");
    let meta = RequestMeta::default();
    let mut tokens = Vec::new();
    for i in 0..n {
        let token = app
            .client_credentials(&client, None, &meta)
            .await
            .expect("token")
            .access_token;
        if i % 2 == 1 {
            app.revoke(&client, &token, None, &meta)
                .await
                .expect("revoke");
        }
        tokens.push(token);
    }
    tokens
}

fn relay_config(nats: &TestNats) -> RelayConfig {
    RelayConfig {
        nats_url: nats.url(),
        max_age: Duration::from_secs(86_400),
        duplicate_window: valet_relay::DEFAULT_DUPLICATE_WINDOW,
        batch: 100,
        holder: valet_relay::this_process(),
        stream_replicas: 1,
        tls: Default::default(),
    }
}

fn start_relay(app: &App, nats: &TestNats) -> (tokio::task::JoinHandle<()>, Arc<RelayStatus>) {
    let status = Arc::new(RelayStatus::default());
    let task = tokio::spawn(valet_relay::run(
        app.store.clone(),
        relay_config(nats),
        status.clone(),
    ));
    (task, status)
}

async fn try_relay_lease(app: &App) -> Acquisition<valet_store::PgLease> {
    app.store
        .try_acquire(valet_relay::LEASE, "test", valet_relay::LEASE_TTL)
        .await
        .expect("ask for the lease")
}

/// The relay lease, once free.
async fn acquire_relay_lease(app: &App) -> valet_store::PgLease {
    let start = std::time::Instant::now();
    loop {
        if let Acquisition::Acquired(lease) = try_relay_lease(app).await {
            return lease;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the lease stays taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stream's token events (this app has no signing keys), each with its `Nats-Msg-Id`.
async fn events_in_stream(nats: &TestNats) -> Vec<(TokenEvent, String)> {
    nats.stream_messages(STREAM)
        .await
        .into_iter()
        .map(|m| {
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned())
                .expect("every message carries Nats-Msg-Id");
            let event = TokenEvent::from_json(&m.payload).expect("a valid token event");
            assert_eq!(m.subject.as_str(), event.subject());
            (event, id)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_every_token_event_in_log_order_with_its_event_id() {
    let db = TestDb::create().await;
    let nats = TestNats::start().await;
    let app = app(&db).await;
    let svc = service(&app).await;
    let tokens = issue_and_revoke(&app, &svc, 10).await;
    let (relay, status) = start_relay(&app, &nats);
    wait_until("15 messages", Duration::from_secs(20), || {
        status.snapshot().published >= 15
    })
    .await;

    let events = events_in_stream(&nats).await;
    assert_eq!(events.len(), 15, "10 issued + 5 revoked");
    for (event, msg_id) in &events {
        assert_eq!(&event.event_id, msg_id);
        assert_eq!(event.client_id, svc.client_id);
    }
    assert!(events.windows(2).all(|w| w[0].0.position < w[1].0.position));
    let issued = events
        .iter()
        .filter(|(e, _)| e.event_type == EventType::TokenIssued)
        .count();
    let revoked = events
        .iter()
        .filter(|(e, _)| e.event_type == EventType::TokenRevoked)
        .count();
    assert_eq!((issued, revoked), (10, 5));
    // The stream names tokens by digest only.
    for (event, _) in &events {
        assert_eq!(event.token_sha256.as_deref().map(str::len), Some(64));
    }
    assert_eq!(
        events[0].0.token_sha256.as_deref(),
        Some(TokenHash::of(&tokens[0]).to_string().as_str())
    );
    let snapshot = status.snapshot();
    assert!(snapshot.active && snapshot.nats_connected);
    assert_eq!(snapshot.backlog, 0);
    relay.abort();
    db.drop_database().await;
}

/// SECURITY.md 39 (relay side): the relay dies after publishing but before saving its
/// checkpoint. Its successor republishes from the old checkpoint; JetStream drops the
/// duplicates by Nats-Msg-Id, so consumers see each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s39_republish_after_a_crash_before_the_checkpoint_is_deduplicated() {
    let db = TestDb::create().await;
    let nats = TestNats::start().await;
    let app = app(&db).await;
    let svc = service(&app).await;
    issue_and_revoke(&app, &svc, 6).await;
    let (relay, status) = start_relay(&app, &nats);
    wait_until("9 messages", Duration::from_secs(20), || {
        status.snapshot().published >= 9
    })
    .await;
    relay.abort();
    let _ = relay.await;

    // Rewind the checkpoint: exactly what a crash between PubAck and checkpoint leaves.
    // (The aborted relay could not release its lease: it expires.)
    let lease = acquire_relay_lease(&app).await;
    lease
        .save_checkpoint(LogCursor::START)
        .await
        .expect("rewind");
    lease.release().await.expect("release");

    let (relay, status) = start_relay(&app, &nats);
    wait_until("the republish", Duration::from_secs(20), || {
        status.snapshot().published >= 9
    })
    .await;
    let snapshot = status.snapshot();
    assert_eq!(
        snapshot.duplicates, 9,
        "every republished message was a duplicate"
    );
    assert_eq!(
        events_in_stream(&nats).await.len(),
        9,
        "the stream holds each event once"
    );
    relay.abort();
    db.drop_database().await;
}

/// SECURITY.md 40: NATS goes down while tokens are issued and revoked. Issuance keeps
/// working, the relay reports the backlog, and once NATS is back every event arrives,
/// in log order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s40_nats_outage_during_issuance_and_revocation_loses_nothing() {
    let db = TestDb::create().await;
    let mut nats = TestNats::start().await;
    let app = app(&db).await;
    let svc = service(&app).await;
    let (relay, status) = start_relay(&app, &nats);
    issue_and_revoke(&app, &svc, 4).await;
    wait_until("6 messages", Duration::from_secs(20), || {
        status.snapshot().published >= 6
    })
    .await;

    nats.stop().await;
    let during = issue_and_revoke(&app, &svc, 20).await;
    assert_eq!(during.len(), 20, "the use cases do not depend on NATS");
    wait_until("the backlog to show", Duration::from_secs(30), || {
        let s = status.snapshot();
        !s.nats_connected && s.backlog > 0
    })
    .await;

    nats.resume().await;
    wait_until("the backlog to drain", Duration::from_secs(60), || {
        let s = status.snapshot();
        s.published >= 36 && s.backlog == 0
    })
    .await;
    let events = events_in_stream(&nats).await;
    assert_eq!(events.len(), 36, "6 before + 30 during the outage");
    assert!(events.windows(2).all(|w| w[0].0.position < w[1].0.position));
    relay.abort();
    db.drop_database().await;
}

/// One relay is active at a time; when it dies a standby takes over and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_relay_takes_over_when_the_active_one_dies() {
    let db = TestDb::create().await;
    let nats = TestNats::start().await;
    let app = app(&db).await;
    let svc = service(&app).await;
    let (first, first_status) = start_relay(&app, &nats);
    wait_until("the first relay to lead", Duration::from_secs(10), || {
        first_status.snapshot().active
    })
    .await;
    let (second, second_status) = start_relay(&app, &nats);
    issue_and_revoke(&app, &svc, 2).await;
    wait_until("3 messages", Duration::from_secs(20), || {
        first_status.snapshot().published >= 3
    })
    .await;
    assert!(
        !second_status.snapshot().active,
        "two relays active at once"
    );

    first.abort();
    let _ = first.await;
    wait_until("the standby to take over", Duration::from_secs(15), || {
        second_status.snapshot().active
    })
    .await;
    issue_and_revoke(&app, &svc, 2).await;
    wait_until("3 more messages", Duration::from_secs(20), || {
        second_status.snapshot().published >= 3
    })
    .await;
    assert_eq!(events_in_stream(&nats).await.len(), 6);
    second.abort();
    db.drop_database().await;
}

/// Under load the checkpoint is saved at most every 100 ms, but once the relay has
/// caught up it is saved at once: a standby would start from the last event published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_reaches_the_last_published_event_once_caught_up() {
    let db = TestDb::create().await;
    let nats = TestNats::start().await;
    let app = app(&db).await;
    let svc = service(&app).await;
    issue_and_revoke(&app, &svc, 6).await;
    let last: i64 = db
        .connect()
        .await
        .query_one("SELECT max(position) FROM events", &[])
        .await
        .expect("last position")
        .get(0);
    let (relay, status) = start_relay(&app, &nats);
    wait_until("9 messages", Duration::from_secs(20), || {
        status.snapshot().published >= 9
    })
    .await;
    let client = db.connect().await;
    let start = std::time::Instant::now();
    loop {
        let saved: Option<i64> = client
            .query_opt(
                "SELECT position FROM checkpoints WHERE name = $1",
                &[&valet_relay::LEASE],
            )
            .await
            .expect("read the checkpoint")
            .map(|row| row.get(0));
        if saved == Some(last) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the checkpoint stayed at {saved:?}, the last event is at {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.abort();
    db.drop_database().await;
}

/// `valet serve` runs the relay on a thread of its own (`valet_relay::start`); stopping
/// it closes its connections, so the lease is free for a standby at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_on_its_own_thread_publishes_and_frees_the_lease_when_stopped() {
    let db = TestDb::create().await;
    let nats = TestNats::start().await;
    let app = app(&db).await;
    let svc = service(&app).await;
    let status = Arc::new(RelayStatus::default());
    let relay = valet_relay::start(
        app.store.with_own_pool(2).expect("a pool of its own"),
        relay_config(&nats),
        status.clone(),
    )
    .expect("start the relay thread");
    issue_and_revoke(&app, &svc, 2).await;
    wait_until("3 messages", Duration::from_secs(20), || {
        status.snapshot().published >= 3
    })
    .await;
    assert_eq!(events_in_stream(&nats).await.len(), 3);
    assert!(
        matches!(
            try_relay_lease(&app).await,
            Acquisition::HeldBy(holder) if holder == valet_relay::this_process()
        ),
        "the lease is held while the relay runs"
    );

    relay.stop();
    assert!(
        matches!(try_relay_lease(&app).await, Acquisition::Acquired(_)),
        "the lease is free once stop() returns"
    );
    db.drop_database().await;
}

/// Once a batch is confirmed, the next asks for one ack, on its last message. When that
/// ack does not prove the batch stored in order (here another publisher's message ended
/// the stream, so JetStream refused ours, which named its log predecessor), the batch
/// is sent again with an ack per message and lands after the other message: the stream
/// still holds each event once, in log order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_its_last_ack_does_not_confirm_is_republished_with_an_ack_per_message() {
    let db = TestDb::create().await;
    let nats = TestNats::start().await;
    let app = app(&db).await;
    let svc = service(&app).await;
    let (relay, status) = start_relay(&app, &nats);
    let caught_up = |n: u64| {
        let s = status.snapshot();
        s.published >= n && s.backlog == 0
    };
    // Token by token: after the first batch (an ack per message) the sequence is known.
    for n in 1..=4 {
        issue_and_revoke(&app, &svc, 1).await;
        wait_until("the token's message", Duration::from_secs(20), || {
            caught_up(n)
        })
        .await;
    }
    let before = status.snapshot();
    assert!(
        before.confirmed_by_last_ack >= 1,
        "batches after the first are confirmed by their last ack: {before:?}"
    );
    assert_eq!(
        (before.republished, before.duplicates),
        (0, 0),
        "{before:?}"
    );

    let mut foreign = events_in_stream(&nats).await[0].0.clone();
    foreign.event_id = uuid::Uuid::now_v7().to_string();
    foreign.client_id = "another-publisher".into();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", foreign.event_id.as_str());
    js.publish_with_headers(foreign.subject(), headers, foreign.to_json().into())
        .await
        .expect("publish")
        .await
        .expect("ack");

    issue_and_revoke(&app, &svc, 1).await;
    wait_until("the next token's message", Duration::from_secs(20), || {
        caught_up(5)
    })
    .await;
    let after = status.snapshot();
    assert_eq!(after.republished, 1, "{after:?}");
    assert_eq!(
        after.duplicates, 0,
        "the refused message was not stored before the republish"
    );

    let events = events_in_stream(&nats).await;
    assert_eq!(
        events.len(),
        6,
        "5 tokens and the other publisher's message"
    );
    let ours: Vec<_> = events
        .iter()
        .filter(|(e, _)| e.client_id == svc.client_id)
        .collect();
    assert_eq!(ours.len(), 5);
    assert!(ours.windows(2).all(|w| w[0].0.position < w[1].0.position));
    relay.abort();
    db.drop_database().await;
}

/// The stream's duplicate window is the configured one, never longer than the stream
/// keeps messages (JetStream refuses that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_duplicate_window_is_configurable_and_bounded_by_the_max_age() {
    let nats = TestNats::start().await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let window = |config: RelayConfig| {
        let js = js.clone();
        async move {
            valet_relay::ensure_stream(&js, &config)
                .await
                .expect("stream set up");
            let mut stream = js.get_stream(STREAM).await.expect("the stream");
            stream.info().await.expect("info").config.duplicate_window
        }
    };
    let config = RelayConfig {
        duplicate_window: Duration::from_secs(600),
        ..relay_config(&nats)
    };
    assert_eq!(window(config).await, Duration::from_secs(600));
    // Updated in place on the next start.
    let config = RelayConfig {
        duplicate_window: Duration::from_secs(30),
        ..relay_config(&nats)
    };
    assert_eq!(window(config).await, Duration::from_secs(30));
    let config = RelayConfig {
        max_age: Duration::from_secs(3600),
        duplicate_window: Duration::from_secs(7200),
        ..relay_config(&nats)
    };
    assert_eq!(window(config).await, Duration::from_secs(3600));
}

/// NATS is killed while the relay publishes under load, restarted, and killed again as
/// soon as the relay has published: in every run the stream ends with every event once,
/// in log order (a grant's revocation never ahead of its issuance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_nats_crashes_under_load_keep_log_order_and_lose_nothing() {
    const CRASHES: usize = 8;
    let db = TestDb::create().await;
    let mut nats = TestNats::start().await;
    let app = Arc::new(app(&db).await);
    let svc = service(&app).await;
    let (relay, status) = start_relay(&app, &nats);
    wait_until("the relay to lead", Duration::from_secs(10), || {
        status.snapshot().active
    })
    .await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (app, svc, stop) = (app.clone(), svc.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    issue_and_revoke(&app, &svc, 10).await;
                }
            })
        })
        .collect();
    for _ in 0..CRASHES {
        let before = status.snapshot().published;
        wait_until("the relay to publish", Duration::from_secs(30), || {
            status.snapshot().published > before
        })
        .await;
        nats.stop().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        nats.resume().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    let expected = publishable_event_ids(&db.connect().await).await;
    wait_until("the backlog to drain", Duration::from_secs(60), || {
        let s = status.snapshot();
        s.backlog == 0 && s.last_position > 0 && s.nats_connected
    })
    .await;
    let start = std::time::Instant::now();
    let events = loop {
        let events = events_in_stream(&nats).await;
        if events.len() >= expected.len() || start.elapsed() > Duration::from_secs(30) {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let events: Vec<Message> = events
        .into_iter()
        .map(|(event, _)| Message::Token(event))
        .collect();
    if let Err(difference) = stream_matches_log(&events, &expected) {
        panic!("the stream is not the log's token events, each once, in log order: {difference}");
    }
    eprintln!(
        "{} events through {CRASHES} NATS crashes: {:?}",
        events.len(),
        status.snapshot()
    );
    relay.abort();
    db.drop_database().await;
}

/// A relay running on a fresh database and NATS, caught up after 20 grants of which 10
/// were revoked (30 messages).
struct Published {
    db: TestDb,
    nats: TestNats,
    app: App,
    svc: Service,
    relay: tokio::task::JoinHandle<()>,
    status: Arc<RelayStatus>,
}

async fn thirty_messages_published() -> Published {
    let db = TestDb::create().await;
    let nats = TestNats::start().await;
    let app = app(&db).await;
    let svc = service(&app).await;
    let (relay, status) = start_relay(&app, &nats);
    issue_and_revoke(&app, &svc, 20).await;
    wait_until("30 messages", Duration::from_secs(20), || {
        let s = status.snapshot();
        s.published >= 30 && s.backlog == 0
    })
    .await;
    Published {
        db,
        nats,
        app,
        svc,
        relay,
        status,
    }
}

/// Rebuilds the stream behind the relay's back holding only its first `kept` messages,
/// under their own `Nats-Msg-Id`s: JetStream losing the messages after them.
async fn keep_only_the_first(nats: &TestNats, kept: usize) {
    let stored = nats.stream_messages(STREAM).await;
    assert!(stored.len() > kept);
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let config = js
        .get_stream(STREAM)
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    js.delete_stream(STREAM).await.expect("delete the stream");
    js.create_stream(config).await.expect("create it again");
    for message in &stored[..kept] {
        js.publish_with_headers(
            message.subject.clone(),
            message.headers.clone().expect("headers"),
            message.payload.clone(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    }
}

/// Waits until the stream holds the log's token events, each once, in log order.
async fn until_the_stream_is_the_log(db: &TestDb, nats: &TestNats) {
    let expected = publishable_event_ids(&db.connect().await).await;
    let start = std::time::Instant::now();
    loop {
        let events: Vec<Message> = events_in_stream(nats)
            .await
            .into_iter()
            .map(|(event, _)| Message::Token(event))
            .collect();
        match stream_matches_log(&events, &expected) {
            Ok(()) => return,
            Err(difference) if start.elapsed() > Duration::from_secs(20) => panic!(
                "the stream is not the log's token events, each once, in log order: {difference}"
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// JetStream can lose messages it has confirmed (seen when a node of a cluster dies
/// under load: the new stream leader lacks the old one's last writes). Here the loss is
/// made by hand. With new events to publish, the relay's next message names a
/// predecessor the stream no longer has and is refused; with none, the idle leader's
/// check of the stream's end finds it. Either way the relay finds where the stream
/// really ends, in the log, and publishes again from there: nothing lost, order kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_lost_confirmed_messages_gets_them_again_from_the_log() {
    let Published {
        db,
        nats,
        app,
        svc,
        relay,
        status,
    } = thirty_messages_published().await;

    // Lost, then new events: the refusal reveals it.
    keep_only_the_first(&nats, 12).await;
    issue_and_revoke(&app, &svc, 4).await;
    wait_until("a rewind", Duration::from_secs(20), || {
        status.snapshot().rewinds == 1
    })
    .await;
    until_the_stream_is_the_log(&db, &nats).await;

    // Lost while nothing new comes: the idle check reveals it.
    keep_only_the_first(&nats, 20).await;
    wait_until("a second rewind", Duration::from_secs(20), || {
        status.snapshot().rewinds == 2
    })
    .await;
    until_the_stream_is_the_log(&db, &nats).await;
    relay.abort();
    db.drop_database().await;
}

/// Leaves the stream holding its first `kept` messages, the last of them stored again
/// under a new message id, while JetStream still answers the ids of the messages after
/// it as duplicates: they were stored, then deleted, as a stream leader that took
/// messages in and lost them with its leadership remembers their ids.
async fn keep_the_first_remembering_the_rest(nats: &TestNats, kept: usize) {
    let stored = nats.stream_messages(STREAM).await;
    keep_only_the_first(nats, kept - 1).await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut sequences = Vec::new();
    for message in &stored[kept - 1..] {
        let ack = js
            .publish_with_headers(
                message.subject.clone(),
                message.headers.clone().expect("headers"),
                message.payload.clone(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
        sequences.push(ack.sequence);
    }
    let stream = js.get_stream(STREAM).await.expect("stream");
    for sequence in sequences {
        stream.delete_message(sequence).await.expect("delete");
    }
    let last = &stored[kept - 1];
    let id = last
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .expect("an id");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{id}:1").as_str());
    js.publish_with_headers(last.subject.clone(), headers, last.payload.clone())
        .await
        .expect("publish")
        .await
        .expect("stored");
}

/// A rewind can make no progress: JetStream answers the lost messages as duplicates
/// (a stream leader records a message id when it takes the message in, before the
/// cluster stores it). The relay then publishes them once more under new message ids
/// (`<event id>:<suffix>`), and the stream again holds every event once, in log order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_messages_jetstream_answers_as_duplicates_are_published_under_new_ids() {
    let Published {
        db,
        nats,
        app,
        svc,
        relay,
        status,
    } = thirty_messages_published().await;

    keep_the_first_remembering_the_rest(&nats, 12).await;
    issue_and_revoke(&app, &svc, 4).await;
    wait_until("a reissue", Duration::from_secs(20), || {
        status.snapshot().reissues == 1
    })
    .await;
    until_the_stream_is_the_log(&db, &nats).await;
    let reissued: Vec<String> = events_in_stream(&nats)
        .await
        .into_iter()
        .filter(|(event, id)| *id != event.event_id)
        .map(|(event, id)| {
            assert_eq!(valet_wire::event_id_of_msg_id(&id), event.event_id);
            id
        })
        .collect();
    // The twelfth message (stored again by hand) and the ones after it that JetStream
    // answered as duplicates.
    assert!(reissued.len() > 1, "{reissued:?}");
    assert_eq!(status.snapshot().rewinds, 2, "{:?}", status.snapshot());
    relay.abort();
    db.drop_database().await;
}

/// A relay that starts leading finds the stream ending before its checkpoint (a NATS
/// node that missed writes became the stream's leader, as seen when NATS nodes die under
/// load). It publishes again from the stream's real end, naming it as the first
/// message's predecessor; starting at the checkpoint instead would put the new messages
/// after the loss and leave a hole no later refusal reveals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_starts_leading_publishes_from_the_streams_end_when_it_is_behind_the_checkpoint(
) {
    let Published {
        db,
        nats,
        app,
        svc,
        relay,
        ..
    } = thirty_messages_published().await;
    // Once caught up the relay saves its checkpoint; wait for it to reach the end.
    let ids = publishable_event_ids(&db.connect().await).await;
    let last = ids.last().expect("events");
    let last_cursor = app
        .store
        .cursor_of(last.parse().expect("a uuid"))
        .await
        .expect("read")
        .expect("in the log");
    let start = std::time::Instant::now();
    while app
        .store
        .checkpoint(valet_relay::LEASE)
        .await
        .expect("read")
        < Some(last_cursor)
    {
        assert!(start.elapsed() < Duration::from_secs(10), "no checkpoint");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.abort();
    let _ = relay.await;
    keep_only_the_first(&nats, 12).await;
    issue_and_revoke(&app, &svc, 4).await;

    let (relay, _status) = start_relay(&app, &nats);
    until_the_stream_is_the_log(&db, &nats).await;
    relay.abort();
    db.drop_database().await;
}
