//! How long a user's action takes to reach the services and apps it concerns:
//!
//! 1. "Remove access" on the account page → the resource-server SDK refuses the app's
//!    access token (revocation pushed over NATS; no introspection). Measured from the
//!    account page's answer (the user sees "Access removed") until `Validator::check`
//!    says `Revoked`, polled about every 50 µs.
//! 2. A session's end (RP-Initiated Logout) → the app's back-channel logout endpoint
//!    receives the logout token. Measured from the logout page's answer until the
//!    receiver in this process takes the token.
//!
//! Each sample signs in again (a fresh session, a fresh grant), so samples are apart.
//!
//! Run: `cargo build --release -p valet-cli && VALET_BIN=$PWD/target/release/valet \
//!       cargo bench -p valet-tests --bench logout_lag`
//! Environment: SAMPLES (per measurement, default 200), WARMUP (default 10).
//! Goal: both p99 < 100 ms on this machine.

use std::time::{Duration, Instant};

use serde_json::Value;
use valet_resource::{Rejection, Validator, ValidatorConfig};
use valet_tests::html::find_form;
use valet_tests::nats::TestNats;
use valet_tests::receiver::{free_port, Receiver};
use valet_tests::server::{
    ClientCreds, ClientSpec, SidInLogoutTokens, TestServer, TestUser, APP_CB,
};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(label: &str, mut ms: Vec<f64>) -> (String, f64) {
    ms.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms[ms.len() - 1],
    );
    (
        format!(
            "| {label} | {} | {p50:.2} | {p99:.2} | {max:.2} | {} |",
            ms.len(),
            if p99 < 100.0 { "met" } else { "missed" }
        ),
        p99,
    )
}

/// A claim of a JWT, unverified (the tests check signatures; here only matching counts).
fn claim(jwt: &str, name: &str) -> String {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
        .expect("base64url");
    let claims: Value = serde_json::from_slice(&bytes).expect("claims");
    claims[name].as_str().unwrap_or_default().to_owned()
}

/// "Remove access" → the SDK refuses the token, in milliseconds.
async fn remove_access_lag(
    server: &TestServer,
    sdk: &Validator,
    user: &TestUser,
    app: &ClientCreds,
) -> f64 {
    let mut browser = server.browser();
    let tokens = server
        .sign_in_for(&mut browser, user, app, "openid read")
        .await;
    let token = tokens["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sdk.check(&token).is_err() {
        assert!(Instant::now() < deadline, "the SDK never saw the token");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let page = browser.get(&server.url("/account")).await.text();
    let form = find_form(&page, |f| {
        f.action == "/account/apps/remove"
            && f.hidden_value("client_id").as_deref() == Some(app.client_id.as_str())
    })
    .expect("a Remove access form");
    let done = browser
        .post_form(&server.url(&form.action), &form.hidden())
        .await;
    assert_eq!(done.status, 303, "{}", done.describe());
    let answered = Instant::now();
    let poller = sdk.clone();
    let lag = tokio::task::spawn_blocking(move || {
        while poller.check(&token) != Err(Rejection::Revoked) {
            assert!(answered.elapsed() < Duration::from_secs(5), "never refused");
            std::thread::sleep(Duration::from_micros(50));
        }
        answered.elapsed().as_secs_f64() * 1000.0
    })
    .await
    .expect("the poller");
    // End the sample's session: sessions left standing would each hear of the next
    // removal, and the samples would not be alike.
    let hint = tokens["id_token"].as_str().expect("id_token");
    let url = server.url(&format!(
        "/logout?{}",
        valet_tests::server::form_body(&[("id_token_hint", hint)])
    ));
    assert_eq!(browser.get(&url).await.status, 200);
    lag
}

/// A session ends → its app receives the logout token, in milliseconds.
async fn logout_token_lag(
    server: &TestServer,
    receiver: &Receiver,
    user: &TestUser,
    app: &ClientCreds,
) -> f64 {
    let mut browser = server.browser();
    let tokens = server
        .sign_in_for(&mut browser, user, app, "openid read")
        .await;
    let hint = tokens["id_token"].as_str().expect("id_token");
    let sid = claim(hint, "sid");
    let url = server.url(&format!(
        "/logout?{}",
        valet_tests::server::form_body(&[("id_token_hint", hint)])
    ));
    let resp = browser.get(&url).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let answered = Instant::now();
    let deadline = answered + Duration::from_secs(5);
    loop {
        let accepted = receiver.accepted_at();
        if let Some((_, at)) = accepted.iter().find(|(t, _)| claim(t, "sid") == sid) {
            return at.saturating_duration_since(answered).as_secs_f64() * 1000.0;
        }
        assert!(Instant::now() < deadline, "no logout token");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let samples: usize = env_or("SAMPLES", 200);
    let warmup: usize = env_or("WARMUP", 10);
    let nats = TestNats::start().await;
    let server = TestServer::start_with(&[("VALET_NATS_URL", &nats.url())]).await;
    let user = server.create_user("alice", "a long passphrase").await;
    let port = free_port();
    let receiver = Receiver::default();
    let _serving = receiver.serve(port).await;
    let app = server
        .create_client(
            &ClientSpec::confidential("App")
                .redirect(APP_CB)
                .scopes("openid read")
                .backchannel_logout(
                    &format!("http://127.0.0.1:{port}/logout"),
                    SidInLogoutTokens::Required,
                ),
        )
        .await;
    let sdk = Validator::connect(ValidatorConfig::new(nats.url()))
        .await
        .expect("the SDK connects");
    eprintln!("logout lag: {samples} samples each, after {warmup} warm-up ones");

    let mut removal = Vec::with_capacity(samples);
    for i in 0..samples + warmup {
        let ms = remove_access_lag(&server, &sdk, &user, &app).await;
        if i >= warmup {
            removal.push(ms);
        }
    }
    let mut logout = Vec::with_capacity(samples);
    for i in 0..samples + warmup {
        let ms = logout_token_lag(&server, &receiver, &user, &app).await;
        if i >= warmup {
            logout.push(ms);
        }
    }
    println!("| lag | samples | p50 ms | p99 ms | max ms | goal p99 < 100 ms |");
    println!("|---|---|---|---|---|---|");
    let (row, _) = summary("\"Remove access\" → the SDK refuses the token", removal);
    println!("{row}");
    let (row, _) = summary("session ends → the app receives the logout token", logout);
    println!("{row}");
    server.stop().await;
}
