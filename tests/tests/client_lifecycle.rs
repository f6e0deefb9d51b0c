//! A client's life after registration, through the CLI: its secret rotated with an
//! overlap window, disabled and enabled again, deleted for good.

use std::time::{Duration, Instant};

use serde_json::Value;
use valet_tests::server::{ClientCreds, ClientSpec, TestServer};

async fn cli_ok(server: &TestServer, args: &[&str]) -> String {
    let out = server.cli(args, None).await;
    assert!(
        out.status.success(),
        "valet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `valet client rotate-secret --overlap OVERLAP --json`: the new secret.
async fn rotate(server: &TestServer, client: &ClientCreds, overlap: &str) -> String {
    let out = cli_ok(
        server,
        &[
            "client",
            "rotate-secret",
            &client.client_id,
            "--overlap",
            overlap,
            "--json",
        ],
    )
    .await;
    let rotated: Value = serde_json::from_str(out.trim()).expect("JSON");
    assert!(rotated["previous_valid_until"].is_string());
    rotated["client_secret"]
        .as_str()
        .expect("client_secret")
        .to_owned()
}

/// The status of a client_credentials request with `secret`.
async fn token_status(server: &TestServer, client: &ClientCreds, secret: &str) -> u16 {
    let creds = ClientCreds {
        client_secret: Some(secret.to_owned()),
        ..client.clone()
    };
    server.client_credentials(&creds, None).await.status
}

/// Waits (up to 3 s: the server caches a client for a second) until `secret` gets
/// `status`.
async fn until_status(server: &TestServer, client: &ClientCreds, secret: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = token_status(server, client, secret).await;
        if got == status {
            return;
        }
        assert!(Instant::now() < deadline, "got {got}, wanted {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `valet client rotate-secret --overlap N`: the new secret works at once, the old one
/// until the deadline and not after; the log holds neither secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_out_secret_works_until_its_deadline_and_fails_after() {
    // The waits below fail authentications on purpose: no limit on them here.
    let server = TestServer::start_with(&[("VALET_FAILED_AUTH_PER_MINUTE", "1000")]).await;
    let client = server
        .create_client(
            &ClientSpec::confidential("batch")
                .grant("client_credentials")
                .scopes("read"),
        )
        .await;
    let old = client.secret().to_owned();
    let new = &rotate(&server, &client, "3").await;
    assert_ne!(new, &old);
    until_status(&server, &client, new, 200).await;
    assert_eq!(
        token_status(&server, &client, &old).await,
        200,
        "in the overlap"
    );
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(token_status(&server, &client, &old).await, 401, "after it");
    assert_eq!(token_status(&server, &client, new).await, 200);

    // No overlap: the old secret stops at once.
    let newest = &rotate(&server, &client, "0").await;
    until_status(&server, &client, newest, 200).await;
    assert_eq!(token_status(&server, &client, new).await, 401);

    let log = server.events_dump().await;
    for secret in [old.as_str(), new, newest] {
        assert!(!log.contains(secret), "a secret in the log");
    }
    assert_eq!(server.events_of("ClientSecretRotated").await.len(), 2);
    // A public client has no secret to rotate.
    let public = server
        .create_client(
            &ClientSpec::public("app")
                .redirect("http://127.0.0.1:9/cb")
                .scopes("read"),
        )
        .await;
    let refused = server
        .cli(&["client", "rotate-secret", &public.client_id], None)
        .await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no secret"));
    server.stop().await;
}

/// Disabled, a client is refused and its grants revoked; enabled, it is served again
/// (its old tokens stay revoked); deleted, it is refused for good and cannot be enabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_client_can_be_enabled_and_a_deleted_one_never() {
    // The waits below fail authentications on purpose: no limit on them here.
    let server = TestServer::start_with(&[("VALET_FAILED_AUTH_PER_MINUTE", "1000")]).await;
    let client = server
        .create_client(
            &ClientSpec::confidential("batch")
                .grant("client_credentials")
                .scopes("read introspect"),
        )
        .await;
    let rs = server
        .create_client(
            &ClientSpec::confidential("rs")
                .grant("client_credentials")
                .scopes("introspect"),
        )
        .await;
    let first = server
        .client_credentials(&client, Some("read"))
        .await
        .json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    server.disable_client(&client.client_id).await;
    until_status(&server, &client, client.secret(), 401).await;
    assert!(!server.is_active(&rs, &first).await);

    let out = cli_ok(&server, &["client", "enable", &client.client_id]).await;
    assert!(out.contains("enabled client"), "{out}");
    until_status(&server, &client, client.secret(), 200).await;
    assert!(
        !server.is_active(&rs, &first).await,
        "revoked stays revoked"
    );

    let second = server
        .client_credentials(&client, Some("read"))
        .await
        .json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    assert!(server.is_active(&rs, &second).await);
    let out = cli_ok(&server, &["client", "delete", &client.client_id]).await;
    assert!(out.starts_with("deleted client"), "{out}");
    until_status(&server, &client, client.secret(), 401).await;
    assert!(!server.is_active(&rs, &second).await);
    let again = server
        .cli(&["client", "enable", &client.client_id], None)
        .await;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("deleted"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let listed = cli_ok(&server, &["client", "list", "--json"]).await;
    let listed: Value = serde_json::from_str(listed.trim()).expect("JSON");
    let row = listed
        .as_array()
        .expect("array")
        .iter()
        .find(|c| c["client_id"] == client.client_id.as_str())
        .expect("a deleted client is still listed");
    assert_eq!(row["active"], false);
    let unknown = server
        .cli(&["client", "delete", "nosuchclient"], None)
        .await;
    assert!(!unknown.status.success());
    server.stop().await;
}

/// `valet client update`: a new name and scopes take effect (a scope removed is no longer
/// granted), the registration's rules still hold, and the same values again change
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updated_client_is_granted_what_it_now_registers() {
    let server = TestServer::start().await;
    let client = server
        .create_client(
            &ClientSpec::confidential("batch")
                .grant("client_credentials")
                .scopes("read write"),
        )
        .await;
    assert_eq!(
        server
            .client_credentials(&client, Some("write"))
            .await
            .status,
        200
    );
    let out = cli_ok(
        &server,
        &[
            "client",
            "update",
            &client.client_id,
            "--name",
            "Nightly batch",
            "--scope",
            "read",
        ],
    )
    .await;
    assert_eq!(out.trim(), format!("updated client {}", client.client_id));
    let deadline = Instant::now() + Duration::from_secs(3);
    while server
        .client_credentials(&client, Some("write"))
        .await
        .status
        != 400
    {
        assert!(Instant::now() < deadline, "write is still granted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        server
            .client_credentials(&client, Some("read"))
            .await
            .status,
        200
    );
    let listed = cli_ok(&server, &["client", "list", "--json"]).await;
    let listed: Value = serde_json::from_str(listed.trim()).expect("JSON");
    let row = listed
        .as_array()
        .expect("array")
        .iter()
        .find(|c| c["client_id"] == client.client_id.as_str())
        .expect("listed");
    assert_eq!(row["name"], "Nightly batch");
    let again = cli_ok(
        &server,
        &["client", "update", &client.client_id, "--scope", "read"],
    )
    .await;
    assert!(again.contains("unchanged"), "{again}");
    // A code flow needs a redirect URI: refused, with the rule named.
    let refused = server
        .cli(
            &[
                "client",
                "update",
                &client.client_id,
                "--grant-type",
                "authorization_code",
            ],
            None,
        )
        .await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("redirect URI"));
    assert_eq!(server.events_of("ClientUpdated").await.len(), 1);
    server.stop().await;
}

/// Narrowing a client's scopes revokes its grants that hold a scope removed (a refresh
/// or the token itself would otherwise keep using it); grants within the new scopes
/// stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_a_clients_scopes_revokes_its_grants_that_hold_a_removed_scope() {
    let server = TestServer::start().await;
    let client = server
        .create_client(
            &ClientSpec::confidential("batch")
                .grant("client_credentials")
                .scopes("read write"),
        )
        .await;
    let (both, read_only) = (
        server.access_token(&client, "read write").await,
        server.access_token(&client, "read").await,
    );
    let active = |token: String| {
        let (server, client) = (&server, &client);
        async move { server.introspection(client, &token).await["active"] == true }
    };
    assert!(active(both.clone()).await && active(read_only.clone()).await);

    cli_ok(
        &server,
        &["client", "update", &client.client_id, "--scope", "read"],
    )
    .await;
    assert!(
        !active(both).await,
        "a grant holding write outlived its scope"
    );
    assert!(
        active(read_only).await,
        "a grant within the new scopes was revoked"
    );
    let revoked = server.events_of("GrantRevoked").await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0].payload["reason"], "admin", "{:?}", revoked[0]);
    server.stop().await;
}
