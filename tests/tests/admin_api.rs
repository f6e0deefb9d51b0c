//! The admin HTTP API (`/admin/v1`): callers need an active access token with scope
//! `valet:admin`; changes are recorded with the caller as actor; errors are JSON.

use serde_json::Value;
use valet_tests::server::{ClientCreds, ClientSpec, Resp, TestServer};

/// A client_credentials token of `client` for `scope`.
async fn token(server: &TestServer, client: &ClientCreds, scope: &str) -> String {
    let resp = server.client_credentials(client, Some(scope)).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    resp.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

async fn get(server: &TestServer, path: &str, bearer: Option<&str>) -> Resp {
    let mut req = server.http().get(server.url(path));
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    let started = std::time::Instant::now();
    Resp::read(req.send().await.expect("GET"), started).await
}

async fn post(server: &TestServer, path: &str, bearer: &str, body: &str) -> Resp {
    let auth = format!("Bearer {bearer}");
    server
        .post_raw(
            path,
            Some("application/json"),
            &[("authorization", &auth)],
            body.as_bytes().to_vec(),
        )
        .await
}

fn assert_refused(resp: &Resp, status: u16, code: &str) {
    assert_eq!(resp.status, status, "{}", resp.describe());
    assert_eq!(resp.json()["error"], code, "{}", resp.describe());
    assert!(
        resp.header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer")),
        "{}",
        resp.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_valet_admin_and_records_the_caller() {
    let server = TestServer::start().await;
    let admin = server
        .create_client(
            &ClientSpec::confidential("Infrastructure")
                .grant("client_credentials")
                .scopes("valet:admin read"),
        )
        .await;
    let batch = server
        .create_client(
            &ClientSpec::confidential("batch")
                .grant("client_credentials")
                .scopes("read"),
        )
        .await;
    server.create_user("alice", "a long passphrase").await;

    // No token, a token without valet:admin, a revoked one: refused on every route.
    let plain = token(&server, &admin, "read").await;
    let revoked = token(&server, &admin, "valet:admin").await;
    let gone = server.revoke(&admin.auth(), &revoked, None).await;
    assert_eq!(gone.status, 200);
    for path in ["/admin/v1/clients", "/admin/v1/users"] {
        assert_refused(&get(&server, path, None).await, 401, "invalid_token");
        assert_refused(
            &get(&server, path, Some("nonsense")).await,
            401,
            "invalid_token",
        );
        assert_refused(
            &get(&server, path, Some(&plain)).await,
            403,
            "insufficient_scope",
        );
        assert_refused(
            &get(&server, path, Some(&revoked)).await,
            401,
            "invalid_token",
        );
    }
    for path in [
        format!("/admin/v1/clients/{}/disable", batch.client_id),
        format!("/admin/v1/clients/{}/enable", batch.client_id),
        format!("/admin/v1/clients/{}/rotate-secret", batch.client_id),
        "/admin/v1/users/alice/disable".to_owned(),
        "/admin/v1/users/alice/enable".to_owned(),
    ] {
        assert_refused(
            &post(&server, &path, &plain, "").await,
            403,
            "insufficient_scope",
        );
        assert_refused(
            &post(&server, &path, &revoked, "").await,
            401,
            "invalid_token",
        );
    }
    assert!(server.events_of("ClientDisabled").await.is_empty());

    let bearer = token(&server, &admin, "valet:admin").await;
    let clients = get(&server, "/admin/v1/clients", Some(&bearer)).await;
    assert_eq!(clients.status, 200, "{}", clients.describe());
    assert!(clients.no_store());
    let list = clients.json();
    assert!(list
        .as_array()
        .expect("array")
        .iter()
        .any(|c| c["client_id"] == batch.client_id.as_str() && c["active"] == true));
    let users = get(&server, "/admin/v1/users", Some(&bearer)).await.json();
    assert_eq!(users[0]["username"], "alice");

    // A rotation through the API: the new secret works, the change names the caller.
    let rotated = post(
        &server,
        &format!("/admin/v1/clients/{}/rotate-secret", batch.client_id),
        &bearer,
        r#"{"overlap_seconds": 0}"#,
    )
    .await;
    assert_eq!(rotated.status, 200, "{}", rotated.describe());
    let secret = rotated.json()["client_secret"]
        .as_str()
        .expect("client_secret")
        .to_owned();
    let creds = ClientCreds {
        client_secret: Some(secret),
        ..batch.clone()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while server.client_credentials(&creds, None).await.status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new secret never worked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let recorded = server.events_of("ClientSecretRotated").await;
    assert_eq!(
        recorded[0].metadata["actor"],
        format!("client:{}", admin.client_id)
    );

    let disabled = post(
        &server,
        &format!("/admin/v1/clients/{}/disable", batch.client_id),
        &bearer,
        "",
    )
    .await;
    assert_eq!(disabled.status, 200, "{}", disabled.describe());
    assert_eq!(disabled.json()["revoked_grants"], 1);
    let actor: Value = server.events_of("ClientDisabled").await[0].metadata["actor"].clone();
    assert_eq!(actor, format!("client:{}", admin.client_id));

    // Bad input is a 4xx that says what is wrong.
    let unknown = post(
        &server,
        "/admin/v1/clients/nosuchclient/enable",
        &bearer,
        "",
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.describe());
    assert_eq!(unknown.json()["error"], "not_found");
    let bad = post(
        &server,
        &format!("/admin/v1/clients/{}/rotate-secret", batch.client_id),
        &bearer,
        r#"{"overlap": 5}"#,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.describe());
    assert_eq!(bad.json()["error"], "invalid_request");
    let no_user = post(&server, "/admin/v1/users/nobody/disable", &bearer, "").await;
    assert_eq!(no_user.status, 404);
    server.stop().await;
}
