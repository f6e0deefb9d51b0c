//! Test fixtures: a private nats-server per test, the Valet stream, hand-built token
//! events, and an RFC 7662 introspection stub that counts its calls.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, stream::StorageType};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Form, Json, Router};
use tokio::process::{Child, Command};
use valet_resource::valet_wire::{
    EventType, RevocationReason, TokenEvent, MSG_ID_HEADER, SCHEMA_VERSION, STREAM, SUBJECTS,
};
use valet_resource::{token_digest, IntrospectionConfig, ValidatorConfig};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn nats_server() -> String {
    std::env::var("VALET_NATS_SERVER").unwrap_or_else(|_| {
        [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server")
        .to_owned()
    })
}

/// `nats-server -a 127.0.0.1 -p <free port> -js -sd <temp dir>`, killed on drop.
pub struct TestNats {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl TestNats {
    pub async fn start() -> TestNats {
        let port = free_port();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "valet-resource-nats-{}-{port}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("nats store dir");
        let mut nats = TestNats {
            port,
            dir,
            child: None,
        };
        nats.resume().await;
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server; its JetStream store stays on disk.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// Starts the server (again) on the same port with the same store.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(nats_server())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server (Debian: apt install nats-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("nats-server did not start on port {}", self.port);
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to nats");
        jetstream::new(client)
    }

    /// A context with the Valet stream created (as the relay defines it).
    pub async fn with_stream(&self) -> jetstream::Context {
        let js = self.jetstream().await;
        create_stream(&js, STREAM, SUBJECTS).await;
        js
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn create_stream(js: &jetstream::Context, name: &str, subjects: &str) {
    js.create_stream(jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![subjects.to_owned()],
        storage: StorageType::File,
        max_age: Duration::from_secs(24 * 3600),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("create stream");
}

/// Publishes without waiting for the ack (await the returned future for it).
pub async fn send(
    js: &jetstream::Context,
    subject: String,
    payload: Vec<u8>,
    msg_id: &str,
) -> PublishAckFuture {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(MSG_ID_HEADER, msg_id);
    js.publish_with_headers(subject, headers, payload.into())
        .await
        .expect("publish")
}

/// Publishes an event with `Nats-Msg-Id` = its event id; returns the stream sequence.
pub async fn publish(js: &jetstream::Context, event: &TokenEvent) -> u64 {
    publish_with_id(js, event, &event.event_id.clone()).await
}

pub async fn publish_with_id(js: &jetstream::Context, event: &TokenEvent, msg_id: &str) -> u64 {
    let ack = send(js, event.subject(), event.to_json(), msg_id)
        .await
        .await
        .expect("puback");
    assert!(!ack.duplicate, "unexpected duplicate for {msg_id}");
    ack.sequence
}

/// Pipelined: sends everything, then awaits the acks.
pub async fn publish_all(js: &jetstream::Context, events: &[TokenEvent]) {
    let mut acks = Vec::with_capacity(events.len());
    for event in events {
        acks.push(send(js, event.subject(), event.to_json(), &event.event_id).await);
    }
    for ack in acks {
        ack.await.expect("puback");
    }
}

fn base(n: i64, event_type: EventType, grant: &str) -> TokenEvent {
    TokenEvent {
        schema_version: SCHEMA_VERSION,
        event_id: format!("0192f4d2-0000-7000-8000-{n:012}"),
        position: n,
        event_type,
        occurred_at: "2026-01-15T08:00:00.000Z".into(),
        client_id: "printer".into(),
        grant_id: grant.into(),
        token_sha256: None,
        token_type: None,
        sub: None,
        username: None,
        scope: None,
        expires_at: None,
        reason: None,
    }
}

/// `token.issued` number `n` (event id and position derive from it) for user alice.
pub fn issued(n: i64, token: &str, grant: &str, scope: &str, expires_at: i64) -> TokenEvent {
    TokenEvent {
        token_sha256: Some(hex::encode(token_digest(token))),
        token_type: Some("access_token".into()),
        sub: Some("0192f4d2-0000-7000-8000-0000000a11ce".into()),
        username: Some("alice".into()),
        scope: Some(scope.into()),
        expires_at: Some(expires_at),
        ..base(n, EventType::TokenIssued, grant)
    }
}

pub fn revoked(n: i64, token: &str, grant: &str) -> TokenEvent {
    TokenEvent {
        token_sha256: Some(hex::encode(token_digest(token))),
        token_type: Some("access_token".into()),
        reason: Some(RevocationReason::ClientRequest),
        ..base(n, EventType::TokenRevoked, grant)
    }
}

pub fn grant_revoked(n: i64, grant: &str) -> TokenEvent {
    TokenEvent {
        sub: Some("0192f4d2-0000-7000-8000-0000000a11ce".into()),
        reason: Some(RevocationReason::RefreshReuse),
        ..base(n, EventType::GrantRevoked, grant)
    }
}

/// An RFC 7662 endpoint answering from a fixed table; counts its calls.
pub struct Introspection {
    pub url: String,
    calls: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    seen_tokens: Arc<Mutex<Vec<String>>>,
    _server: tokio::task::JoinHandle<()>,
}

pub const RS_CLIENT_ID: &str = "designs:rs";
pub const RS_CLIENT_SECRET: &str = "s3cret/+&=";

#[derive(Clone)]
struct StubState {
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    delay: Duration,
    seen_tokens: Arc<Mutex<Vec<String>>>,
    active: Arc<HashMap<String, serde_json::Value>>,
}

async fn introspect(
    State(state): State<StubState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> impl IntoResponse {
    use base64::Engine as _;
    state.calls.fetch_add(1, Ordering::SeqCst);
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(state.delay).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    // RFC 6749 §2.3.1: id and secret are form-urlencoded, then Basic.
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("designs%3Ars:s3cret%2F%2B%26%3D")
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": "invalid_client"})),
        );
    }
    let token = form.get("token").cloned().unwrap_or_default();
    state.seen_tokens.lock().unwrap().push(token.clone());
    let body = state
        .active
        .get(&token)
        .cloned()
        .unwrap_or_else(|| serde_json::json!({"active": false}));
    (StatusCode::OK, Json(body))
}

impl Introspection {
    /// `active`: token → the JSON answered for it; anything else is `{"active":false}`.
    pub async fn start(active: HashMap<String, serde_json::Value>) -> Introspection {
        Self::start_slow(active, Duration::ZERO).await
    }

    /// Each answer takes `delay`.
    pub async fn start_slow(
        active: HashMap<String, serde_json::Value>,
        delay: Duration,
    ) -> Introspection {
        let calls = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let seen_tokens = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/introspect", post(introspect))
            .with_state(StubState {
                calls: calls.clone(),
                in_flight: Arc::new(AtomicUsize::new(0)),
                max_in_flight: max_in_flight.clone(),
                delay,
                seen_tokens: seen_tokens.clone(),
                active: Arc::new(active),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/introspect", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Introspection {
            url,
            calls,
            max_in_flight,
            seen_tokens,
            _server: server,
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn seen_tokens(&self) -> Vec<String> {
        self.seen_tokens.lock().unwrap().clone()
    }

    pub fn config(&self) -> IntrospectionConfig {
        IntrospectionConfig::new(&self.url, RS_CLIENT_ID, RS_CLIENT_SECRET)
    }
}

/// A validator config for this NATS with the introspection stub as fallback.
pub fn config(nats: &TestNats, stub: &Introspection) -> ValidatorConfig {
    ValidatorConfig::new(nats.url()).with_introspection(stub.config())
}

/// Polls `f` until it is true or `limit` passes.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub const WAIT: Duration = Duration::from_secs(20);
