//! The resource-server SDK (`valet-resource`, in-process) kept in sync by the real
//! `valet serve` (own database on the real PostgreSQL) through a private nats-server:
//!
//! - a client_credentials token validates locally, and once /revoke has answered 200 the
//!   SDK refuses it without asking the introspection endpoint;
//! - a code replay (SECURITY.md 10) and a refresh-token reuse (SECURITY.md 23) reach the
//!   SDK as `grant.revoked` with reason `code_replay` / `refresh_reuse`;
//! - canary (SECURITY.md 33, NATS part): no raw code, token or secret in any message;
//! - SECURITY.md 42: a resource service offline during 1,000 revocations catches up and
//!   refuses every revoked token as soon as it reports ready;
//! - SECURITY.md 40 at the HTTP level: /readyz and /metrics show the relay backlog while
//!   NATS is down and issuance goes on, and it drains to 0 once NATS is back.
//!
//! Introspection calls of the SDK go through a small counting proxy in front of the
//! server's /introspect, so "no introspection call" is observed on the wire.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures_util::{stream, StreamExt};
use serde_json::Value;
use valet_resource::valet_wire::{EventType, Message, RevocationReason, TokenEvent, STREAM};
use valet_resource::{IntrospectionConfig, Rejection, Source, Validator, ValidatorConfig};
use valet_tests::nats::TestNats;
use valet_tests::sdk::{until_revoked_locally, until_valid_locally};
use valet_tests::server::{
    sha256_hex, ClientCreds, ClientSpec, Fixture, TestServer, Tokens, APP_CB,
};

/// How long a propagation through relay → NATS → SDK may take before a test fails.
const PROPAGATION: Duration = Duration::from_secs(15);
const READY: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// `valet serve` publishing to `nats`.
async fn server(nats: &TestNats) -> TestServer {
    TestServer::start_with(&[("VALET_NATS_URL", &nats.url())]).await
}

async fn fixture(nats: &TestNats) -> Fixture {
    Fixture::with_env(&[("VALET_NATS_URL", &nats.url())]).await
}

/// A confidential client_credentials client (scope `read`).
async fn service_client(server: &TestServer, name: &str) -> ClientCreds {
    server
        .create_client(
            &ClientSpec::confidential(name)
                .grant("client_credentials")
                .scopes("read"),
        )
        .await
}

struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    calls: Arc<AtomicUsize>,
}

/// Forwards POST /introspect to the server's /introspect and counts the calls.
struct CountingProxy {
    url: String,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    async fn start(server: &TestServer) -> CountingProxy {
        let calls = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(ProxyState {
            upstream: server.url("/introspect"),
            http: reqwest::Client::new(),
            calls: calls.clone(),
        });
        let app = Router::new()
            .route("/introspect", post(forward))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("proxy");
        });
        CountingProxy {
            url: format!("http://{addr}/introspect"),
            calls,
            task,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    State(state): State<Arc<ProxyState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    let mut request = state.http.post(&state.upstream).body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(value) = headers.get(&name) {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let body = response.bytes().await.unwrap_or_default();
            let mut out = (status, body).into_response();
            if let Some(ct) = content_type {
                out.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            out
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// An SDK on `nats` whose introspection fallback (as `rs`) goes through `proxy`.
async fn validator(nats: &TestNats, proxy: &CountingProxy, rs: &ClientCreds) -> Validator {
    let config = ValidatorConfig::new(nats.url()).with_introspection(IntrospectionConfig::new(
        proxy.url.clone(),
        rs.client_id.clone(),
        rs.secret(),
    ));
    Validator::connect(config).await.expect("validator")
}

async fn ready_validator(nats: &TestNats, proxy: &CountingProxy, rs: &ClientCreds) -> Validator {
    let validator = validator(nats, proxy, rs).await;
    validator.wait_ready(Some(READY)).await.unwrap_or_else(|e| {
        panic!(
            "the SDK did not become ready: {e} ({:?})",
            validator.status()
        )
    });
    validator
}

/// The stream's token events (asserting every message is a valid token or key event on
/// its subject with `Nats-Msg-Id` = its event id).
async fn stream_events(nats: &TestNats) -> Vec<TokenEvent> {
    nats.stream_messages(STREAM)
        .await
        .iter()
        .filter_map(|message| {
            let event = Message::from_json(&message.payload).expect("a valid stream message");
            assert_eq!(message.subject.as_str(), event.subject());
            let msg_id = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned());
            assert_eq!(msg_id.as_deref(), Some(event.event_id()));
            event.into_token()
        })
        .collect()
}

/// Events in the log that the relay turns into messages (RefreshTokenReused is not
/// published: the GrantRevoked that follows it is).
async fn publishable_events(server: &TestServer) -> u64 {
    valet_tests::nats::publishable_event_ids(server.pg().await)
        .await
        .len() as u64
}

async fn stream_len(nats: &TestNats) -> u64 {
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to nats");
    let js = async_nats::jetstream::new(client);
    match js.get_stream(STREAM).await {
        Ok(mut stream) => stream.info().await.map_or(0, |i| i.state.messages),
        Err(_) => 0,
    }
}

/// Waits until every publishable event of the log is in the stream; returns how many of
/// its messages are token events (the others announce the server's signing keys).
async fn until_stream_has_the_log(server: &TestServer, nats: &TestNats, limit: Duration) -> u64 {
    let start = Instant::now();
    loop {
        let (expected, actual) = (publishable_events(server).await, stream_len(nats).await);
        if expected == actual {
            return stream_events(nats).await.len() as u64;
        }
        assert!(
            actual <= expected,
            "the stream holds more messages ({actual}) than the log has publishable events ({expected})"
        );
        assert!(
            start.elapsed() < limit,
            "the relay published {actual} of {expected} events within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `relay` object of /readyz (asserting 200: a NATS outage never makes it unready).
async fn readyz_relay(server: &TestServer) -> Value {
    let resp = server.get("/readyz").await;
    assert_eq!(resp.status, 200, "/readyz: {}", resp.describe());
    let body = resp.json();
    assert_eq!(body["status"], "ready", "{body}");
    body["relay"].clone()
}

/// Waits (up to 60 s) until /readyz shows the relay connected with no backlog.
async fn until_backlog_drained(server: &TestServer) {
    let start = Instant::now();
    loop {
        let relay = readyz_relay(server).await;
        if relay["backlog"] == 0 && relay["nats_connected"] == true {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the backlog did not drain: {relay}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A sample of /metrics by name (no labels).
async fn metric(server: &TestServer, name: &str) -> i64 {
    let resp = server.get("/metrics").await;
    assert_eq!(resp.status, 200, "/metrics: {}", resp.describe());
    let text = resp.text();
    text.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<i64>().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// The grant id the stream gave `access_token` (from its `token.issued`).
fn grant_of(events: &[TokenEvent], access_token: &str) -> String {
    let digest = sha256_hex(access_token);
    events
        .iter()
        .find(|e| {
            e.event_type == EventType::TokenIssued && e.token_sha256.as_deref() == Some(&digest)
        })
        .map(|e| e.grant_id.clone())
        .expect("a token.issued message for the token")
}

/// The `grant.revoked` messages of a grant, asserting there is at least one and every
/// one gives `reason`.
fn assert_grant_revoked(events: &[TokenEvent], grant_id: &str, reason: RevocationReason) {
    let revoked: Vec<&TokenEvent> = events
        .iter()
        .filter(|e| e.event_type == EventType::GrantRevoked && e.grant_id == grant_id)
        .collect();
    assert!(
        !revoked.is_empty(),
        "no grant.revoked message for grant {grant_id}"
    );
    for event in revoked {
        assert_eq!(event.reason, Some(reason), "{event:?}");
        assert!(
            event.subject().starts_with("valet.v1.grant.revoked."),
            "{event:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// /token → the SDK validates locally; /revoke 200 → the SDK refuses it, and never asks
/// the introspection endpoint for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_locally_without_introspection() {
    let nats = TestNats::start().await;
    let server = server(&nats).await;
    let svc = service_client(&server, "printer").await;
    let rs = service_client(&server, "designs").await;
    let proxy = CountingProxy::start(&server).await;
    let validator = ready_validator(&nats, &proxy, &rs).await;

    let tokens = Tokens::from_resp(&server.client_credentials(&svc, Some("read")).await);
    let info = until_valid_locally(&validator, &tokens.access_token, PROPAGATION).await;
    assert_eq!(info.source, Source::Local);
    assert_eq!(info.client_id, svc.client_id);
    assert!(info.has_scope("read"));
    assert_eq!(info.sub.as_deref(), Some(svc.client_id.as_str()));
    assert_eq!(
        info.subject(),
        None,
        "client_credentials tokens act for no user"
    );
    let authenticated = validator.authenticate(&tokens.access_token).await;
    assert_eq!(authenticated.map(|i| i.source), Ok(Source::Local));

    let resp = server
        .revoke(&svc.basic(), &tokens.access_token, None)
        .await;
    assert_eq!(resp.status, 200, "/revoke: {}", resp.describe());
    until_revoked_locally(&validator, &tokens.access_token, PROPAGATION).await;
    assert_eq!(
        validator.authenticate(&tokens.access_token).await,
        Err(Rejection::Revoked)
    );
    assert_eq!(proxy.calls(), 0, "a local answer never introspects");
    assert_eq!(validator.status().introspection_calls, 0);

    // The proxy is really in the path: a token unknown locally is introspected once.
    assert_eq!(
        validator
            .authenticate("valet_at_unknown0unknown0unknown0unknown0unk")
            .await,
        Err(Rejection::Inactive)
    );
    assert_eq!(proxy.calls(), 1);
    assert!(server
        .log()
        .lines()
        .all(|l| !l.contains(&tokens.access_token)));
    server.stop().await;
}

/// A code replay and a refresh-token reuse revoke whole grants (SECURITY.md 10, 23); the
/// SDK hears both as `grant.revoked` and refuses the winners' access tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_replay_and_refresh_reuse_reach_the_sdk_as_grant_revocations() {
    let nats = TestNats::start().await;
    let mut fx = fixture(&nats).await;
    let proxy = CountingProxy::start(&fx.server).await;
    let validator = ready_validator(&nats, &proxy, &fx.rs).await;

    // Code replay: the first redemption wins, the second one revokes its grant.
    let (code, pkce) = fx.code(Some("read")).await;
    let winner = Tokens::from_resp(
        &fx.server
            .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
            .await,
    );
    let info = until_valid_locally(&validator, &winner.access_token, PROPAGATION).await;
    assert_eq!(info.subject(), Some(fx.user.username.as_str()));
    let replay = fx
        .server
        .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
        .await;
    assert_eq!(
        (replay.status, replay.error().as_deref()),
        (400, Some("invalid_grant")),
        "code replay: {}",
        replay.describe()
    );
    until_revoked_locally(&validator, &winner.access_token, PROPAGATION).await;

    // Refresh reuse: rotate once, then present the rotated-out refresh token again.
    let first = fx.tokens(Some("read write")).await;
    let rotated = Tokens::from_resp(&fx.server.refresh(&fx.client, first.refresh(), None).await);
    until_valid_locally(&validator, &rotated.access_token, PROPAGATION).await;
    let reuse = fx.server.refresh(&fx.client, first.refresh(), None).await;
    assert_eq!(
        (reuse.status, reuse.error().as_deref()),
        (400, Some("invalid_grant")),
        "refresh reuse: {}",
        reuse.describe()
    );
    until_revoked_locally(&validator, &rotated.access_token, PROPAGATION).await;
    until_revoked_locally(&validator, &first.access_token, PROPAGATION).await;
    assert_eq!(proxy.calls(), 0, "every answer was local");

    let events = stream_events(&nats).await;
    assert_grant_revoked(
        &events,
        &grant_of(&events, &winner.access_token),
        RevocationReason::CodeReplay,
    );
    let refresh_grant = grant_of(&events, &rotated.access_token);
    assert_eq!(refresh_grant, grant_of(&events, &first.access_token));
    assert_grant_revoked(&events, &refresh_grant, RevocationReason::RefreshReuse);
    fx.stop().await;
}

/// `valet user revoke-grants NAME --client ID` cuts one app off from a user, and without
/// `--client` every app: resource services hear `grant.revoked` (reason `admin`) and
/// refuse the tokens without introspection; the user stays enabled and may sign in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_users_grants_reaches_the_sdk_per_app_or_for_all() {
    let nats = TestNats::start().await;
    let mut fx = fixture(&nats).await;
    let proxy = CountingProxy::start(&fx.server).await;
    let validator = ready_validator(&nats, &proxy, &fx.rs).await;
    let other = fx
        .server
        .create_client(
            &ClientSpec::confidential("Other app")
                .redirect(APP_CB)
                .scopes("read"),
        )
        .await;
    let first = fx.tokens(Some("read")).await;
    let second = fx
        .server
        .user_tokens(&mut fx.browser, &fx.user, &other, Some("read"))
        .await;
    until_valid_locally(&validator, &first.access_token, PROPAGATION).await;
    until_valid_locally(&validator, &second.access_token, PROPAGATION).await;

    let revoke = |args: &[&str]| {
        let mut all = vec!["user", "revoke-grants", fx.user.username.as_str()];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    let run = |args: Vec<String>| {
        let server = &fx.server;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            server.cli(&args, None).await
        }
    };
    let out = run(revoke(&["--client", &other.client_id])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("revoked 1 grant(s) of user {}", fx.user.username)
    );
    until_revoked_locally(&validator, &second.access_token, PROPAGATION).await;
    assert!(
        validator.check(&first.access_token).is_ok(),
        "the other app keeps its grant"
    );

    let out = run(revoke(&[])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until_revoked_locally(&validator, &first.access_token, PROPAGATION).await;
    assert_eq!(proxy.calls(), 0, "every answer was local");
    let events = stream_events(&nats).await;
    for token in [&first.access_token, &second.access_token] {
        assert_grant_revoked(&events, &grant_of(&events, token), RevocationReason::Admin);
    }

    // Unknown users and clients are errors; the user may sign in again.
    for args in [
        vec!["user", "revoke-grants", "nobody"],
        revoke(&["--client", "0123456789abcdef0123456789abcdef"])
            .iter()
            .map(String::as_str)
            .collect(),
    ] {
        let out = fx.server.cli(&args, None).await;
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not found"),
            "{args:?}"
        );
    }
    let again = fx.tokens(Some("read")).await;
    until_valid_locally(&validator, &again.access_token, PROPAGATION).await;
    fx.stop().await;
}

/// SECURITY.md 33 over NATS: after flows that hand out codes, access and refresh tokens
/// and client secrets (and revoke some of them every way there is), no message of the
/// stream carries any of them, in its payload, headers or subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_no_raw_code_token_or_secret_in_the_stream() {
    let nats = TestNats::start().await;
    let mut fx = fixture(&nats).await;
    let mut secrets: Vec<String> = vec![
        fx.client.secret().to_owned(),
        fx.rs.secret().to_owned(),
        fx.user.password.clone(),
    ];
    fn keep(tokens: &Tokens, secrets: &mut Vec<String>) {
        secrets.push(tokens.access_token.clone());
        secrets.extend(tokens.refresh_token.clone());
    }

    // A code flow, a refresh, then a reuse of the old refresh token.
    let (code, pkce) = fx.code(Some("read write")).await;
    secrets.extend([code.clone(), pkce.verifier.clone()]);
    let first = Tokens::from_resp(
        &fx.server
            .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
            .await,
    );
    keep(&first, &mut secrets);
    let rotated = Tokens::from_resp(&fx.server.refresh(&fx.client, first.refresh(), None).await);
    keep(&rotated, &mut secrets);
    assert_eq!(
        fx.server
            .refresh(&fx.client, first.refresh(), None)
            .await
            .status,
        400
    );

    // A code replay.
    let (code, pkce) = fx.code(Some("read")).await;
    secrets.extend([code.clone(), pkce.verifier.clone()]);
    let replayed = Tokens::from_resp(
        &fx.server
            .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
            .await,
    );
    keep(&replayed, &mut secrets);
    assert_eq!(
        fx.server
            .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
            .await
            .status,
        400
    );

    // Revocations by access token and by refresh token.
    let by_access = fx.tokens(None).await;
    keep(&by_access, &mut secrets);
    assert_eq!(
        fx.server
            .revoke(&fx.client.basic(), &by_access.access_token, None)
            .await
            .status,
        200
    );
    let by_refresh = fx.tokens(None).await;
    keep(&by_refresh, &mut secrets);
    assert_eq!(
        fx.server
            .revoke(
                &fx.client.basic(),
                by_refresh.refresh(),
                Some("refresh_token")
            )
            .await
            .status,
        200
    );

    // client_credentials, one kept and one revoked, from a client created now.
    let svc = service_client(&fx.server, "canary-svc").await;
    secrets.push(svc.secret().to_owned());
    for revoke in [false, true] {
        let tokens = Tokens::from_resp(&fx.server.client_credentials(&svc, None).await);
        keep(&tokens, &mut secrets);
        if revoke {
            assert_eq!(
                fx.server
                    .revoke(&svc.basic(), &tokens.access_token, None)
                    .await
                    .status,
                200
            );
        }
    }

    // A client disabled (revokes its tokens) after a grant of its own.
    let gone = fx
        .server
        .create_client(
            &ClientSpec::confidential("gone")
                .redirect(APP_CB)
                .scopes("read"),
        )
        .await;
    secrets.push(gone.secret().to_owned());
    let mut browser = fx.server.browser();
    let gone_tokens = fx
        .server
        .user_tokens(&mut browser, &fx.user, &gone, None)
        .await;
    keep(&gone_tokens, &mut secrets);
    fx.server.disable_client(&gone.client_id).await;

    let published = until_stream_has_the_log(&fx.server, &nats, PROPAGATION).await;
    // 3 (code, refresh, reuse) + 2 (replay) + 2 + 2 (revocations) + 3 (client_credentials)
    // + 2 (the disabled client's grant).
    assert_eq!(published, 14, "messages published by the canary flows");

    // The digests of the tokens are expected in the stream; the tokens themselves, any
    // part of them after the prefix, codes and secrets are not.
    let mut needles: HashSet<String> = HashSet::new();
    for secret in &secrets {
        needles.insert(secret.clone());
        // `valet_at_<random>`: the random part alone must not appear either.
        if let Some(random) = secret
            .strip_prefix("valet_")
            .and_then(|s| s.split_once('_').map(|(_, random)| random))
        {
            assert!(random.len() >= 40, "{}...", &secret[..12]);
            needles.insert(random.to_owned());
        }
    }
    // Every message: the token events and the signing keys' (public JWKs only).
    let messages = nats.stream_messages(STREAM).await;
    assert_eq!(messages.len() as u64, publishable_events(&fx.server).await);
    let mut kinds = HashSet::new();
    for message in &messages {
        let mut bytes: Vec<u8> = message.subject.as_bytes().to_vec();
        bytes.extend_from_slice(&message.payload);
        if let Some(headers) = &message.headers {
            for (name, values) in headers.iter() {
                bytes.extend_from_slice(name.as_ref());
                for value in values {
                    bytes.extend_from_slice(value.as_str().as_bytes());
                }
            }
        }
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "a raw secret ({}...) appears in the stream message on {}",
                &needle[..needle.len().min(12)],
                message.subject
            );
        }
        let Some(event) = Message::from_json(&message.payload)
            .expect("a stream message")
            .into_token()
        else {
            continue;
        };
        if let Some(digest) = &event.token_sha256 {
            assert!(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        kinds.insert((event.event_type, event.reason));
    }
    for kind in [
        (EventType::TokenIssued, None),
        (
            EventType::TokenRevoked,
            Some(RevocationReason::ClientRequest),
        ),
        (
            EventType::GrantRevoked,
            Some(RevocationReason::ClientRequest),
        ),
        (EventType::GrantRevoked, Some(RevocationReason::CodeReplay)),
        (
            EventType::GrantRevoked,
            Some(RevocationReason::RefreshReuse),
        ),
        (
            EventType::GrantRevoked,
            Some(RevocationReason::ClientDisabled),
        ),
    ] {
        assert!(
            kinds.contains(&kind),
            "the canary flows published no {kind:?}: {kinds:?}"
        );
    }
    fx.stop().await;
}

/// SECURITY.md 42: the resource service is down while 1,000 tokens are issued and
/// revoked over HTTP. When it starts, it replays the stream, and from the moment it
/// reports ready it refuses every one of them (and accepts a token never revoked),
/// without asking the introspection endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s42_an_sdk_offline_during_1000_revocations_refuses_all_of_them_once_ready() {
    const TOKENS: usize = 1000;
    let nats = TestNats::start().await;
    let server = server(&nats).await;
    let svc = service_client(&server, "printer").await;
    let rs = service_client(&server, "designs").await;
    let proxy = CountingProxy::start(&server).await;

    let control = Tokens::from_resp(&server.client_credentials(&svc, None).await).access_token;
    let server_ref = &server;
    let svc_ref = &svc;
    let revoked: Vec<String> = stream::iter(0..TOKENS)
        .map(|_| async move {
            let token =
                Tokens::from_resp(&server_ref.client_credentials(svc_ref, None).await).access_token;
            let resp = server_ref.revoke(&svc_ref.basic(), &token, None).await;
            assert_eq!(resp.status, 200, "/revoke: {}", resp.describe());
            token
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(revoked.iter().collect::<HashSet<_>>().len(), TOKENS);
    // Every revocation has been published while the service was away.
    let published = until_stream_has_the_log(&server, &nats, Duration::from_secs(60)).await;
    assert_eq!(published, 2 * TOKENS as u64 + 1);

    let validator = validator(&nats, &proxy, &rs).await;
    validator
        .wait_ready(Some(READY))
        .await
        .unwrap_or_else(|e| panic!("not ready: {e} ({:?})", validator.status()));
    // No waiting from here on: ready means every revocation has been applied.
    let accepted: Vec<&String> = revoked
        .iter()
        .filter(|token| validator.check(token) != Err(Rejection::Revoked))
        .collect();
    assert!(
        accepted.is_empty(),
        "{} of {TOKENS} revoked tokens not refused as revoked right after ready",
        accepted.len()
    );
    for token in revoked.iter().take(50) {
        assert_eq!(validator.authenticate(token).await, Err(Rejection::Revoked));
    }
    let info = validator
        .check(&control)
        .expect("the control token is valid");
    assert_eq!(info.source, Source::Local);
    assert_eq!(proxy.calls(), 0, "catching up never introspects");
    let status = validator.status();
    assert!(status.applied >= published, "{status:?}");
    server.stop().await;
}

/// A NATS outage shows at once: the backlog is counted from the log every half second,
/// however long the relay's publish waits for acks, so /readyz and /metrics report it
/// within a second of the first event NATS did not confirm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_of_3_s_shows_a_backlog_within_1_s() {
    let mut nats = TestNats::start().await;
    let server = server(&nats).await;
    let svc = service_client(&server, "printer").await;
    let _ = server.client_credentials(&svc, None).await;
    until_stream_has_the_log(&server, &nats, PROPAGATION).await;
    assert_eq!(readyz_relay(&server).await["backlog"], 0);

    nats.stop().await;
    let outage = Instant::now();
    let _ = server.client_credentials(&svc, None).await;
    let issued = Instant::now();
    let relay = loop {
        let relay = readyz_relay(&server).await;
        if relay["backlog"].as_i64().unwrap_or(0) > 0 {
            break relay;
        }
        assert!(
            issued.elapsed() < Duration::from_secs(1),
            "/readyz showed no backlog within 1 s of an unconfirmed event: {relay}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(relay["active"], true, "{relay}");
    assert!(metric(&server, "valet_relay_backlog").await > 0);
    assert!(
        issued.elapsed() < Duration::from_secs(1),
        "/metrics showed the backlog {:?} after the event",
        issued.elapsed()
    );

    // Back after 3 s: the backlog drains and the event is in the stream.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(outage.elapsed())).await;
    nats.resume().await;
    until_backlog_drained(&server).await;
    assert_eq!(
        until_stream_has_the_log(&server, &nats, PROPAGATION).await,
        2
    );
    server.stop().await;
}

/// SECURITY.md 40 at the HTTP level: while NATS is down, issuance and revocation go on
/// and /readyz (still 200) and /metrics report the relay's backlog; once NATS is back the
/// backlog drains to 0 and every event is in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s40_readyz_and_metrics_show_the_relay_backlog_during_a_nats_outage() {
    let mut nats = TestNats::start().await;
    let server = server(&nats).await;
    let svc = service_client(&server, "printer").await;

    let before = Tokens::from_resp(&server.client_credentials(&svc, None).await);
    until_stream_has_the_log(&server, &nats, PROPAGATION).await;
    let relay = readyz_relay(&server).await;
    assert_eq!(
        (
            &relay["active"],
            &relay["nats_connected"],
            &relay["backlog"]
        ),
        (&Value::Bool(true), &Value::Bool(true), &Value::from(0)),
        "{relay}"
    );

    nats.stop().await;
    let mut during = Vec::new();
    for i in 0..20 {
        let tokens = Tokens::from_resp(&server.client_credentials(&svc, None).await);
        if i % 2 == 0 {
            let resp = server
                .revoke(&svc.basic(), &tokens.access_token, None)
                .await;
            assert_eq!(
                resp.status,
                200,
                "/revoke during the outage: {}",
                resp.describe()
            );
        }
        during.push(tokens.access_token);
    }
    let start = Instant::now();
    let relay = loop {
        let relay = readyz_relay(&server).await;
        // 20 issued + 10 revoked, counted at the relay's next failed attempt.
        if relay["backlog"].as_i64().unwrap_or(0) >= 30 && relay["nats_connected"] == false {
            break relay;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "/readyz never showed the whole backlog: {relay}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A leader that cannot publish steps down after a while and takes the lease again
    // (it is the only replica), so `active` flips during the outage; a leader is named.
    assert!(relay["leader"].is_string(), "{relay}");
    assert!(metric(&server, "valet_relay_backlog").await >= 30);
    assert_eq!(metric(&server, "valet_relay_nats_connected").await, 0);
    // The backlog shows before the first publish gives up (its acks time out later, or
    // the leader steps down for the stall).
    let start = Instant::now();
    while metric(&server, "valet_relay_publish_failures_total").await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no failed publish was recorded during the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Issuance still works with a backlog.
    let late = Tokens::from_resp(&server.client_credentials(&svc, None).await);

    nats.resume().await;
    until_backlog_drained(&server).await;
    assert_eq!(metric(&server, "valet_relay_backlog").await, 0);
    assert_eq!(metric(&server, "valet_relay_nats_connected").await, 1);
    let published = until_stream_has_the_log(&server, &nats, PROPAGATION).await;
    assert_eq!(
        published,
        1 + 20 + 10 + 1,
        "before + issued + revoked + late"
    );
    let events = stream_events(&nats).await;
    let issued: Vec<String> = events
        .iter()
        .filter(|e| e.event_type == EventType::TokenIssued)
        .filter_map(|e| e.token_sha256.clone())
        .collect();
    let expected: Vec<String> = std::iter::once(&before.access_token)
        .chain(&during)
        .chain(std::iter::once(&late.access_token))
        .map(|t| sha256_hex(t))
        .collect();
    assert_eq!(issued, expected, "every issuance arrived, in order");
    // Per token stream, the revocation comes after the issuance.
    for (i, token) in during.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let digest = sha256_hex(token);
        let at = |kind: EventType| {
            events
                .iter()
                .position(|e| e.event_type == kind && e.token_sha256.as_deref() == Some(&digest))
                .unwrap_or_else(|| panic!("no {kind:?} for token {i}"))
        };
        assert!(at(EventType::TokenIssued) < at(EventType::TokenRevoked));
    }
    server.stop().await;
}
