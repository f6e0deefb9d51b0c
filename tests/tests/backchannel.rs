//! Login sessions seen from the user and from the apps: the account page ("Remove
//! access", "Sign out", "Sign out everywhere") and OpenID Connect Back-Channel Logout
//! (OIDC.md 16), delivered from the log to a receiver the test runs, through a 500, a
//! receiver down for 30 s and a `kill -9` of Valet. Logout tokens are checked with the
//! `jsonwebtoken` crate against the JWKS.

use std::time::{Duration, Instant};

use serde_json::Value;
use valet_tests::html::find_form;
use valet_tests::receiver::Receiver;
use valet_tests::server::{
    AuthRequest, Browser, ClientCreds, ClientSpec, EventRow, Pkce, SidInLogoutTokens, TestServer,
    TestUser,
};

const APP_CB: &str = "https://app.example/cb";
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

use valet_tests::receiver::free_port;

// ---------------------------------------------------------------------------------------
// Checking a logout token with a library nobody here wrote
// ---------------------------------------------------------------------------------------

/// The claims of a logout token that passes OIDC.md 16's checks at `client`.
async fn verified_logout_token(server: &TestServer, token: &str, client: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).expect("a JWT header");
    assert_eq!(header.typ.as_deref(), Some("logout+jwt"));
    let jwks = server
        .http()
        .get(server.url("/jwks.json"))
        .send()
        .await
        .expect("JWKS")
        .text()
        .await
        .expect("JWKS text");
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks).expect("a JWK set");
    let jwk = jwks
        .find(header.kid.as_deref().expect("kid"))
        .expect("the token's key is published");
    let alg: jsonwebtoken::Algorithm = jwk
        .common
        .key_algorithm
        .expect("alg")
        .to_string()
        .parse()
        .expect("an algorithm");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("a decoding key");
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_issuer(&[server.base_url()]);
    validation.set_audience(&[client]);
    validation.set_required_spec_claims(&["iss", "aud", "iat", "exp", "jti"]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("the logout token verifies")
        .claims;
    assert!(claims["events"][EVENT].is_object(), "{claims}");
    assert!(claims.get("nonce").is_none(), "never a nonce: {claims}");
    assert!(claims["jti"].is_string());
    assert!(claims["sub"].is_string() || claims["sid"].is_string());
    claims
}

// ---------------------------------------------------------------------------------------
// Signing in
// ---------------------------------------------------------------------------------------

/// Alice signs in to `client` in `browser`; the token response (with an id_token).
async fn sign_in(
    server: &TestServer,
    browser: &mut Browser,
    user: &TestUser,
    client: &ClientCreds,
) -> Value {
    server.sign_in_for(browser, user, client, "openid").await
}

fn sid_of(tokens: &Value) -> String {
    let id_token = tokens["id_token"].as_str().expect("id_token");
    let payload = id_token.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .expect("base64url"),
    )
    .expect("claims");
    claims["sid"].as_str().expect("sid").to_owned()
}

async fn app(server: &TestServer, name: &str, port: u16, sid: SidInLogoutTokens) -> ClientCreds {
    server
        .create_client(
            &ClientSpec::confidential(name)
                .redirect(APP_CB)
                .scopes("openid read")
                .backchannel_logout(&format!("http://127.0.0.1:{port}/logout"), sid),
        )
        .await
}

/// The delivery attempts recorded for `client`, in order.
async fn attempts(server: &TestServer, client: &str) -> Vec<EventRow> {
    server
        .events_of("BackchannelLogoutAttempted")
        .await
        .into_iter()
        .filter(|e| e.payload["delivery"]["client_id"] == client)
        .collect()
}

async fn until_attempts(
    server: &TestServer,
    client: &str,
    done: impl Fn(&[EventRow]) -> bool,
) -> Vec<EventRow> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = attempts(server, client).await;
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "attempts for {client}: {:?}",
            seen.iter().map(|e| &e.payload).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn logout_url(server: &TestServer, tokens: &Value) -> String {
    server.url(&format!(
        "/logout?{}",
        valet_tests::server::form_body(&[(
            "id_token_hint",
            tokens["id_token"].as_str().expect("id_token")
        )])
    ))
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

/// o16: when a session ends, every client it signed in to that registered a
/// `backchannel_logout_uri` receives one signed logout token (`iss`, `aud`, `iat`, `exp`,
/// `jti`, the event, `sub`, `sid`, no `nonce`); a client the session never signed in to
/// receives nothing; each attempt is an event `valet audit` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o16_back_channel_logout_tokens_reach_the_clients_of_an_ended_session() {
    let server = TestServer::start().await;
    let user = server.create_user("alice", "a long passphrase").await;
    let (port_a, port_b, port_c) = (free_port(), free_port(), free_port());
    let (ra, rb, rc) = (
        Receiver::default(),
        Receiver::default(),
        Receiver::default(),
    );
    let _serving = [
        ra.serve(port_a).await,
        rb.serve(port_b).await,
        rc.serve(port_c).await,
    ];
    let a = app(&server, "App A", port_a, SidInLogoutTokens::Required).await;
    let b = app(&server, "App B", port_b, SidInLogoutTokens::Optional).await;
    let _c = app(&server, "App C", port_c, SidInLogoutTokens::Optional).await;
    let mut browser = server.browser();
    let tokens = sign_in(&server, &mut browser, &user, &a).await;
    sign_in(&server, &mut browser, &user, &b).await;
    let sid = sid_of(&tokens);

    let resp = browser.get(&logout_url(&server, &tokens)).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let started = Instant::now();
    for (receiver, client) in [(&ra, &a), (&rb, &b)] {
        let accepted = receiver.until_accepted(1, Duration::from_secs(10)).await;
        assert_eq!(accepted.len(), 1);
        let claims = verified_logout_token(&server, &accepted[0], &client.client_id).await;
        assert_eq!(claims["sid"], sid.as_str(), "{claims}");
        assert_eq!(
            claims["sub"],
            tokens_sub(&server, &tokens).await,
            "{claims}"
        );
    }
    println!(
        "logout tokens delivered {:?} after the logout",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rc.seen(), 0, "App C never signed in with this session");

    let recorded = attempts(&server, &a.client_id).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].payload["outcome"]["result"], "delivered");
    assert_eq!(recorded[0].payload["attempt"], 1);
    let stream = recorded[0].stream_id.clone();
    let out = server
        .cli(&["audit", "log", "--stream", &stream], None)
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("BackchannelLogoutAttempted"), "{text}");
    // The dispatcher reports itself where the relay does.
    let ready = server.get("/readyz").await.json();
    assert_eq!(ready["backchannel"]["active"], true, "{ready}");
    let metrics = server.get("/metrics").await.text();
    assert!(
        metrics.contains("valet_backchannel_active 1")
            && metrics.contains("valet_backchannel_delivered_total 2"),
        "{metrics}"
    );
    let log = server.events_dump().await;
    for token in ra.accepted().iter().chain(rb.accepted().iter()) {
        assert!(!log.contains(token.as_str()), "a logout token in the log");
    }
    server.stop().await;
}

/// The `sub` of a token response's id_token.
async fn tokens_sub(server: &TestServer, tokens: &Value) -> String {
    let _ = server;
    let id_token = tokens["id_token"].as_str().expect("id_token");
    let payload = id_token.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .expect("base64url"),
    )
    .expect("claims");
    claims["sub"].as_str().expect("sub").to_owned()
}

/// A receiver answering 500 gets the token again (backoff) and takes it with 200; a
/// receiver that is down for 30 s gets it once it is back. Every attempt is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_channel_delivery_retries_a_500_and_a_receiver_down_for_30_s() {
    let server = TestServer::start().await;
    let user = server.create_user("alice", "a long passphrase").await;
    let (port_a, port_b) = (free_port(), free_port());
    let (ra, rb) = (Receiver::default(), Receiver::default());
    ra.answer(&[500]);
    let _a_serving = ra.serve(port_a).await;
    let a = app(&server, "Flaky app", port_a, SidInLogoutTokens::Optional).await;
    let b = app(&server, "Sleeping app", port_b, SidInLogoutTokens::Optional).await;
    let mut browser = server.browser();
    let tokens = sign_in(&server, &mut browser, &user, &a).await;
    sign_in(&server, &mut browser, &user, &b).await;

    let resp = browser.get(&logout_url(&server, &tokens)).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let accepted = ra.until_accepted(1, Duration::from_secs(10)).await;
    verified_logout_token(&server, &accepted[0], &a.client_id).await;
    assert_eq!(ra.seen(), 2, "a 500, then the token again");
    let recorded = until_attempts(&server, &a.client_id, |e| e.len() >= 2).await;
    let outcomes: Vec<&Value> = recorded.iter().map(|e| &e.payload["outcome"]).collect();
    assert_eq!(outcomes[0]["result"], "refused");
    assert_eq!(outcomes[0]["status"], 500);
    assert_eq!(outcomes[1]["result"], "delivered");

    // App B's receiver is down for 30 s, then comes back.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let failed = attempts(&server, &b.client_id).await;
    assert!(failed.len() >= 3, "retried while down: {}", failed.len());
    assert!(failed
        .iter()
        .all(|e| e.payload["outcome"]["result"] == "unreachable"));
    let back = Instant::now();
    let _b_serving = rb.serve(port_b).await;
    let accepted = rb.until_accepted(1, Duration::from_secs(70)).await;
    println!(
        "delivered {:?} after the receiver came back",
        back.elapsed()
    );
    verified_logout_token(&server, &accepted[0], &b.client_id).await;
    let recorded = until_attempts(&server, &b.client_id, |e| {
        e.last()
            .is_some_and(|l| l.payload["outcome"]["result"] == "delivered")
    })
    .await;
    assert!(recorded.len() > failed.len());
    server.stop().await;
}

/// `kill -9` of Valet while a logout token is on its way: another `valet serve` on the
/// same database takes the dispatcher's lease and delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_channel_delivery_survives_a_kill_9_of_valet_mid_delivery() {
    let server = TestServer::start().await;
    let user = server.create_user("alice", "a long passphrase").await;
    let port = free_port();
    let receiver = Receiver::default();
    let _serving = receiver.serve(port).await;
    let a = app(&server, "App", port, SidInLogoutTokens::Required).await;
    let mut browser = server.browser();
    let tokens = sign_in(&server, &mut browser, &user, &a).await;

    // The first request is held for 3 s: Valet dies while it waits for the answer.
    receiver.hold_next(Duration::from_secs(3));
    let resp = browser.get(&logout_url(&server, &tokens)).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.seen() == 0 {
        assert!(Instant::now() < deadline, "the token was never sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.signal("KILL");
    let replica = server.replica(&[]).await;
    // The held request died with its sender; the replica sends the token again.
    let accepted = receiver.until_accepted(1, Duration::from_secs(20)).await;
    assert_eq!(
        receiver.seen(),
        2,
        "sent, cut short by the kill, sent again"
    );
    let claims = verified_logout_token(&replica, &accepted[0], &a.client_id).await;
    assert_eq!(claims["sid"], sid_of(&tokens).as_str());
    let recorded = until_attempts(&replica, &a.client_id, |e| {
        e.iter()
            .any(|e| e.payload["outcome"]["result"] == "delivered")
    })
    .await;
    assert_eq!(
        recorded
            .iter()
            .filter(|e| e.payload["outcome"]["result"] == "delivered")
            .count(),
        1,
        "delivered once recorded"
    );
    replica.stop().await;
    server.stop().await;
}

/// The account page: signed in, it lists the apps holding grants and the sessions; a
/// POST without the CSRF field changes nothing; "Remove access" revokes the app's grants
/// (reason `consent_revoked`) and tells the app; "Sign out everywhere" ends every
/// session (the next `prompt=none` gets `login_required`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_page_removes_an_app_and_signs_out_everywhere() {
    let server = TestServer::start().await;
    let user = server.create_user("alice", "a long passphrase").await;
    let port = free_port();
    let receiver = Receiver::default();
    let _serving = receiver.serve(port).await;
    let a = app(&server, "Photo printer", port, SidInLogoutTokens::Optional).await;
    let other = server
        .create_client(
            &ClientSpec::confidential("Calendar")
                .redirect(APP_CB)
                .scopes("openid read"),
        )
        .await;
    let mut browser = server.browser();
    let tokens = sign_in(&server, &mut browser, &user, &a).await;
    let kept = sign_in(&server, &mut browser, &user, &other).await;
    // A second browser: a second session.
    let mut phone = server.browser();
    sign_in(&server, &mut phone, &user, &other).await;

    let page = browser.get(&server.url("/account")).await;
    assert_eq!(page.status, 200, "{}", page.describe());
    let text = page.text();
    assert!(
        text.contains("Photo printer") && text.contains("Calendar"),
        "{text}"
    );
    assert_eq!(
        text.matches("/account/sessions/end\"").count(),
        2,
        "two sessions"
    );
    assert!(text.contains("this browser"));

    let remove = find_form(&text, |f| {
        f.action == "/account/apps/remove"
            && f.hidden_value("client_id").as_deref() == Some(&a.client_id)
    })
    .expect("a Remove access form for the app");
    let forged = browser
        .post_form(
            &server.url("/account/apps/remove"),
            &[("client_id".to_owned(), a.client_id.clone())],
        )
        .await;
    assert_eq!(forged.status, 403, "no CSRF field: {}", forged.describe());
    let done = browser
        .post_form(&server.url(&remove.action), &remove.hidden())
        .await;
    assert_eq!(done.status, 303, "{}", done.describe());
    let after = browser
        .get(&server.url("/account?done=app_removed"))
        .await
        .text();
    assert!(after.contains("Access removed"), "{after}");
    assert!(!after.contains("Remove access of Photo printer"), "{after}");
    let revoked = server.events_of("GrantRevoked").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].payload["reason"], "consent_revoked");
    assert_eq!(server.events_of("ConsentRevoked").await.len(), 1);
    let accepted = receiver.until_accepted(1, Duration::from_secs(10)).await;
    let claims = verified_logout_token(&server, &accepted[0], &a.client_id).await;
    assert_eq!(claims["sub"], tokens_sub(&server, &tokens).await);
    let token = tokens["access_token"].as_str().unwrap();
    let rs = server
        .create_client(
            &ClientSpec::confidential("rs")
                .grant("client_credentials")
                .scopes("introspect"),
        )
        .await;
    assert!(
        !server.is_active(&rs, token).await,
        "the removed app's token"
    );
    assert!(
        server
            .is_active(&rs, kept["access_token"].as_str().unwrap())
            .await,
        "the other app keeps its access"
    );

    let page = browser.get(&server.url("/account")).await.text();
    let everywhere = find_form(&page, |f| f.action == "/account/sessions/end-all")
        .expect("a Sign out everywhere form");
    let out = browser
        .post_form(&server.url(&everywhere.action), &everywhere.hidden())
        .await;
    assert_eq!(out.status, 200, "{}", out.describe());
    assert!(out.text().contains("signed out"));
    for b in [&mut browser, &mut phone] {
        let req = AuthRequest::new(&other.client_id, APP_CB)
            .pkce(&Pkce::new())
            .scope("openid")
            .set("prompt", "none");
        let resp = b.get(&server.url(&req.path())).await;
        let end = valet_tests::server::FlowEnd::new(resp);
        assert_eq!(end.param("error").as_deref(), Some("login_required"));
    }
    let ended = server.events_of("SessionEnded").await;
    assert_eq!(ended.len(), 2);
    assert!(ended
        .iter()
        .all(|e| e.payload["reason"] == "signed_out_everywhere"));
    // Without a session the page asks to sign in; signing in there shows the page.
    let signin = browser.get(&server.url("/account")).await.text();
    let form = find_form(&signin, |f| f.is_login()).expect("a sign-in form");
    let mut fields = form.hidden();
    fields.push(("username".to_owned(), "alice".to_owned()));
    fields.push(("password".to_owned(), "a long passphrase".to_owned()));
    let signed_in = browser
        .post_form(&server.url("/account/login"), &fields)
        .await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.describe());
    let page = browser.get(&server.url("/account")).await.text();
    assert!(
        page.contains("Calendar") && page.contains("this browser"),
        "{page}"
    );
    server.stop().await;
}
