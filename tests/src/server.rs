//! Black-box harness: a real `valet serve` process on its own database, the admin CLI,
//! an HTTP client that never follows redirects, a tiny browser (cookies + HTML forms)
//! for the login and consent pages, and helpers for the token, introspection and
//! revocation endpoints.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use url::form_urlencoded;
use url::Url;

use crate::html::{self, Form};
use crate::TestDb;

/// The redirect URI of the fixture's confidential client.
pub const APP_CB: &str = "https://app.example/cb";
/// How long the harness waits for eventually-consistent effects (projections).
pub const SETTLE: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------
// Locating the binary and the target directory
// ---------------------------------------------------------------------------------------

pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// `VALET_BIN`, else `<workspace>/target/debug/valet`.
pub fn valet_bin() -> PathBuf {
    let bin = match std::env::var_os("VALET_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/valet"),
    };
    assert!(
        bin.is_file(),
        "{} does not exist: run `cargo build -p valet-cli` first (or set VALET_BIN)",
        bin.display()
    );
    bin
}

/// The key-encryption key of test servers: 32 bytes, hex.
pub const TEST_KEK: &str = "74657374206b65792d656e6372797074696f6e206b6579206f662076616c6574";

/// Options that must not leak from the developer's environment into a test server.
const SCRUBBED_ENV: [&str; 9] = [
    "VALET_ISSUER",
    "VALET_KEY_ENCRYPTION_KEY_FILE",
    "VALET_KEY_PUBLISH_LEAD",
    "VALET_CODE_TTL",
    "VALET_ACCESS_TOKEN_TTL",
    "VALET_REFRESH_TOKEN_TTL",
    "VALET_LISTEN",
    "VALET_DATABASE_URL",
    "VALET_LOG",
];

fn valet_command(db_url: &str, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(valet_bin());
    for key in SCRUBBED_ENV {
        cmd.env_remove(key);
    }
    cmd.env("VALET_DATABASE_URL", db_url)
        .env("VALET_LISTEN", "127.0.0.1:0")
        .env("VALET_LOG", "info")
        // Every test server and CLI run shares one key-encryption key (a test may give
        // another); none writes a KEK file into the developer's home.
        .env("VALET_KEY_ENCRYPTION_KEY", TEST_KEK);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Runs the `valet` binary to completion (`None` if it is still running after `timeout`,
/// in which case it is killed).
pub async fn run_valet(
    db_url: &str,
    env: &[(&str, &str)],
    args: &[&str],
    timeout: Duration,
) -> Option<Output> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut cmd = valet_command(db_url, &env);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn valet");
    tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .ok()
        .map(|r| r.expect("wait for valet"))
}

/// Starts the `valet` binary with `args` on `db_url` without waiting for it (stdout and
/// stderr piped), for tests that interrupt a command.
pub fn spawn_valet(db_url: &str, args: &[&str]) -> Child {
    let mut cmd = valet_command(db_url, &[]);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn().expect("spawn valet")
}

/// `valet ARGS` (a `serve`) on the database at `db_url`, once it listens: the process
/// and its base URL. Its later output is read and dropped.
pub async fn serve_listening(db_url: &str, args: &[&str]) -> (tokio::process::Child, String) {
    let mut child = spawn_valet(db_url, args);
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(url) = line.strip_prefix("valet listening on ") {
                return url.to_owned();
            }
        }
        panic!("valet serve exited before listening");
    })
    .await
    .expect("valet serve listening within 30 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, base)
}

/// A client_credentials access token from the Valet at `base`, over `http` (asserting
/// one is issued).
pub async fn client_credentials_token(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    secret: &str,
    scope: &str,
) -> String {
    let issued: Value = http
        .post(format!("{base}/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials"), ("scope", scope)])
        .send()
        .await
        .expect("token")
        .bytes()
        .await
        .map(|body| serde_json::from_slice(&body).expect("JSON"))
        .expect("body");
    issued["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {issued}"))
        .to_owned()
}

/// `valet client create --name svc ARGS --json` on the database at `db_url`: the id and
/// secret.
pub async fn created_client(db_url: &str, args: &[&str]) -> (String, String) {
    let mut command = vec!["client", "create", "--name", "svc"];
    command.extend_from_slice(args);
    command.push("--json");
    let out = run_valet(db_url, &[], &command, Duration::from_secs(30))
        .await
        .expect("valet client create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    (
        made["client_id"].as_str().unwrap().to_owned(),
        made["client_secret"].as_str().unwrap().to_owned(),
    )
}

// ---------------------------------------------------------------------------------------
// Small value types
// ---------------------------------------------------------------------------------------

/// What `valet client create` is asked for.
#[derive(Debug, Clone, Default)]
pub struct ClientSpec {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub public: bool,
    pub grant_types: Vec<String>,
    pub scopes: Vec<String>,
    pub id_token_alg: Option<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// `--access-token-signed-response-alg` with `--access-token-format jwt`.
    pub jwt_access_tokens: Option<String>,
    /// `--backchannel-logout-uri` (and `--backchannel-logout-session-required`).
    pub backchannel_logout: Option<(String, SidInLogoutTokens)>,
}

/// Whether a client registers `--backchannel-logout-session-required`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidInLogoutTokens {
    Required,
    Optional,
}

impl ClientSpec {
    pub fn confidential(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    pub fn public(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            public: true,
            ..Self::default()
        }
    }

    pub fn redirect(mut self, uri: &str) -> Self {
        self.redirect_uris.push(uri.to_owned());
        self
    }

    pub fn grant(mut self, grant_type: &str) -> Self {
        self.grant_types.push(grant_type.to_owned());
        self
    }

    /// Space-separated scopes, each passed as its own `--scope`.
    pub fn scopes(mut self, scopes: &str) -> Self {
        self.scopes
            .extend(scopes.split_whitespace().map(str::to_owned));
        self
    }

    /// `--id-token-signed-response-alg`.
    pub fn id_token_alg(mut self, alg: &str) -> Self {
        self.id_token_alg = Some(alg.to_owned());
        self
    }

    /// Logout tokens POSTed to `uri` (OpenID Connect Back-Channel Logout).
    pub fn backchannel_logout(mut self, uri: &str, sid: SidInLogoutTokens) -> Self {
        self.backchannel_logout = Some((uri.to_owned(), sid));
        self
    }

    /// JWT access tokens (RFC 9068) signed with `alg`.
    pub fn jwt_access_tokens(mut self, alg: &str) -> Self {
        self.jwt_access_tokens = Some(alg.to_owned());
        self
    }

    pub fn post_logout_redirect(mut self, uri: &str) -> Self {
        self.post_logout_redirect_uris.push(uri.to_owned());
        self
    }

    pub fn cli_args(&self) -> Vec<String> {
        let mut args = vec![
            "client".to_owned(),
            "create".to_owned(),
            "--name".to_owned(),
            self.name.clone(),
        ];
        for uri in &self.redirect_uris {
            args.extend(["--redirect-uri".to_owned(), uri.clone()]);
        }
        if self.public {
            args.push("--public".to_owned());
        }
        for g in &self.grant_types {
            args.extend(["--grant-type".to_owned(), g.clone()]);
        }
        for s in &self.scopes {
            args.extend(["--scope".to_owned(), s.clone()]);
        }
        if let Some(alg) = &self.id_token_alg {
            args.extend(["--id-token-signed-response-alg".to_owned(), alg.clone()]);
        }
        for uri in &self.post_logout_redirect_uris {
            args.extend(["--post-logout-redirect-uri".to_owned(), uri.clone()]);
        }
        if let Some(alg) = &self.jwt_access_tokens {
            args.extend(
                [
                    "--access-token-format",
                    "jwt",
                    "--access-token-signed-response-alg",
                ]
                .map(str::to_owned),
            );
            args.push(alg.clone());
        }
        if let Some((uri, sid)) = &self.backchannel_logout {
            args.extend(["--backchannel-logout-uri".to_owned(), uri.clone()]);
            if *sid == SidInLogoutTokens::Required {
                args.push("--backchannel-logout-session-required".to_owned());
            }
        }
        args.push("--json".to_owned());
        args
    }
}

/// A registered client as the CLI reported it.
#[derive(Debug, Clone)]
pub struct ClientCreds {
    pub client_id: String,
    pub client_secret: Option<String>,
    pub redirect_uris: Vec<String>,
}

impl ClientCreds {
    pub fn secret(&self) -> &str {
        self.client_secret
            .as_deref()
            .expect("a confidential client has a secret")
    }

    /// `client_secret_basic` for confidential clients, `client_id` alone for public ones.
    pub fn auth(&self) -> Auth {
        match &self.client_secret {
            Some(_) => self.basic(),
            None => Auth::Public(self.client_id.clone()),
        }
    }

    pub fn basic(&self) -> Auth {
        Auth::Basic(self.client_id.clone(), self.secret().to_owned())
    }

    pub fn post(&self) -> Auth {
        Auth::Post(self.client_id.clone(), self.secret().to_owned())
    }

    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uris[0]
    }
}

#[derive(Debug, Clone)]
pub struct TestUser {
    pub username: String,
    pub password: String,
}

/// How a request to /token, /introspect or /revoke authenticates the client.
#[derive(Debug, Clone)]
pub enum Auth {
    /// HTTP Basic with form-urlencoded id and secret (RFC 6749 §2.3.1).
    Basic(String, String),
    /// `client_id` and `client_secret` in the body.
    Post(String, String),
    /// `client_id` only (public clients).
    Public(String),
    /// An `Authorization` header sent verbatim.
    Header(String),
    None,
}

impl Auth {
    fn apply(&self, pairs: &mut Vec<(String, String)>, headers: &mut HeaderMap) {
        match self {
            Auth::Basic(id, secret) => {
                headers.insert(
                    reqwest::header::AUTHORIZATION,
                    HeaderValue::from_str(&basic_header(id, secret)).expect("header"),
                );
            }
            Auth::Post(id, secret) => {
                pairs.push(("client_id".to_owned(), id.clone()));
                pairs.push(("client_secret".to_owned(), secret.clone()));
            }
            Auth::Public(id) => pairs.push(("client_id".to_owned(), id.clone())),
            Auth::Header(value) => {
                headers.insert(
                    reqwest::header::AUTHORIZATION,
                    HeaderValue::from_str(value).expect("header"),
                );
            }
            Auth::None => {}
        }
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`.
pub fn basic_header(id: &str, secret: &str) -> String {
    let raw = format!("{}:{}", form_encode(id), form_encode(secret));
    format!("Basic {}", STANDARD.encode(raw))
}

/// application/x-www-form-urlencoded encoding of one value.
pub fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Every byte as `%XX`, even unreserved ones.
pub fn percent_encode_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

pub fn form_body<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        ser.append_pair(k.as_ref(), v.as_ref());
    }
    ser.finish()
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// base64url (no padding) of `n` random bytes.
pub fn random_b64(n: usize) -> String {
    let mut bytes = Vec::with_capacity(n + 16);
    while bytes.len() < n {
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    // v4 UUIDs have 6 fixed bits each: hash them so every output bit is uniform.
    let mut out = Vec::with_capacity(n);
    let mut counter = 0u32;
    while out.len() < n {
        let mut h = Sha256::new();
        h.update(&bytes);
        h.update(counter.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(n);
    URL_SAFE_NO_PAD.encode(out)
}

/// A short random token for names and states.
pub fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// An RFC 7636 verifier/challenge pair (S256).
#[derive(Debug, Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Self {
        Self::from_verifier(&random_b64(32))
    }

    pub fn from_verifier(verifier: &str) -> Self {
        Self {
            verifier: verifier.to_owned(),
            challenge: Self::s256(verifier),
        }
    }

    pub fn s256(verifier: &str) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------
// HTTP responses
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub elapsed: Duration,
}

impl Resp {
    pub async fn read(resp: reqwest::Response, started: Instant) -> Resp {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        Resp {
            status,
            headers,
            body,
            elapsed: started.elapsed(),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON body ({e}), got {} {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The `error` field of a JSON error body, if any.
    pub fn error(&self) -> Option<String> {
        serde_json::from_slice::<Value>(&self.body)
            .ok()?
            .get("error")?
            .as_str()
            .map(str::to_owned)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn headers_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    pub fn location(&self) -> Option<String> {
        self.header("location")
    }

    pub fn no_store(&self) -> bool {
        self.header("cache-control").is_some_and(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-store"))
        })
    }

    /// One line for assertion messages.
    pub fn describe(&self) -> String {
        let mut body = self.text();
        if body.len() > 600 {
            let mut cut = 600;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
            body.push_str("...");
        }
        format!(
            "{} location={:?} body={:?}",
            self.status,
            self.location(),
            body
        )
    }
}

/// A successful token response.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub scope: Option<String>,
    pub expires_in: Option<i64>,
    pub raw: Value,
}

impl Tokens {
    pub fn from_resp(resp: &Resp) -> Tokens {
        assert_eq!(
            resp.status,
            200,
            "token request failed: {}",
            resp.describe()
        );
        let raw = resp.json();
        Tokens {
            access_token: raw["access_token"]
                .as_str()
                .unwrap_or_else(|| panic!("no access_token in {raw}"))
                .to_owned(),
            refresh_token: raw["refresh_token"].as_str().map(str::to_owned),
            scope: raw["scope"].as_str().map(str::to_owned),
            expires_in: raw["expires_in"].as_i64(),
            raw,
        }
    }

    pub fn refresh(&self) -> &str {
        self.refresh_token
            .as_deref()
            .expect("the response carries a refresh_token")
    }
}

/// One row of the events table.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub position: i64,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub payload: Value,
    pub metadata: Value,
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

/// A server may answer 413 without reading the body and then close the connection
/// (HTTP/1.1 allows it, without a `Connection: close` header). Such a connection must
/// not go back to the client's pool, or the next request on it fails.
fn close_if_oversized(req: reqwest::RequestBuilder, body_len: usize) -> reqwest::RequestBuilder {
    if body_len > 64 * 1024 {
        req.header(reqwest::header::CONNECTION, "close")
    } else {
        req
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

/// A running `valet serve` on a fresh database. The process is killed when this is
/// dropped; [`TestServer::stop`] also drops the database.
pub struct TestServer {
    db: Option<TestDb>,
    db_name: String,
    db_url: String,
    child: Option<Child>,
    base_url: String,
    log_path: PathBuf,
    env: Vec<(String, String)>,
    http: reqwest::Client,
    pg: tokio::sync::OnceCell<tokio_postgres::Client>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(&[]).await
    }

    /// Starts with extra environment (e.g. `("VALET_CODE_TTL", "1")`).
    pub async fn start_with(env: &[(&str, &str)]) -> TestServer {
        Self::start_on(TestDb::create().await, env).await
    }

    /// Starts on `db` (e.g. one on a private PostgreSQL that a test restarts).
    pub async fn start_on(db: TestDb, env: &[(&str, &str)]) -> TestServer {
        let (name, url) = (db.name.clone(), db.url.clone());
        Self::launch(Some(db), name.clone(), url, &name, env).await
    }

    /// Another `valet serve` on this server's database (a replica behind the same load
    /// balancer); stopping it leaves the database to this one.
    pub async fn replica(&self, env: &[(&str, &str)]) -> TestServer {
        let log_name = format!("{}.replica-{}", self.db_name, nonce());
        Self::launch(
            None,
            self.db_name.clone(),
            self.db_url.clone(),
            &log_name,
            env,
        )
        .await
    }

    async fn launch(
        db: Option<TestDb>,
        db_name: String,
        db_url: String,
        log_name: &str,
        env: &[(&str, &str)],
    ) -> TestServer {
        let bin = valet_bin();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let log_dir = target_dir().join("test-logs");
        std::fs::create_dir_all(&log_dir).expect("create test-logs dir");
        let log_path = log_dir.join(format!("{log_name}.log"));
        let log = Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .expect("open server log"),
        ));

        let mut cmd = valet_command(&db_url, &env);
        cmd.arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));

        let stderr = child.stderr.take().expect("stderr");
        let stderr_log = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = writeln!(stderr_log.lock().expect("log"), "{line}");
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let stdout_log = log.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = writeln!(stdout_log.lock().expect("log"), "[stdout] {line}");
                if let Some(addr) = line.strip_prefix("valet listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                }
            }
        });

        let base_url = match tokio::time::timeout(Duration::from_secs(20), rx).await {
            Ok(Ok(url)) => url,
            other => {
                let why = if other.is_err() {
                    "did not print `valet listening on ...` within 20 s"
                } else {
                    "exited before listening"
                };
                let _ = child.start_kill();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("valet serve {why}; log {}:\n{log_text}", log_path.display());
            }
        };
        assert!(
            base_url.starts_with("http://127.0.0.1:"),
            "unexpected listening line: {base_url}"
        );
        TestServer {
            db_name,
            db_url,
            db,
            child: Some(child),
            base_url: base_url.trim_end_matches('/').to_owned(),
            log_path,
            env,
            http: http_client(),
            pg: tokio::sync::OnceCell::new(),
        }
    }

    /// Kills the server and drops its database.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        if let Some(db) = self.db.take() {
            db.drop_database().await;
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("the server is running")
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`, …) to the server process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub fn db_name(&self) -> &str {
        &self.db_name
    }

    pub fn db_url(&self) -> &str {
        &self.db_url
    }

    pub fn log_path(&self) -> &PathBuf {
        &self.log_path
    }

    /// The server's log (stderr, and stdout lines prefixed `[stdout]`) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A client that never follows redirects.
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    pub fn browser(&self) -> Browser {
        Browser::new(&self.base_url)
    }

    // ----- admin CLI ---------------------------------------------------------------------

    pub async fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = valet_command(&self.db_url, &self.env);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("spawn valet CLI");
        if let Some(input) = stdin {
            use tokio::io::AsyncWriteExt as _;
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(input.as_bytes()).await.expect("write stdin");
            drop(pipe);
        }
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("valet {args:?} did not finish within 60 s"))
            .expect("wait for valet CLI")
    }

    /// `valet client create ... --json`; `Err(stderr)` when it exits non-zero.
    pub async fn try_create_client(&self, spec: &ClientSpec) -> Result<ClientCreds, String> {
        let args = spec.cli_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.cli(&args, None).await;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let json: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("client create --json printed {stdout:?}: {e}"));
        let creds = ClientCreds {
            client_id: json["client_id"]
                .as_str()
                .unwrap_or_else(|| panic!("no client_id in {json}"))
                .to_owned(),
            client_secret: json["client_secret"].as_str().map(str::to_owned),
            redirect_uris: spec.redirect_uris.clone(),
        };
        self.wait_for_row(
            "SELECT 1 FROM clients WHERE client_id = $1",
            &creds.client_id,
        )
        .await;
        Ok(creds)
    }

    pub async fn create_client(&self, spec: &ClientSpec) -> ClientCreds {
        let creds = self
            .try_create_client(spec)
            .await
            .unwrap_or_else(|e| panic!("valet {:?} failed: {e}", spec.cli_args()));
        assert_eq!(
            creds.client_secret.is_none(),
            spec.public,
            "a secret is printed exactly for confidential clients: {creds:?}"
        );
        creds
    }

    pub async fn create_user(&self, username: &str, password: &str) -> TestUser {
        let out = self
            .cli(
                &["user", "create", "--username", username, "--password-stdin"],
                Some(&format!("{password}\n")),
            )
            .await;
        assert!(
            out.status.success(),
            "valet user create {username} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_for_row("SELECT 1 FROM users WHERE username = $1", username)
            .await;
        TestUser {
            username: username.to_owned(),
            password: password.to_owned(),
        }
    }

    pub async fn disable_user(&self, username: &str) {
        let out = self.cli(&["user", "disable", username], None).await;
        assert!(
            out.status.success(),
            "valet user disable {username} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_for_row(
            "SELECT 1 FROM users WHERE username = $1 AND disabled_at IS NOT NULL",
            username,
        )
        .await;
    }

    pub async fn disable_client(&self, client_id: &str) {
        let out = self.cli(&["client", "disable", client_id], None).await;
        assert!(
            out.status.success(),
            "valet client disable {client_id} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_for_row(
            "SELECT 1 FROM clients WHERE client_id = $1 AND disabled_at IS NOT NULL",
            client_id,
        )
        .await;
    }

    /// Best effort: waits (up to [`SETTLE`]) until a read-model row exists, so that a
    /// projection running behind the CLI's append does not make the next request flaky.
    async fn wait_for_row(&self, sql: &str, param: &str) {
        let deadline = Instant::now() + SETTLE;
        let pg = self.pg().await;
        while Instant::now() < deadline {
            match pg.query_opt(sql, &[&param]).await {
                Ok(Some(_)) => return,
                Ok(None) => tokio::time::sleep(Duration::from_millis(25)).await,
                Err(_) => return, // no such read model: nothing to wait for
            }
        }
    }

    // ----- the database ------------------------------------------------------------------

    pub async fn pg(&self) -> &tokio_postgres::Client {
        self.pg
            .get_or_init(|| async {
                let (client, connection) =
                    tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls)
                        .await
                        .expect("connect to test database");
                tokio::spawn(connection);
                client
            })
            .await
    }

    pub async fn events(&self) -> Vec<EventRow> {
        self.pg()
            .await
            .query(
                "SELECT position, stream_id, stream_version, event_type, payload, metadata \
                 FROM events ORDER BY position",
                &[],
            )
            .await
            .expect("read events")
            .into_iter()
            .map(|r| EventRow {
                position: r.get(0),
                stream_id: r.get(1),
                stream_version: r.get(2),
                event_type: r.get(3),
                payload: r.get(4),
                metadata: r.get(5),
            })
            .collect()
    }

    pub async fn events_of(&self, event_type: &str) -> Vec<EventRow> {
        self.events()
            .await
            .into_iter()
            .filter(|e| e.event_type == event_type)
            .collect()
    }

    /// Every event row rendered as JSON text (all columns).
    pub async fn events_dump(&self) -> String {
        self.pg()
            .await
            .query(
                "SELECT row_to_json(e)::text FROM events e ORDER BY position",
                &[],
            )
            .await
            .expect("dump events")
            .into_iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Polls the events table until `pred` holds (or [`SETTLE`] passes); returns the
    /// events of the last poll.
    pub async fn events_until(&self, pred: impl Fn(&[EventRow]) -> bool) -> Vec<EventRow> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let events = self.events().await;
            if pred(&events) || Instant::now() >= deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // ----- raw HTTP ----------------------------------------------------------------------

    pub async fn get(&self, path: &str) -> Resp {
        let started = Instant::now();
        let resp = self
            .http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e:?}"));
        Resp::read(resp, started).await
    }

    /// `method path` with a bearer token (if any) and a JSON body (if any): the admin
    /// API and dynamic registration.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = self.http.request(method.clone(), self.url(path));
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let started = Instant::now();
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
        Resp::read(resp, started).await
    }

    /// POST with an arbitrary body and headers.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        let mut req = self.http.post(self.url(path));
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        for (k, v) in headers {
            req = req.header(
                HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                HeaderValue::from_str(v).expect("header value"),
            );
        }
        let started = Instant::now();
        let resp = close_if_oversized(req, body.len())
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e:?}"));
        Resp::read(resp, started).await
    }

    /// POST a form (pairs in this order, duplicates kept) with client authentication.
    pub async fn post_form(&self, path: &str, auth: &Auth, pairs: &[(&str, &str)]) -> Resp {
        self.post_form_with(path, auth, pairs, &[]).await
    }

    /// `post_form` with extra headers (e.g. `X-Forwarded-For`).
    pub async fn post_form_with(
        &self,
        path: &str,
        auth: &Auth,
        pairs: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> Resp {
        let mut all: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut headers = HeaderMap::new();
        auth.apply(&mut all, &mut headers);
        for (k, v) in extra {
            headers.insert(
                HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                HeaderValue::from_str(v).expect("header value"),
            );
        }
        let started = Instant::now();
        let resp = self
            .http
            .post(self.url(path))
            .headers(headers)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form_body(&all))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e:?}"));
        Resp::read(resp, started).await
    }

    pub async fn token(&self, auth: &Auth, pairs: &[(&str, &str)]) -> Resp {
        self.post_form("/token", auth, pairs).await
    }

    pub async fn introspect(&self, auth: &Auth, token: &str) -> Resp {
        self.post_form("/introspect", auth, &[("token", token)])
            .await
    }

    pub async fn revoke(&self, auth: &Auth, token: &str, hint: Option<&str>) -> Resp {
        let mut pairs = vec![("token", token)];
        if let Some(h) = hint {
            pairs.push(("token_type_hint", h));
        }
        self.post_form("/revoke", auth, &pairs).await
    }

    // ----- OAuth helpers -----------------------------------------------------------------

    /// authorization_code grant; `client_secret_basic` for confidential clients.
    pub async fn redeem(
        &self,
        client: &ClientCreds,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
    ) -> Resp {
        let mut pairs = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
        ];
        if let Some(v) = verifier {
            pairs.push(("code_verifier", v));
        }
        self.token(&client.auth(), &pairs).await
    }

    pub async fn refresh(
        &self,
        client: &ClientCreds,
        refresh_token: &str,
        scope: Option<&str>,
    ) -> Resp {
        let mut pairs = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        if let Some(s) = scope {
            pairs.push(("scope", s));
        }
        self.token(&client.auth(), &pairs).await
    }

    /// A client_credentials access token of `client` for `scope` (asserting it is issued).
    pub async fn access_token(&self, client: &ClientCreds, scope: &str) -> String {
        let resp = self.client_credentials(client, Some(scope)).await;
        assert_eq!(resp.status, 200, "{}", resp.describe());
        resp.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    pub async fn client_credentials(&self, client: &ClientCreds, scope: Option<&str>) -> Resp {
        let mut pairs = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            pairs.push(("scope", s));
        }
        self.token(&client.auth(), &pairs).await
    }

    /// Introspects `token` as `caller` and returns the JSON (asserting 200).
    pub async fn introspection(&self, caller: &ClientCreds, token: &str) -> Value {
        let resp = self.introspect(&caller.basic(), token).await;
        assert_eq!(
            resp.status,
            200,
            "introspection failed: {}",
            resp.describe()
        );
        resp.json()
    }

    pub async fn is_active(&self, caller: &ClientCreds, token: &str) -> bool {
        self.introspection(caller, token).await["active"] == Value::Bool(true)
    }

    /// Polls introspection for up to [`SETTLE`] until the token is inactive. Revocation
    /// must take effect; the short window only absorbs a projection's catch-up.
    pub async fn eventually_inactive(&self, caller: &ClientCreds, token: &str) -> bool {
        let deadline = Instant::now() + SETTLE;
        loop {
            if !self.is_active(caller, token).await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Drives GET /authorize through login and consent (approving) and returns where
    /// the server finally redirected to (the client's redirect URI).
    pub async fn authorize(
        &self,
        browser: &mut Browser,
        user: &TestUser,
        req: &AuthRequest,
    ) -> FlowEnd {
        self.authorize_deciding(browser, user, req, "approve").await
    }

    pub async fn authorize_deciding(
        &self,
        browser: &mut Browser,
        user: &TestUser,
        req: &AuthRequest,
        decision: &str,
    ) -> FlowEnd {
        authorize_from(browser, user, self.url(&req.path()), decision).await
    }
    /// Runs the flow and returns the code (asserting the redirect carries one).
    pub async fn code(&self, browser: &mut Browser, user: &TestUser, req: &AuthRequest) -> String {
        self.authorize(browser, user, req).await.code()
    }

    /// Signs `user` in to `client` (redirect URI [`APP_CB`]) for `scope` with PKCE in
    /// `browser`, consenting when asked: the token response (200 asserted) as JSON.
    pub async fn sign_in_for(
        &self,
        browser: &mut Browser,
        user: &TestUser,
        client: &ClientCreds,
        scope: &str,
    ) -> Value {
        let pkce = Pkce::new();
        let req = AuthRequest::new(&client.client_id, APP_CB)
            .pkce(&pkce)
            .scope(scope);
        let code = self.code(browser, user, &req).await;
        let resp = self
            .redeem(client, &code, APP_CB, Some(&pkce.verifier))
            .await;
        assert_eq!(resp.status, 200, "{}", resp.describe());
        resp.json()
    }

    /// Flow with PKCE + redemption at /token; asserts success.
    pub async fn user_tokens(
        &self,
        browser: &mut Browser,
        user: &TestUser,
        client: &ClientCreds,
        scope: Option<&str>,
    ) -> Tokens {
        let pkce = Pkce::new();
        let mut req = AuthRequest::new(&client.client_id, client.redirect_uri()).pkce(&pkce);
        if let Some(s) = scope {
            req = req.scope(s);
        }
        let code = self.code(browser, user, &req).await;
        let resp = self
            .redeem(client, &code, client.redirect_uri(), Some(&pkce.verifier))
            .await;
        Tokens::from_resp(&resp)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The authorization request and the browser
// ---------------------------------------------------------------------------------------

/// Query parameters of GET /authorize, in order (duplicates allowed on purpose).
#[derive(Debug, Clone)]
pub struct AuthRequest {
    pub params: Vec<(String, String)>,
}

impl AuthRequest {
    /// `response_type=code`, `client_id`, `redirect_uri` and a random `state`.
    pub fn new(client_id: &str, redirect_uri: &str) -> Self {
        Self::empty()
            .set("response_type", "code")
            .set("client_id", client_id)
            .set("redirect_uri", redirect_uri)
            .set("state", &format!("st-{}", nonce()))
    }

    pub fn empty() -> Self {
        Self { params: Vec::new() }
    }

    /// Replaces every occurrence of `key` (or appends it).
    pub fn set(mut self, key: &str, value: &str) -> Self {
        if let Some(pos) = self.params.iter().position(|(k, _)| k == key) {
            // `pos` is the first occurrence: removing the others does not move it.
            self.params.retain(|(k, _)| k != key);
            self.params.insert(pos, (key.to_owned(), value.to_owned()));
        } else {
            self.params.push((key.to_owned(), value.to_owned()));
        }
        self
    }

    /// Appends `key=value` even if `key` is already present.
    pub fn add(mut self, key: &str, value: &str) -> Self {
        self.params.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn remove(mut self, key: &str) -> Self {
        self.params.retain(|(k, _)| k != key);
        self
    }

    pub fn scope(self, scope: &str) -> Self {
        self.set("scope", scope)
    }

    pub fn state(self, state: &str) -> Self {
        self.set("state", state)
    }

    pub fn pkce(self, pkce: &Pkce) -> Self {
        self.set("code_challenge", &pkce.challenge)
            .set("code_challenge_method", "S256")
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn query(&self) -> String {
        form_body(&self.params)
    }

    pub fn path(&self) -> String {
        format!("/authorize?{}", self.query())
    }
}

/// Where a flow ended: the redirect (to the client) and its parsed query.
#[derive(Debug, Clone)]
pub struct FlowEnd {
    pub status: u16,
    pub raw_location: String,
    pub location: Url,
    pub response: Resp,
}

impl FlowEnd {
    pub fn new(resp: Resp) -> Self {
        let raw = resp.location().expect("Location");
        let location = Url::parse(&raw).unwrap_or_else(|e| panic!("Location {raw:?}: {e}"));
        Self {
            status: resp.status,
            raw_location: raw,
            location,
            response: resp,
        }
    }

    pub fn params(&self) -> Vec<(String, String)> {
        self.location
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    pub fn param(&self, key: &str) -> Option<String> {
        self.params()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn code(&self) -> String {
        self.param("code").unwrap_or_else(|| {
            panic!(
                "the redirect carries no code: {} ({})",
                self.raw_location,
                self.response.describe()
            )
        })
    }
}

/// A minimal user agent: remembers cookies, never follows redirects by itself.
pub struct Browser {
    http: reqwest::Client,
    base: Url,
    /// The last page fetched (forms' relative actions resolve against it).
    pub page_url: Url,
    pub cookies: BTreeMap<String, String>,
}

/// The authorization flow in `browser` from the authorization request at `url`: signs
/// `user` in and answers the consent page with `decision` when they come; where it ends.
pub async fn authorize_from(
    browser: &mut Browser,
    user: &TestUser,
    url: String,
    decision: &str,
) -> FlowEnd {
    let mut url = url;
    for _ in 0..8 {
        let resp = browser.get(&url).await;
        match resp.status {
            301 | 302 | 303 | 307 | 308 => {
                let target = browser.resolve(&resp.location().expect("redirect has Location"));
                if browser.is_own(&target) && target.path() == "/authorize" {
                    url = target.to_string();
                    continue;
                }
                return FlowEnd::new(resp);
            }
            200 => {
                let page = resp.text();
                if let Some(form) = html::find_form(&page, Form::is_login) {
                    let mut fields = form.hidden();
                    fields.push(("username".to_owned(), user.username.clone()));
                    fields.push(("password".to_owned(), user.password.clone()));
                    let action = browser.form_action(&form);
                    let r = browser.post_form(&action, &fields).await;
                    assert!(
                        matches!(r.status, 302 | 303),
                        "login as {} did not redirect: {}",
                        user.username,
                        r.describe()
                    );
                    url = browser
                        .resolve(&r.location().expect("Location after login"))
                        .to_string();
                    continue;
                }
                if let Some(form) = html::find_form(&page, Form::is_consent) {
                    let mut fields = form.hidden();
                    fields.push(("decision".to_owned(), decision.to_owned()));
                    let action = browser.form_action(&form);
                    let r = browser.post_form(&action, &fields).await;
                    assert!(
                        matches!(r.status, 302 | 303),
                        "consent POST did not redirect: {}",
                        r.describe()
                    );
                    let target = browser.resolve(&r.location().expect("Location"));
                    if browser.is_own(&target) && target.path() == "/authorize" {
                        url = target.to_string();
                        continue;
                    }
                    return FlowEnd::new(r);
                }
                panic!(
                    "GET {url} gave a page with neither a login nor a consent form: {}",
                    resp.describe()
                );
            }
            _ => panic!("GET {url}: unexpected {}", resp.describe()),
        }
    }
    panic!("authorization flow did not finish after 8 steps");
}

impl Browser {
    pub fn new(base_url: &str) -> Self {
        Self::with_client(base_url, http_client())
    }

    /// A browser whose requests go through `http` (e.g. one that trusts a test CA).
    pub fn with_client(base_url: &str, http: reqwest::Client) -> Self {
        let base = Url::parse(base_url).expect("base url");
        Self {
            http,
            page_url: base.clone(),
            base,
            cookies: BTreeMap::new(),
        }
    }

    pub fn resolve(&self, url: &str) -> Url {
        self.page_url
            .join(url)
            .unwrap_or_else(|e| panic!("cannot resolve {url:?}: {e}"))
    }

    pub fn is_own(&self, url: &Url) -> bool {
        url.origin() == self.base.origin()
    }

    /// The absolute URL a form posts to (its action, or the page itself).
    pub fn form_action(&self, form: &Form) -> String {
        if form.action.is_empty() {
            self.page_url.to_string()
        } else {
            self.resolve(&form.action).to_string()
        }
    }

    pub fn cookie_header(&self) -> Option<String> {
        if self.cookies.is_empty() {
            return None;
        }
        Some(
            self.cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    fn absorb(&mut self, headers: &HeaderMap) {
        for value in headers.get_all(reqwest::header::SET_COOKIE) {
            let value = String::from_utf8_lossy(value.as_bytes());
            let mut parts = value.split(';');
            let Some((name, val)) = parts.next().and_then(|nv| nv.split_once('=')) else {
                continue;
            };
            let (name, val) = (name.trim().to_owned(), val.trim().to_owned());
            let expired = parts.any(|attr| {
                let attr = attr.trim().to_ascii_lowercase();
                attr == "max-age=0" || attr.starts_with("max-age=-")
            });
            if expired || val.is_empty() {
                self.cookies.remove(&name);
            } else {
                self.cookies.insert(name, val);
            }
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder, url: Url) -> Resp {
        let req = match self.cookie_header() {
            Some(c) => req.header(reqwest::header::COOKIE, c),
            None => req,
        };
        let started = Instant::now();
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("request to {url}: {e:?}"));
        let resp = Resp::read(resp, started).await;
        self.absorb(&resp.headers);
        if resp.status == 200 {
            self.page_url = url;
        }
        resp
    }

    pub async fn get(&mut self, url: &str) -> Resp {
        let url = self.resolve(url);
        let req = self.http.get(url.clone());
        self.send(req, url).await
    }

    pub async fn post_form(&mut self, url: &str, pairs: &[(String, String)]) -> Resp {
        self.post_raw(
            url,
            "application/x-www-form-urlencoded",
            form_body(pairs).into_bytes(),
        )
        .await
    }

    pub async fn post_raw(&mut self, url: &str, content_type: &str, body: Vec<u8>) -> Resp {
        let url = self.resolve(url);
        let req = close_if_oversized(self.http.post(url.clone()), body.len())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        self.send(req, url).await
    }

    /// GET /authorize (or any page) and return the first form satisfying `pred`,
    /// with the response.
    pub async fn form(&mut self, url: &str, pred: impl Fn(&Form) -> bool) -> (Resp, Option<Form>) {
        let resp = self.get(url).await;
        let form = html::find_form(&resp.text(), pred);
        (resp, form)
    }

    /// Logs in through the login form found at `authorize_url`, returns the POST's
    /// response (a 303 back to /authorize on success).
    pub async fn login(&mut self, authorize_url: &str, user: &TestUser) -> Resp {
        let (resp, form) = self.form(authorize_url, Form::is_login).await;
        let form = form.unwrap_or_else(|| panic!("no login form: {}", resp.describe()));
        let mut fields = form.hidden();
        fields.push(("username".to_owned(), user.username.clone()));
        fields.push(("password".to_owned(), user.password.clone()));
        let action = self.form_action(&form);
        self.post_form(&action, &fields).await
    }
}

// ---------------------------------------------------------------------------------------
// Assertions shared by the security tests
// ---------------------------------------------------------------------------------------

/// NR: an HTML 400 page, no Location, no code.
#[track_caller]
pub fn assert_nr(resp: &Resp, what: &str) {
    assert_eq!(
        resp.status,
        400,
        "{what}: expected an HTML 400 (NR), got {}",
        resp.describe()
    );
    assert!(
        resp.location().is_none(),
        "{what}: NR must not redirect, got {}",
        resp.describe()
    );
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("text/html"),
        "{what}: NR page is HTML, got content-type {ct:?}"
    );
    assert!(
        !resp.text().contains("valet_ac_"),
        "{what}: NR page carries a code"
    );
}

/// R: a 302/303 to `redirect_uri` with `error` and the `state` echoed (and no code).
#[track_caller]
pub fn assert_r(resp: &Resp, redirect_uri: &str, error: &str, state: Option<&str>, what: &str) {
    assert!(
        matches!(resp.status, 302 | 303),
        "{what}: expected a redirect with error={error}, got {}",
        resp.describe()
    );
    let end = FlowEnd::new(resp.clone());
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    assert!(
        end.raw_location
            .starts_with(&format!("{redirect_uri}{sep}")),
        "{what}: redirect goes to {} instead of {redirect_uri}",
        end.raw_location
    );
    assert_eq!(
        end.param("error").as_deref(),
        Some(error),
        "{what}: wrong error in {}",
        end.raw_location
    );
    assert_eq!(
        end.param("state").as_deref(),
        state,
        "{what}: state not echoed exactly in {}",
        end.raw_location
    );
    assert!(
        end.param("code").is_none(),
        "{what}: an error redirect carries a code"
    );
}

/// T(x) with the given status: JSON `error`, `Cache-Control: no-store`.
#[track_caller]
pub fn assert_token_error(resp: &Resp, status: u16, error: &str, what: &str) {
    assert_eq!(
        (resp.status, resp.error().as_deref()),
        (status, Some(error)),
        "{what}: expected {status} {error}, got {}",
        resp.describe()
    );
    assert!(
        resp.no_store(),
        "{what}: error response without Cache-Control: no-store ({:?})",
        resp.header("cache-control")
    );
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "{what}: content-type {ct:?}"
    );
}

/// invalid_client: 401 with `WWW-Authenticate: Basic ...`.
#[track_caller]
pub fn assert_invalid_client(resp: &Resp, what: &str) {
    assert_token_error(resp, 401, "invalid_client", what);
    let challenge = resp.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Basic") && challenge.contains("realm=\"valet\""),
        "{what}: WWW-Authenticate is {challenge:?}, expected Basic realm=\"valet\""
    );
}

/// A standard fixture: a server, a confidential client on [`APP_CB`] with scopes
/// `read write`, a confidential "resource server" client used to introspect, and a user.
pub struct Fixture {
    pub server: TestServer,
    pub client: ClientCreds,
    pub rs: ClientCreds,
    pub user: TestUser,
    pub browser: Browser,
}

impl Fixture {
    pub async fn new() -> Fixture {
        Self::with_env(&[]).await
    }

    pub async fn with_env(env: &[(&str, &str)]) -> Fixture {
        let server = TestServer::start_with(env).await;
        let client = server
            .create_client(
                &ClientSpec::confidential("App")
                    .redirect(APP_CB)
                    .scopes("read write"),
            )
            .await;
        let rs = server
            .create_client(
                &ClientSpec::confidential("Resource server")
                    .grant("client_credentials")
                    .scopes("introspect"),
            )
            .await;
        let user = server
            .create_user("alice", "correct horse battery staple")
            .await;
        let browser = server.browser();
        Fixture {
            server,
            client,
            rs,
            user,
            browser,
        }
    }

    /// A second confidential client ("B", its own redirect URI, the same scopes), for the
    /// cases where one client presents another's code, token or refresh token.
    pub async fn other_client(&self) -> ClientCreds {
        self.server
            .create_client(
                &ClientSpec::confidential("B")
                    .redirect("https://b.example/cb")
                    .scopes("read write"),
            )
            .await
    }

    /// A fresh confidential-client code for `scope` (PKCE S256), with its verifier.
    pub async fn code(&mut self, scope: Option<&str>) -> (String, Pkce) {
        let pkce = Pkce::new();
        let mut req = AuthRequest::new(&self.client.client_id, APP_CB).pkce(&pkce);
        if let Some(s) = scope {
            req = req.scope(s);
        }
        let code = self.server.code(&mut self.browser, &self.user, &req).await;
        (code, pkce)
    }

    /// A fresh grant of the fixture's client (flow + redemption).
    pub async fn tokens(&mut self, scope: Option<&str>) -> Tokens {
        let (code, pkce) = self.code(scope).await;
        let resp = self
            .server
            .redeem(&self.client, &code, APP_CB, Some(&pkce.verifier))
            .await;
        Tokens::from_resp(&resp)
    }

    pub async fn is_active(&self, token: &str) -> bool {
        self.server.is_active(&self.rs, token).await
    }

    pub async fn eventually_inactive(&self, token: &str) -> bool {
        self.server.eventually_inactive(&self.rs, token).await
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}
