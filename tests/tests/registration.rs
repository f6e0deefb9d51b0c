//! Dynamic client registration (RFC 7591) and management (RFC 7592) against the real
//! server: off by default; open or gated by an initial access token from the admin API;
//! the redirect-URI rules of SECURITY.md 3; the registration access token reads,
//! replaces and deletes the registration and is rotated by every replacement.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use valet_tests::server::{ClientCreds, ClientSpec, Resp, TestServer};

async fn register(server: &TestServer, bearer: Option<&str>, metadata: Value) -> Resp {
    server
        .call(Method::POST, "/register", bearer, Some(metadata))
        .await
}

/// The client as registered, with its secret.
fn creds(registered: &Value) -> ClientCreds {
    ClientCreds {
        client_id: registered["client_id"]
            .as_str()
            .expect("client_id")
            .to_owned(),
        client_secret: registered["client_secret"].as_str().map(str::to_owned),
        redirect_uris: Vec::new(),
    }
}

/// Polls client_credentials until it answers `status` (the server caches clients ~1 s).
async fn until_token_status(server: &TestServer, client: &ClientCreds, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = server.client_credentials(client, None).await.status;
        if got == status {
            return;
        }
        assert!(Instant::now() < deadline, "still {got}, not {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_error(resp: &Resp, status: u16, code: &str) {
    assert_eq!(resp.status, status, "{}", resp.describe());
    assert_eq!(resp.json()["error"], code, "{}", resp.describe());
    assert!(resp.no_store(), "{}", resp.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_registration_is_off_by_default() {
    let server = TestServer::start().await;
    let resp = register(&server, None, json!({ "client_name": "x" })).await;
    assert_error(&resp, 404, "not_found");
    let resp = server
        .call(Method::GET, "/register/abc", Some("t"), None)
        .await;
    assert_eq!(resp.status, 404, "{}", resp.describe());
    for doc in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        assert!(server.get(doc).await.json()["registration_endpoint"].is_null());
    }
    assert!(server.events_of("ClientRegistered").await.is_empty());
    server.stop().await;
}

/// Open registration: a client registers, gets tokens, and the rules of SECURITY.md 3
/// refuse a fragment, a wildcard and plain http on a non-loopback host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_registration_admits_clients_under_the_redirect_uri_rules() {
    let server = TestServer::start_with(&[("VALET_REGISTRATION", "open")]).await;
    for doc in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        assert_eq!(
            server.get(doc).await.json()["registration_endpoint"],
            server.url("/register"),
            "{doc}"
        );
    }
    let made = register(
        &server,
        None,
        json!({
            "client_name": "Inventory sync",
            "grant_types": ["client_credentials"],
            "scope": "read",
            "software_id": "ignored, as RFC 7591 §3.1 allows",
        }),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.describe());
    assert!(made.no_store());
    let made = made.json();
    assert_eq!(made["client_name"], "Inventory sync");
    assert_eq!(made["token_endpoint_auth_method"], "client_secret_basic");
    assert_eq!(made["client_secret_expires_at"], 0);
    assert!(made["registration_access_token"]
        .as_str()
        .is_some_and(|t| t.starts_with("valet_rat_")));
    assert_eq!(
        made["registration_client_uri"],
        server.url(&format!(
            "/register/{}",
            made["client_id"].as_str().unwrap()
        ))
    );
    until_token_status(&server, &creds(&made), 200).await;
    let registered = server.events_of("ClientRegistered").await;
    assert_eq!(registered[0].metadata["actor"], "registration");

    let web = register(
        &server,
        None,
        json!({
            "client_name": "Web app",
            "redirect_uris": ["https://app.example/cb", "http://127.0.0.1:8765/cb"],
            "token_endpoint_auth_method": "none",
            "scope": "openid profile",
        }),
    )
    .await;
    assert_eq!(web.status, 201, "{}", web.describe());
    assert_eq!(web.json()["token_endpoint_auth_method"], "none");
    assert!(web.json()["client_secret"].is_null());
    assert_eq!(web.json()["response_types"], json!(["code"]));

    for bad in [
        "https://app.example/cb#fragment",
        "https://*.example/cb",
        "http://app.example/cb",
    ] {
        let resp = register(
            &server,
            None,
            json!({ "redirect_uris": [bad], "scope": "openid" }),
        )
        .await;
        assert_error(&resp, 400, "invalid_redirect_uri");
    }
    let own = register(
        &server,
        None,
        json!({ "grant_types": ["client_credentials"], "scope": "valet:admin" }),
    )
    .await;
    assert_error(&own, 400, "invalid_client_metadata");
    let not_object = register(&server, None, json!(["client_name"])).await;
    assert_error(&not_object, 400, "invalid_client_metadata");
    let implicit = register(
        &server,
        None,
        json!({ "redirect_uris": ["https://app.example/cb"], "response_types": ["token"] }),
    )
    .await;
    assert_error(&implicit, 400, "invalid_client_metadata");
    assert_eq!(server.events_of("ClientRegistered").await.len(), 2);
    server.stop().await;
}

/// Gated registration: no token or another one is refused with 401; a token from the
/// admin API registers, recorded with the admin client as actor; revoked, it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_needs_an_initial_access_token_when_so_configured() {
    let server = TestServer::start_with(&[("VALET_REGISTRATION", "initial-access-token")]).await;
    let admin = server
        .create_client(
            &ClientSpec::confidential("Infrastructure")
                .grant("client_credentials")
                .scopes("valet:admin read"),
        )
        .await;
    let metadata = json!({ "grant_types": ["client_credentials"], "scope": "read" });
    let resp = register(&server, None, metadata.clone()).await;
    assert_error(&resp, 401, "invalid_token");
    assert!(resp
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Bearer")));
    let plain = server.client_credentials(&admin, Some("read")).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_error(
        &register(&server, Some(&plain), metadata.clone()).await,
        401,
        "invalid_token",
    );

    let bearer = server
        .client_credentials(&admin, Some("valet:admin"))
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let issued = server
        .call(
            Method::POST,
            "/admin/v1/initial-access-tokens",
            Some(&bearer),
            None,
        )
        .await;
    assert_eq!(issued.status, 201, "{}", issued.describe());
    let initial = issued.json()["initial_access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(issued.json()["scope"], "valet:register");
    // Without a body it lives as long as access tokens; a lifetime may be asked for, up
    // to 30 days.
    assert_eq!(issued.json()["expires_in"], 3600);
    let asked = |lifetime: Value| {
        let (server, bearer) = (&server, &bearer);
        async move {
            server
                .call(
                    Method::POST,
                    "/admin/v1/initial-access-tokens",
                    Some(bearer),
                    Some(lifetime),
                )
                .await
        }
    };
    let week = asked(json!({"expires_in": 604_800})).await;
    assert_eq!(week.status, 201, "{}", week.describe());
    assert_eq!(week.json()["expires_in"], 604_800);
    for refused in [json!({"expires_in": 0}), json!({"expires_in": 2_592_001})] {
        let resp = asked(refused.clone()).await;
        assert_eq!(resp.status, 400, "{refused}: {}", resp.describe());
    }
    // The grant records that lifetime, in milliseconds (the last grant issued is the
    // week's).
    let grants = server.events_of("GrantIssued").await;
    let payload = &grants.last().expect("a grant").payload;
    let access = payload
        .get("access")
        .unwrap_or(&payload["GrantIssued"]["access"]);
    let lifetime = access["expires_at"]
        .as_i64()
        .zip(access["issued_at"].as_i64());
    assert_eq!(
        lifetime.map(|(exp, iat)| exp - iat),
        Some(604_800_000),
        "{payload}"
    );
    let long_lived = week.json()["initial_access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let made = register(&server, Some(&long_lived), metadata.clone()).await;
    assert_eq!(made.status, 201, "{}", made.describe());
    let made = register(&server, Some(&initial), metadata.clone()).await;
    assert_eq!(made.status, 201, "{}", made.describe());
    let ours = server.events_of("ClientRegistered").await;
    let actor = &ours.last().unwrap().metadata["actor"];
    assert_eq!(*actor, format!("client:{}", admin.client_id));

    assert_eq!(
        server.revoke(&admin.auth(), &initial, None).await.status,
        200
    );
    assert_error(
        &register(&server, Some(&initial), metadata).await,
        401,
        "invalid_token",
    );
    server.stop().await;
}

/// RFC 7592: read, replace (a new registration access token each time; the old one
/// stops), delete (the client's tokens stop too); every refusal is the same 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_is_read_replaced_and_deleted_with_its_rotating_token() {
    let server = TestServer::start_with(&[
        ("VALET_REGISTRATION", "open"),
        ("VALET_FAILED_AUTH_PER_MINUTE", "1000"),
    ])
    .await;
    let made = register(
        &server,
        None,
        json!({
            "client_name": "Reports",
            "redirect_uris": ["https://reports.example/cb"],
            "grant_types": ["authorization_code", "client_credentials"],
            "scope": "openid read",
        }),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.describe());
    let made = made.json();
    let client = creds(&made);
    let uri = format!("/register/{}", client.client_id);
    let first = made["registration_access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let read = server.call(Method::GET, &uri, Some(&first), None).await;
    assert_eq!(read.status, 200, "{}", read.describe());
    assert_eq!(read.json()["client_name"], "Reports");
    assert!(
        read.json()["client_secret"].is_null(),
        "the secret is shown once"
    );
    assert!(read.json()["registration_access_token"].is_null());
    for token in [None, Some("valet_rat_wrong"), Some(client.secret())] {
        let resp = server.call(Method::GET, &uri, token, None).await;
        assert_error(&resp, 401, "invalid_token");
    }
    let other = server
        .call(Method::GET, "/register/nosuchclient", Some(&first), None)
        .await;
    assert_error(&other, 401, "invalid_token");

    let replaced = server
        .call(
            Method::PUT,
            &uri,
            Some(&first),
            Some(json!({
                "client_name": "Reports v2",
                "redirect_uris": ["https://reports.example/callback"],
                "grant_types": ["authorization_code", "client_credentials"],
                "scope": "openid",
            })),
        )
        .await;
    assert_eq!(replaced.status, 200, "{}", replaced.describe());
    let second = replaced.json()["registration_access_token"]
        .as_str()
        .expect("a new registration access token")
        .to_owned();
    assert_ne!(first, second);
    assert_eq!(
        replaced.json()["redirect_uris"],
        json!(["https://reports.example/callback"])
    );
    assert_eq!(replaced.json()["scope"], "openid");
    assert_error(
        &server.call(Method::GET, &uri, Some(&first), None).await,
        401,
        "invalid_token",
    );
    let read = server.call(Method::GET, &uri, Some(&second), None).await;
    assert_eq!(read.json()["client_name"], "Reports v2");
    let bad = server
        .call(
            Method::PUT,
            &uri,
            Some(&second),
            Some(json!({ "redirect_uris": ["http://reports.example/cb"], "scope": "openid" })),
        )
        .await;
    assert_error(&bad, 400, "invalid_redirect_uri");
    let refs: Vec<_> = server
        .events_of("ClientRegistrationTokenSet")
        .await
        .into_iter()
        .map(|e| e.payload.to_string())
        .collect();
    assert_eq!(refs.len(), 2);
    assert!(refs
        .iter()
        .all(|p| !p.contains(&first) && !p.contains(&second)));

    until_token_status(&server, &client, 200).await;
    let deleted = server.call(Method::DELETE, &uri, Some(&second), None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.describe());
    assert_error(
        &server.call(Method::GET, &uri, Some(&second), None).await,
        401,
        "invalid_token",
    );
    until_token_status(&server, &client, 401).await;
    assert_eq!(
        server.events_of("ClientDeleted").await[0].metadata["actor"],
        format!("client:{}", client.client_id)
    );
    server.stop().await;
}
