//! The consumer side of the story, end to end: Printshop (crates/printshop, built on the
//! `openidconnect` crate) signs Alice in through Valet, shows who she is, lists her
//! designs from the `designs` resource service with her access token (refreshing it
//! when it has expired), and signs her out of Valet as well. Driven over HTTP as a browser would, forms and all.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use valet_tests::html::{find_form, Form};
use valet_tests::nats::TestNats;
use valet_tests::server::{
    target_dir, Browser, ClientSpec, FlowEnd, SidInLogoutTokens, TestServer,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn binary(relative: &str) -> PathBuf {
    let bin = target_dir().join(relative);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p printshop && cargo build -p valet-resource --example designs` (make test does)",
        bin.display()
    );
    bin
}

/// Starts `cmd` and waits for the line that says it listens.
async fn spawn_until(mut cmd: Command, ready: &str) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with(ready) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{ready:?} never came");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// `location` resolved against the URL it came from (the two apps have two origins).
fn join(base: &str, location: &str) -> String {
    url::Url::parse(base)
        .and_then(|b| b.join(location))
        .expect("a URL")
        .to_string()
}

/// Follows redirects from `url` until a page (200) or a redirect back to the app that the
/// caller handles; signs in and approves when Valet asks.
async fn walk(browser: &mut Browser, url: String, username: &str, password: &str) -> String {
    let mut url = url;
    for _ in 0..12 {
        let resp = browser.get(&url).await;
        match resp.status {
            301..=308 => {
                url = join(&url, &resp.location().expect("Location"));
            }
            200 => {
                let page = resp.text();
                let form = find_form(&page, Form::is_login)
                    .map(|f| (f, vec![("username", username), ("password", password)]))
                    .or_else(|| {
                        find_form(&page, Form::is_consent)
                            .map(|f| (f, vec![("decision", "approve")]))
                    });
                let Some((form, extra)) = form else {
                    return page;
                };
                let mut fields = form.hidden();
                fields.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
                let action = join(&url, &form.action);
                let r = browser.post_form(&action, &fields).await;
                assert!(matches!(r.status, 302 | 303), "{}", r.describe());
                url = join(&action, &r.location().expect("Location"));
            }
            _ => panic!("GET {url}: {}", resp.describe()),
        }
    }
    panic!("too many steps from {url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printshop_signs_alice_in_through_valet_lists_her_designs_and_signs_her_out() {
    let nats = TestNats::start().await;
    // Two-second access tokens: Printshop must refresh to list the designs again.
    let server = TestServer::start_with(&[
        ("VALET_NATS_URL", &nats.url()),
        ("VALET_ACCESS_TOKEN_TTL", "2"),
    ])
    .await;
    let (shop_port, designs_port) = (free_port(), free_port());
    let shop = format!("http://127.0.0.1:{shop_port}");

    let alice = server.create_user("alice", "a long passphrase").await;
    let out = server
        .cli(
            &[
                "user",
                "update",
                "alice",
                "--name",
                "Alice Liddell",
                "--email",
                "alice@example.com",
                "--email-verified",
                "true",
            ],
            None,
        )
        .await;
    assert!(out.status.success());
    let printshop = server
        .create_client(
            &ClientSpec::confidential("Printshop")
                .redirect(&format!("{shop}/callback"))
                .post_logout_redirect(&format!("{shop}/"))
                .scopes("openid profile email designs:read")
                .jwt_access_tokens("EdDSA"),
        )
        .await;
    let designs_client = server
        .create_client(&ClientSpec::confidential("designs").scopes("introspect"))
        .await;

    let mut designs = Command::new(binary("debug/examples/designs"));
    designs
        .env("VALET_NATS_URL", nats.url())
        .env("VALET_INTROSPECT_URL", server.url("/introspect"))
        .env("VALET_ISSUER", server.base_url())
        .env("DESIGNS_CLIENT_ID", &designs_client.client_id)
        .env("DESIGNS_CLIENT_SECRET", designs_client.secret())
        .env("DESIGNS_LISTEN", format!("127.0.0.1:{designs_port}"));
    let _designs = spawn_until(designs, "designs listening on").await;
    let mut shop_cmd = Command::new(binary("debug/printshop"));
    shop_cmd
        .env("PRINTSHOP_ISSUER", server.base_url())
        .env("PRINTSHOP_CLIENT_ID", &printshop.client_id)
        .env("PRINTSHOP_CLIENT_SECRET", printshop.secret())
        .env("PRINTSHOP_LISTEN", format!("127.0.0.1:{shop_port}"))
        .env("DESIGNS_URL", format!("http://127.0.0.1:{designs_port}"));
    let _shop = spawn_until(shop_cmd, "printshop listening on").await;

    let mut browser = Browser::new(&shop);
    let home = browser.get(&format!("{shop}/")).await;
    assert!(
        home.text().contains("Sign in with Valet"),
        "{}",
        home.describe()
    );
    let page = walk(
        &mut browser,
        format!("{shop}/login"),
        &alice.username,
        &alice.password,
    )
    .await;
    assert!(
        page.contains("Signed in as <strong>Alice Liddell</strong>"),
        "{page}"
    );
    assert!(page.contains("alice@example.com"), "{page}");
    assert!(
        page.contains("Articulated dragon"),
        "the designs service listed her designs: {page}"
    );

    // Printshop's access tokens are JWTs; the designs service takes opaque ones too.
    let robot = server
        .create_client(
            &ClientSpec::confidential("robot")
                .grant("client_credentials")
                .scopes("designs:read"),
        )
        .await;
    let opaque = server.client_credentials(&robot, None).await.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    assert!(!opaque.contains('.'), "an opaque token");
    let listed = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{designs_port}/designs"))
        .bearer_auth(&opaque)
        .send()
        .await
        .expect("designs answers");
    assert_eq!(
        listed.status(),
        200,
        "an opaque token at the designs service"
    );

    // The access token expires; Printshop refreshes it and lists the designs again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = browser.get(&format!("{shop}/")).await.text();
    assert!(
        again.contains("Articulated dragon"),
        "after the access token expired: {again}"
    );
    // At least one refresh (a slow first page may have needed one already).
    assert!(
        !server.events_of("TokensRefreshed").await.is_empty(),
        "Printshop refreshed"
    );

    // Signing out of Printshop signs out of Valet too (RP-Initiated Logout).
    let page = walk(
        &mut browser,
        format!("{shop}/logout"),
        &alice.username,
        &alice.password,
    )
    .await;
    assert!(page.contains("Sign in with Valet"), "{page}");
    let silent = browser
        .get(&server.url(&format!(
            "/authorize?response_type=code&client_id={}&redirect_uri={}&scope=openid&prompt=none",
            &printshop.client_id,
            valet_tests::server::form_encode(&format!("{shop}/callback")),
        )))
        .await;
    let end = FlowEnd::new(silent);
    assert_eq!(
        end.param("error").as_deref(),
        Some("login_required"),
        "{}",
        end.raw_location
    );
    server.stop().await;
}

/// In Debian's chromium (tests/js/account-e2e.mjs): Alice signs in to Printshop, opens
/// her account page at Valet and removes Printshop's access. The designs service, which
/// cannot reach /introspect at all here, refuses Printshop's token once the revocation
/// arrives over NATS; Printshop receives a valid logout token and signs her out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_printshop_on_the_account_page_reaches_designs_and_signs_alice_out_of_printshop() {
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    assert!(
        js.join("node_modules/playwright-core").is_dir(),
        "run `npm ci --prefix tests/js` (make test does)"
    );
    let nats = TestNats::start().await;
    let server = TestServer::start_with(&[("VALET_NATS_URL", &nats.url())]).await;
    let (shop_port, designs_port, nowhere) = (free_port(), free_port(), free_port());
    let shop = format!("http://127.0.0.1:{shop_port}");
    let alice = server.create_user("alice", "a long passphrase").await;
    let printshop = server
        .create_client(
            &ClientSpec::confidential("Printshop")
                .redirect(&format!("{shop}/callback"))
                .post_logout_redirect(&format!("{shop}/"))
                .scopes("openid profile email designs:read")
                .jwt_access_tokens("EdDSA")
                .backchannel_logout(
                    &format!("{shop}/backchannel-logout"),
                    SidInLogoutTokens::Required,
                ),
        )
        .await;
    let designs_client = server
        .create_client(&ClientSpec::confidential("designs").scopes("introspect"))
        .await;
    let mut designs = Command::new(binary("debug/examples/designs"));
    designs
        .env("VALET_NATS_URL", nats.url())
        // Nothing listens there: every answer comes from the SDK's own store.
        .env(
            "VALET_INTROSPECT_URL",
            format!("http://127.0.0.1:{nowhere}/introspect"),
        )
        .env("VALET_ISSUER", server.base_url())
        .env("DESIGNS_CLIENT_ID", &designs_client.client_id)
        .env("DESIGNS_CLIENT_SECRET", designs_client.secret())
        .env("DESIGNS_LISTEN", format!("127.0.0.1:{designs_port}"));
    let _designs = spawn_until(designs, "designs listening on").await;
    let mut shop_cmd = Command::new(binary("debug/printshop"));
    shop_cmd
        .env("PRINTSHOP_ISSUER", server.base_url())
        .env("PRINTSHOP_CLIENT_ID", &printshop.client_id)
        .env("PRINTSHOP_CLIENT_SECRET", printshop.secret())
        .env("PRINTSHOP_LISTEN", format!("127.0.0.1:{shop_port}"))
        .env("DESIGNS_URL", format!("http://127.0.0.1:{designs_port}"));
    let _shop = spawn_until(shop_cmd, "printshop listening on").await;

    // A token of Printshop's for Alice (the grant "Remove access" will revoke).
    let mut browser = server.browser();
    let tokens = server
        .user_tokens(
            &mut browser,
            &alice,
            &printshop,
            Some("openid profile email designs:read"),
        )
        .await;
    let designs_url = format!("http://127.0.0.1:{designs_port}/designs");
    let status = |token: String| {
        let url = designs_url.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("designs answers")
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(tokens.access_token.clone()).await, 200);

    let shots = target_dir().join("screenshots");
    let run = Command::new("node")
        .arg(js.join("account-e2e.mjs"))
        .current_dir(&js)
        .env("PRINTSHOP", &shop)
        .env("VALET", server.base_url())
        .env("USERNAME", &alice.username)
        .env("PASSWORD", &alice.password)
        .env("SHOTS", &shots)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the script finishes within 2 minutes")
        .expect("node runs (apt-get install nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "account-e2e failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(seen["signed_in"], true, "{seen}");
    assert_eq!(seen["listed_printshop"], true, "{seen}");
    assert_eq!(seen["listed_session"], true, "{seen}");
    assert_eq!(
        seen["phone_overflows"], false,
        "readable on a phone: {seen}"
    );
    assert_eq!(seen["removed_notice"], true, "{seen}");
    assert_eq!(seen["no_app_left"], true, "{seen}");
    assert_eq!(
        seen["printshop_signed_out"], true,
        "Printshop took the logout token: {seen}"
    );

    // The revocation reached the designs service over NATS.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while status(tokens.access_token.clone()).await != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "designs still accepts the removed app's token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What resource services heard: grant.revoked, reason consent_revoked.
    let heard: Vec<valet_wire::TokenEvent> = nats
        .stream_messages(valet_wire::STREAM)
        .await
        .iter()
        .filter_map(|m| {
            valet_wire::Message::from_json(&m.payload)
                .ok()?
                .into_token()
        })
        .filter(|e| e.event_type == valet_wire::EventType::GrantRevoked)
        .collect();
    assert!(!heard.is_empty(), "no grant.revoked on the stream");
    assert!(heard.iter().all(
        |e| e.reason == Some(valet_wire::RevocationReason::ConsentRevoked)
            && e.client_id == printshop.client_id
    ));
    let revoked = server.events_of("GrantRevoked").await;
    assert!(!revoked.is_empty());
    assert!(revoked
        .iter()
        .all(|e| e.payload["reason"] == "consent_revoked"));
    let delivered = server.events_of("BackchannelLogoutAttempted").await;
    assert!(
        delivered.iter().any(|e| e.payload["delivery"]["client_id"]
            == printshop.client_id.as_str()
            && e.payload["outcome"]["result"] == "delivered"
            && e.payload["delivery"]["session_id"].is_string()),
        "{delivered:?}"
    );
    server.stop().await;
}
