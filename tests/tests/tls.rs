//! HTTPS served by `valet serve` (issue: TLS on every hop), with certificates made here by
//! rcgen under a CA of the test's own:
//! - client_credentials with a client library nobody here wrote (the `oauth2` crate over
//!   reqwest with the test CA as its only root), HSTS, https-only metadata, HTTP/2 and
//!   HTTP/1.1 by ALPN;
//! - the certificate rotated on disk while requests run: none fails, new connections get
//!   the new certificate;
//! - the start-up refusals: plain HTTP on a non-loopback listener or issuer, an http://
//!   issuer with TLS, each one line that says what to change.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge, RedirectUrl,
    Scope, TokenResponse, TokenUrl,
};
use serde_json::Value;
use valet_resource::{
    ConnectError, IntrospectionConfig, Rejection, Source, Validator, ValidatorConfig,
};
use valet_tests::ca::{scratch_dir, TestCa};
use valet_tests::nats::TestNats;
use valet_tests::sdk::until_valid_locally;
use valet_tests::server::{
    authorize_from, client_credentials_token, created_client, run_valet, serve_listening, Browser,
    TestUser,
};
use valet_tests::TestDb;

/// The test CA as reqwest's root.
fn root(ca: &TestCa) -> reqwest::Certificate {
    reqwest::Certificate::from_der(&ca.root_der()).expect("CA DER")
}

/// An HTTPS client trusting only the test CA; every request on a new connection (so each
/// one shakes hands and sees the certificate served now).
fn https_client(ca: &TestCa) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root(ca))
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("https client")
}

/// `valet serve` with the certificate in `dir`, on a free loopback port, and `extra`
/// arguments: its base URL.
async fn serve_tls(db: &TestDb, dir: &Path, extra: &[&str]) -> (tokio::process::Child, String) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (child, base) = serve(db, &args).await;
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    (child, base)
}

/// `valet ARGS` (a `serve`), once it listens: the process and its base URL.
async fn serve(db: &TestDb, args: &[&str]) -> (tokio::process::Child, String) {
    serve_listening(&db.url, args).await
}

async fn client_credentials_client(db: &TestDb) -> (String, String) {
    service_client(db, "read").await
}

/// A client_credentials client of `scope`: its id and secret.
async fn service_client(db: &TestDb, scope: &str) -> (String, String) {
    registered_client(
        db,
        &["--grant-type", "client_credentials", "--scope", scope],
    )
    .await
}

/// `valet client create --name svc ARGS --json`: the id and secret.
async fn registered_client(db: &TestDb, args: &[&str]) -> (String, String) {
    created_client(&db.url, args).await
}

/// The DER of the certificate a new connection to `base` is served.
async fn served_certificate(http: &reqwest::Client, base: &str) -> Vec<u8> {
    let resp = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate().map(<[u8]>::to_vec))
        .expect("the peer certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_over_https_through_a_certificate_rotation() {
    let ca = TestCa::new();
    let dir = scratch_dir();
    let first = ca.issue_into(&dir, "valet first");
    let db = TestDb::create().await;
    let (mut child, base) = serve_tls(&db, &dir, &[]).await;
    let (id, secret) = client_credentials_client(&db).await;
    let http = https_client(&ca);

    // Metadata names https endpoints only; answers carry HSTS.
    let metadata = http
        .get(format!("{base}/.well-known/openid-configuration"))
        .send()
        .await
        .expect("discovery");
    assert_eq!(
        metadata
            .headers()
            .get("strict-transport-security")
            .and_then(|v| v.to_str().ok()),
        Some("max-age=31536000")
    );
    let metadata: Value =
        serde_json::from_slice(&metadata.bytes().await.expect("body")).expect("JSON");
    for (name, value) in metadata.as_object().unwrap() {
        if let Some(url) = value.as_str().filter(|v| v.contains("://")) {
            assert!(url.starts_with("https://"), "{name}: {url}");
        }
    }
    assert_eq!(served_certificate(&http, &base).await, first);

    // ALPN: HTTP/2 to a client that offers it, HTTP/1.1 to one that does not.
    for (builder, version) in [
        (reqwest::Client::builder(), reqwest::Version::HTTP_2),
        (
            reqwest::Client::builder().http1_only(),
            reqwest::Version::HTTP_11,
        ),
    ] {
        let client = builder
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root(&ca))
            .build()
            .expect("client");
        let resp = client
            .post(format!("{base}/token"))
            .basic_auth(&id, Some(&secret))
            .form(&[("grant_type", "client_credentials"), ("scope", "read")])
            .send()
            .await
            .expect("token");
        assert_eq!((resp.status().as_u16(), resp.version()), (200, version));
    }

    let oauth = BasicClient::new(ClientId::new(id))
        .set_client_secret(ClientSecret::new(secret))
        .set_token_uri(TokenUrl::new(format!("{base}/token")).expect("token url"));
    let token = oauth
        .exchange_client_credentials()
        .add_scope(Scope::new("read".into()))
        .request_async(&http)
        .await
        .expect("a token over HTTPS from the oauth2 crate");
    assert_eq!(
        token
            .scopes()
            .map(|s| s.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        Some(vec!["read".to_owned()])
    );

    // Requests run (each on a new connection) while the certificate is replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, http, oauth) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            http.clone(),
            oauth.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match oauth
                    .exchange_client_credentials()
                    .request_async(&http)
                    .await
                {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("request failed during rotation: {e:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = ca.issue_into(&dir, "valet second");
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_certificate(&http, &base).await != second {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load task");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    assert!(ok.load(Ordering::Relaxed) > 10, "requests ran throughout");

    child.kill().await.expect("kill valet");
    db.drop_database().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each refusal happens before the port is bound, on one line that names the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_off_loopback_and_an_http_issuer_with_tls_are_refused_at_start() {
    let ca = TestCa::new();
    let dir = scratch_dir();
    ca.issue_into(&dir, "valet");
    let db = TestDb::create().await;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["serve", "--listen", "0.0.0.0:0"], "--tls-cert"),
        (
            vec![
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--issuer",
                "http://auth.example.com",
            ],
            "--behind-proxy",
        ),
        (
            vec![
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--issuer",
                "http://127.0.0.1:9",
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
            "https://",
        ),
        (
            vec![
                "serve",
                "--listen",
                "0.0.0.0:0",
                "--behind-proxy",
                "--trusted-proxy",
                "10.0.0.2",
                "--issuer",
                "http://auth.example.com",
            ],
            "https://",
        ),
        (
            vec![
                "serve",
                "--listen",
                "0.0.0.0:0",
                "--behind-proxy",
                "--issuer",
                "https://auth.example.com",
            ],
            "--trusted-proxy",
        ),
    ];
    for (args, fix) in cases {
        let out = run_valet(&db.url, &[], &args, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{args:?} kept running"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        let error: Vec<_> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(error.len(), 1, "{args:?}: {stderr}");
        assert!(error[0].contains(fix), "{args:?}: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    }
    db.drop_database().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The SDK reaches Valet over HTTPS: with the service's CA as its root it introspects a
/// token it has not heard of; with the system's roots the test CA is not trusted and it
/// fails closed; plain http off loopback is refused when it is set up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_speaks_https_to_valet_and_refuses_plain_http_off_loopback() {
    let ca = TestCa::new();
    let dir = scratch_dir();
    ca.issue_into(&dir, "valet");
    let nats = TestNats::start().await;
    let db = TestDb::create().await;
    let nats_url = nats.url();
    let (mut child, base) = serve_tls(&db, &dir, &["--nats-url", &nats_url]).await;
    let (rs_id, rs_secret) = service_client(&db, "introspect").await;
    let introspection = IntrospectionConfig::new(format!("{base}/introspect"), rs_id, rs_secret);

    let trusting = Validator::connect(
        ValidatorConfig::new(nats.url())
            .with_introspection(introspection.clone())
            .with_root_certificate(ca.root_pem()),
    )
    .await
    .expect("validator");
    let unknown = "valet_at_unknown0unknown0unknown0unknown0unk";
    assert_eq!(
        trusting.authenticate(unknown).await,
        Err(Rejection::Inactive)
    );
    assert_eq!(trusting.status().introspection_calls, 1);
    // A token issued over HTTPS: the SDK knows it, from the stream or by introspection.
    let http = https_client(&ca);
    let (id, secret) = client_credentials_client(&db).await;
    let token = client_credentials_token(&http, &base, &id, &secret, "read").await;
    let info = trusting.authenticate(&token).await.expect("a valid token");
    assert!(matches!(info.source, Source::Local | Source::Introspection));

    let system_roots = Validator::connect(
        ValidatorConfig::new(nats.url()).with_introspection(introspection.clone()),
    )
    .await
    .expect("validator");
    assert!(
        matches!(
            system_roots.authenticate(unknown).await,
            Err(Rejection::Unavailable(_))
        ),
        "a certificate of an unknown CA fails closed"
    );

    let plain = IntrospectionConfig::new("http://valet.example/introspect", "rs", "secret");
    let refused =
        Validator::connect(ValidatorConfig::new(nats.url()).with_introspection(plain.clone()))
            .await;
    assert!(
        matches!(&refused, Err(ConnectError::Introspection(why)) if why.contains("https")),
        "{refused:?}"
    );
    assert!(Validator::connect(
        ValidatorConfig::new(nats.url())
            .with_introspection(plain)
            .allow_plain_http()
    )
    .await
    .is_ok());

    child.kill().await.expect("kill valet");
    db.drop_database().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// TLS to NATS: a private nats-server that speaks TLS only and verifies clients (mutual
/// TLS); Valet's relay publishes to it and the SDK follows it, each with the test CA and
/// a client certificate; without the CA, `valet serve` stops at once and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_reaches_the_sdk_over_mutual_tls_to_nats_and_an_untrusted_nats_is_refused() {
    let ca = TestCa::new();
    let (server_dir, client_dir) = (scratch_dir(), scratch_dir());
    ca.issue_into(&server_dir, "nats");
    ca.issue_into(&client_dir, "valet client");
    let ca_file = server_dir.join("ca.pem");
    std::fs::write(&ca_file, ca.root_pem()).expect("write the CA");
    let nats = TestNats::start_tls(
        &server_dir.join("cert.pem"),
        &server_dir.join("key.pem"),
        Some(&ca_file),
    )
    .await;
    let nats_url = nats.tls_url();
    let (client_cert, client_key) = (client_dir.join("cert.pem"), client_dir.join("key.pem"));
    let db = TestDb::create().await;

    // Without the CA: one line naming the option, before listening.
    let refused = run_valet(
        &db.url,
        &[],
        &["serve", "--listen", "127.0.0.1:0", "--nats-url", &nats_url],
        Duration::from_secs(30),
    )
    .await
    .expect("valet serve stops");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("--nats-ca-file"), "{stderr}");

    let (mut child, base) = serve(
        &db,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--nats-url",
            &nats_url,
            "--nats-ca-file",
            ca_file.to_str().unwrap(),
            "--nats-client-cert",
            client_cert.to_str().unwrap(),
            "--nats-client-key",
            client_key.to_str().unwrap(),
        ],
    )
    .await;

    let validator = Validator::connect(ValidatorConfig::new(nats_url).with_nats_tls(
        valet_resource::valet_wire::NatsTls {
            ca_file: Some(ca_file.clone()),
            client_cert: Some((client_cert, client_key)),
        },
    ))
    .await
    .expect("validator");
    let (id, secret) = client_credentials_client(&db).await;
    let token =
        client_credentials_token(&reqwest::Client::new(), &base, &id, &secret, "read").await;
    let info = until_valid_locally(&validator, &token, Duration::from_secs(30)).await;
    assert_eq!(info.source, Source::Local);

    child.kill().await.expect("kill valet");
    db.drop_database().await;
    let _ = std::fs::remove_dir_all(&server_dir);
    let _ = std::fs::remove_dir_all(&client_dir);
}

/// The authorization-code flow with PKCE over HTTPS, driven by the `oauth2` crate (its
/// authorization URL, its code exchange) with the test CA as the only root; the user is
/// registered through the admin API over the same TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_code_flow_over_https_with_the_oauth2_crate() {
    let ca = TestCa::new();
    let dir = scratch_dir();
    ca.issue_into(&dir, "valet");
    let db = TestDb::create().await;
    let (mut child, base) = serve_tls(&db, &dir, &[]).await;
    let http = https_client(&ca);

    let (admin_id, admin_secret) = service_client(&db, "valet:admin").await;
    let admin = BasicClient::new(ClientId::new(admin_id))
        .set_client_secret(ClientSecret::new(admin_secret))
        .set_token_uri(TokenUrl::new(format!("{base}/token")).expect("token url"));
    let bearer = admin
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .expect("an admin token over HTTPS");
    let user = TestUser {
        username: "alice".into(),
        password: "a long passphrase over TLS".into(),
    };
    let made = http
        .post(format!("{base}/admin/v1/users"))
        .bearer_auth(bearer.access_token().secret())
        .header("content-type", "application/json")
        .body(
            serde_json::json!({ "username": user.username, "password": user.password }).to_string(),
        )
        .send()
        .await
        .expect("POST /admin/v1/users");
    assert_eq!(made.status(), 201);

    let redirect = "https://app.example/cb";
    let (app_id, app_secret) =
        registered_client(&db, &["--redirect-uri", redirect, "--scope", "openid read"]).await;
    let app = BasicClient::new(ClientId::new(app_id))
        .set_client_secret(ClientSecret::new(app_secret))
        .set_auth_uri(AuthUrl::new(format!("{base}/authorize")).expect("auth url"))
        .set_token_uri(TokenUrl::new(format!("{base}/token")).expect("token url"))
        .set_redirect_uri(RedirectUrl::new(redirect.to_owned()).expect("redirect url"));
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (authorize_url, state) = app
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("read".into()))
        .set_pkce_challenge(challenge)
        .url();
    let mut browser = Browser::with_client(&base, http.clone());
    let end = authorize_from(&mut browser, &user, authorize_url.to_string(), "approve").await;
    assert!(
        end.raw_location.starts_with(redirect),
        "{}",
        end.raw_location
    );
    assert_eq!(end.param("state").as_deref(), Some(state.secret().as_str()));
    assert_eq!(end.param("iss").as_deref(), Some(base.as_str()));
    let code = end.param("code").expect("a code");
    let tokens = app
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("tokens over HTTPS from the oauth2 crate");
    assert!(tokens.refresh_token().is_some());
    assert_eq!(
        tokens
            .scopes()
            .map(|s| s.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        Some(vec!["read".to_owned()])
    );

    child.kill().await.expect("kill valet");
    db.drop_database().await;
    let _ = std::fs::remove_dir_all(&dir);
}
