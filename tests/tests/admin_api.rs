//! The admin HTTP API (`/admin/v1`): callers need an active access token with scope
//! `valet:admin`; changes are recorded with the caller as actor; errors are JSON; lists
//! page by key. Every route the OpenAPI document names is walked for its refusals.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use valet_resource::{Validator, ValidatorConfig};
use valet_tests::nats::TestNats;
use valet_tests::sdk::{until_revoked_locally, until_valid_locally};
use valet_tests::server::{sha256_hex, ClientCreds, ClientSpec, Fixture, Resp, TestServer};

async fn get(server: &TestServer, path: &str, bearer: &str) -> Value {
    let resp = server.call(Method::GET, path, Some(bearer), None).await;
    assert_eq!(resp.status, 200, "GET {path}: {}", resp.describe());
    assert!(resp.no_store());
    resp.json()
}

async fn post(server: &TestServer, path: &str, bearer: &str, body: Value) -> Resp {
    server
        .call(Method::POST, path, Some(bearer), Some(body))
        .await
}

fn assert_refused(resp: &Resp, status: u16, code: &str, route: &str) {
    assert_eq!(resp.status, status, "{route}: {}", resp.describe());
    assert_eq!(resp.json()["error"], code, "{route}: {}", resp.describe());
    assert!(
        resp.header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer")),
        "{route}: {}",
        resp.describe()
    );
}

async fn admin_client(server: &TestServer) -> ClientCreds {
    server
        .create_client(
            &ClientSpec::confidential("Infrastructure")
                .grant("client_credentials")
                .scopes("valet:admin read"),
        )
        .await
}

/// Every operation of the OpenAPI document refuses a caller with no token, a malformed
/// one, an expired one, a revoked one (401 `invalid_token`) and one without
/// `valet:admin` (403 `insufficient_scope`), and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_in_the_openapi_document_refuses_callers_without_valet_admin() {
    let server = TestServer::start_with(&[("VALET_ACCESS_TOKEN_TTL", "2")]).await;
    let admin = admin_client(&server).await;
    let batch = server
        .create_client(
            &ClientSpec::confidential("batch")
                .grant("client_credentials")
                .scopes("read"),
        )
        .await;
    server.create_user("alice", "a long passphrase").await;
    let expired = server.access_token(&admin, "valet:admin").await;
    let revoked = server.access_token(&admin, "valet:admin").await;
    assert_eq!(
        server.revoke(&admin.auth(), &revoked, None).await.status,
        200
    );
    let before = server.events().await.len();
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let doc = server.get("/admin/v1/openapi.json").await;
    assert_eq!(doc.status, 200, "{}", doc.describe());
    let doc = doc.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut walked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let concrete = path
            .replace("{client_id}", &batch.client_id)
            .replace("{username}", "alice")
            .replace("{grant_id}", "01939d2e-0000-7000-8000-000000000000");
        for (method, operation) in item.as_object().expect("path item") {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let route = format!("{method} {path}");
            for status in ["401", "403"] {
                assert!(
                    operation["responses"][status].is_object(),
                    "{route} documents {status}"
                );
            }
            let body = operation.get("requestBody").map(|_| json!({ "name": "x" }));
            let send = |bearer: Option<String>| {
                let (method, concrete, body) = (method.clone(), concrete.clone(), body.clone());
                let server = &server;
                async move {
                    server
                        .call(method, &concrete, bearer.as_deref(), body)
                        .await
                }
            };
            assert_refused(&send(None).await, 401, "invalid_token", &route);
            assert_refused(
                &send(Some("nonsense".into())).await,
                401,
                "invalid_token",
                &route,
            );
            assert_refused(
                &send(Some(expired.clone())).await,
                401,
                "invalid_token",
                &route,
            );
            assert_refused(
                &send(Some(revoked.clone())).await,
                401,
                "invalid_token",
                &route,
            );
            // A fresh one each time: tokens live 2 s here.
            let plain = server.access_token(&admin, "read").await;
            assert_refused(&send(Some(plain)).await, 403, "insufficient_scope", &route);
            walked += 1;
        }
    }
    assert!(walked >= 23, "walked {walked} operations");
    let after: Vec<_> = server.events().await.into_iter().skip(before).collect();
    assert!(
        after.iter().all(|e| e.event_type == "GrantIssued"),
        "a refused call changed something: {:?}",
        after.iter().map(|e| &e.event_type).collect::<Vec<_>>()
    );
    server.stop().await;
}

/// The whole client lifecycle over the API: register, show, change, list a page at a
/// time, rotate the secret (the old one works until its deadline, then fails), disable
/// (the SDK refuses its tokens, pushed over NATS), delete; each change names the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_lifecycle_over_the_admin_api() {
    let nats = TestNats::start().await;
    let server = TestServer::start_with(&[
        ("VALET_NATS_URL", &nats.url()),
        // The waits below fail authentications on purpose.
        ("VALET_FAILED_AUTH_PER_MINUTE", "1000"),
    ])
    .await;
    let admin = admin_client(&server).await;
    let bearer = server.access_token(&admin, "valet:admin").await;
    let actor = format!("client:{}", admin.client_id);

    let made = post(
        &server,
        "/admin/v1/clients",
        &bearer,
        json!({
            "name": "Nightly batch",
            "grant_types": ["client_credentials"],
            "scope": "read write",
        }),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.describe());
    let made = made.json();
    let batch = ClientCreds {
        client_id: made["client_id"].as_str().expect("client_id").to_owned(),
        client_secret: made["client_secret"].as_str().map(str::to_owned),
        ..admin.clone()
    };
    let refused = post(
        &server,
        "/admin/v1/clients",
        &bearer,
        json!({ "name": "web", "redirect_uris": ["http://app.example/cb"], "scope": "openid" }),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.describe());
    assert!(
        refused.json()["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("loopback")),
        "{}",
        refused.describe()
    );

    let path = format!("/admin/v1/clients/{}", batch.client_id);
    let changed = server
        .call(
            Method::PATCH,
            &path,
            Some(&bearer),
            Some(json!({ "name": "Nightly batch v2", "scope": "read" })),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.describe());
    let shown = get(&server, &path, &bearer).await;
    assert_eq!(shown["name"], "Nightly batch v2");
    assert_eq!(shown["scope"], "read");
    assert_eq!(shown["status"], "active");

    // Paging: every client once, in order, two at a time.
    for n in 0..3 {
        server
            .create_client(
                &ClientSpec::confidential(&format!("filler {n}"))
                    .grant("client_credentials")
                    .scopes("read"),
            )
            .await;
    }
    let mut seen = Vec::new();
    let mut next = String::new();
    loop {
        let page = get(
            &server,
            &format!("/admin/v1/clients?limit=2{next}"),
            &bearer,
        )
        .await;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|c| c["client_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => next = format!("&after={cursor}"),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "by id, none twice");
    assert_eq!(seen.len(), 5);
    let bad = server
        .call(
            Method::GET,
            "/admin/v1/clients?limit=0",
            Some(&bearer),
            None,
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.describe());
    let bad = server
        .call(
            Method::GET,
            "/admin/v1/clients?after=!!",
            Some(&bearer),
            None,
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.describe());

    // Rotation with a 3 s overlap: both secrets work, then only the new one.
    let old_secret = batch.secret().to_owned();
    let rotated = post(
        &server,
        &format!("{path}/rotate-secret"),
        &bearer,
        json!({ "overlap_seconds": 3 }),
    )
    .await;
    assert_eq!(rotated.status, 200, "{}", rotated.describe());
    let batch = ClientCreds {
        client_secret: rotated.json()["client_secret"].as_str().map(str::to_owned),
        ..batch
    };
    let old = ClientCreds {
        client_secret: Some(old_secret),
        ..batch.clone()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.client_credentials(&batch, None).await.status != 200 {
        assert!(Instant::now() < deadline, "the new secret never worked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.client_credentials(&old, None).await.status, 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.client_credentials(&old, None).await.status != 401 {
        assert!(
            Instant::now() < deadline,
            "the old secret outlived its deadline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.client_credentials(&batch, None).await.status, 200);

    // Disabled: a resource service's SDK refuses its token, told over NATS.
    let validator = Validator::connect(ValidatorConfig::new(nats.url()))
        .await
        .expect("validator");
    validator
        .wait_ready(Some(Duration::from_secs(30)))
        .await
        .expect("SDK ready");
    let issued = server.access_token(&batch, "read").await;
    until_valid_locally(&validator, &issued, Duration::from_secs(15)).await;
    let disabled = post(&server, &format!("{path}/disable"), &bearer, json!({})).await;
    assert_eq!(disabled.status, 200, "{}", disabled.describe());
    assert!(disabled.json()["revoked_grants"].as_u64() >= Some(1));
    until_revoked_locally(&validator, &issued, Duration::from_secs(15)).await;
    let listed = get(&server, "/admin/v1/clients?status=disabled", &bearer).await;
    assert_eq!(listed["items"][0]["client_id"], batch.client_id.as_str());

    // The caller cannot cut itself off.
    let own = post(
        &server,
        &format!("/admin/v1/clients/{}/disable", admin.client_id),
        &bearer,
        json!({}),
    )
    .await;
    assert_eq!(own.status, 409, "{}", own.describe());

    let deleted = server
        .call(Method::DELETE, &path, Some(&bearer), None)
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.describe());
    assert_eq!(get(&server, &path, &bearer).await["status"], "deleted");
    let again = post(&server, &format!("{path}/enable"), &bearer, json!({})).await;
    assert_eq!(again.status, 400, "{}", again.describe());
    let listed = get(&server, "/admin/v1/clients?status=deleted", &bearer).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));

    for event_type in [
        "ClientRegistered",
        "ClientUpdated",
        "ClientSecretRotated",
        "ClientDisabled",
        "ClientDeleted",
    ] {
        let events = server.events_of(event_type).await;
        let ours = events
            .iter()
            .find(|e| e.stream_id == format!("client-{}", batch.client_id))
            .unwrap_or_else(|| panic!("no {event_type}"));
        assert_eq!(ours.metadata["actor"], actor.as_str(), "{event_type}");
    }
    let audit = get(
        &server,
        &format!(
            "/admin/v1/audit/log?client_id={}&limit=500",
            batch.client_id
        ),
        &bearer,
    )
    .await;
    let types: Vec<_> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(types.contains(&"ClientDeleted".to_owned()), "{types:?}");
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e.to_string().contains(batch.secret())),
        "no secret in the audit answers"
    );
    server.stop().await;
}

/// Users and grants over the API: register, show, change the profile and password,
/// list by prefix; grants listed per client and per user a page at a time, revoked one
/// by one; the audit answers for a token and a moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_grants_and_audit_over_the_admin_api() {
    let mut fx = Fixture::new().await;
    let server = &fx.server;
    let admin = admin_client(server).await;
    let bearer = server.access_token(&admin, "valet:admin").await;

    let made = post(
        server,
        "/admin/v1/users",
        &bearer,
        json!({ "username": "bob", "password": "another long passphrase" }),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.describe());
    let twice = post(
        server,
        "/admin/v1/users",
        &bearer,
        json!({ "username": "bob", "password": "x" }),
    )
    .await;
    assert_eq!(twice.status, 409, "{}", twice.describe());
    assert_eq!(twice.json()["error"], "conflict");
    let patched = server.call(Method::PATCH,
        "/admin/v1/users/bob",
        Some(&bearer),
        Some(json!({ "name": "Bob Builder", "email": "bob@example.com", "email_verified": true })),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.describe());
    let bob = get(server, "/admin/v1/users/bob", &bearer).await;
    assert_eq!(bob["name"], "Bob Builder");
    assert_eq!(bob["email_verified"], true);
    let prefixed = get(server, "/admin/v1/users?username_prefix=bo", &bearer).await;
    let names: Vec<_> = prefixed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].clone())
        .collect();
    assert_eq!(names, vec![json!("bob")]);
    // PostgreSQL stores no NUL: refused up front, in a query and in a body.
    let nul = server
        .call(
            Method::GET,
            "/admin/v1/users?username_prefix=b%00",
            Some(&bearer),
            None,
        )
        .await;
    assert_eq!(nul.status, 400, "{}", nul.describe());
    let nul = server
        .call(
            Method::PATCH,
            "/admin/v1/users/bob",
            Some(&bearer),
            Some(json!({ "name": "Bob\0" })),
        )
        .await;
    assert_eq!(nul.status, 400, "{}", nul.describe());
    let password = server
        .call(
            Method::PUT,
            "/admin/v1/users/bob/password",
            Some(&bearer),
            Some(json!({ "password": "a third passphrase" })),
        )
        .await;
    assert_eq!(password.status, 200, "{}", password.describe());
    let wrong = server
        .call(
            Method::PUT,
            "/admin/v1/users/nobody/password",
            Some(&bearer),
            Some(json!({ "password": "p" })),
        )
        .await;
    assert_eq!(wrong.status, 404, "{}", wrong.describe());

    // Three grants of the user to the app, through the code flow.
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(fx.tokens(Some("read")).await);
    }
    let server = &fx.server;
    let username = fx.user.username.clone();
    let mut ids = Vec::new();
    let mut next = String::new();
    loop {
        let page = get(
            server,
            &format!("/admin/v1/grants?username={username}&limit=2{next}"),
            &bearer,
        )
        .await;
        for g in page["items"].as_array().unwrap() {
            assert_eq!(g["client_id"], fx.client.client_id.as_str());
            assert_eq!(g["status"], "active");
            ids.push(g["grant_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => next = format!("&after={cursor}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 3, "{ids:?}");
    let per_client = get(
        server,
        &format!("/admin/v1/grants?client_id={}", fx.client.client_id),
        &bearer,
    )
    .await;
    assert_eq!(per_client["items"].as_array().map(Vec::len), Some(3));

    let first = &ids[0];
    let revoked = post(
        server,
        &format!("/admin/v1/grants/{first}/revoke"),
        &bearer,
        json!({}),
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.describe());
    assert_eq!(revoked.json()["revoked"], true);
    let again = post(
        server,
        &format!("/admin/v1/grants/{first}/revoke"),
        &bearer,
        json!({}),
    )
    .await;
    assert_eq!(again.json()["revoked"], false);
    let shown = get(server, &format!("/admin/v1/grants/{first}"), &bearer).await;
    assert_eq!(shown["status"], "revoked");
    assert_eq!(shown["revoked_reason"], "admin");
    assert!(fx.eventually_inactive(&tokens[0].access_token).await);
    let active = get(
        server,
        &format!("/admin/v1/grants?username={username}&status=active"),
        &bearer,
    )
    .await;
    assert_eq!(active["items"].as_array().map(Vec::len), Some(2));
    let missing = post(
        server,
        "/admin/v1/grants/not-a-grant/revoke",
        &bearer,
        json!({}),
    )
    .await;
    assert_eq!(missing.status, 404, "{}", missing.describe());

    // The caller's own grant is refused: it would lock itself out.
    let own = get(
        server,
        &format!("/admin/v1/grants?client_id={}", admin.client_id),
        &bearer,
    )
    .await;
    let own_id = own["items"][0]["grant_id"].as_str().unwrap().to_owned();
    let refused = post(
        server,
        &format!("/admin/v1/grants/{own_id}/revoke"),
        &bearer,
        json!({}),
    )
    .await;
    assert_eq!(refused.status, 409, "{}", refused.describe());

    // The story of the revoked token, asked by value and by digest.
    let story = post(
        server,
        "/admin/v1/audit/token",
        &bearer,
        json!({ "token": tokens[0].access_token }),
    )
    .await;
    assert_eq!(story.status, 200, "{}", story.describe());
    let story = story.json();
    assert_eq!(story["grant_id"], first.as_str());
    assert_eq!(story["kind"], "access_token");
    assert_eq!(story["revocation"]["reason"], "admin");
    assert_eq!(
        story["revocation"]["event"]["actor"],
        format!("client:{}", admin.client_id)
    );
    assert!(!story.to_string().contains(&tokens[0].access_token));
    let by_digest = post(
        server,
        "/admin/v1/audit/token",
        &bearer,
        json!({ "token_sha256": sha256_hex(&tokens[1].access_token) }),
    )
    .await;
    assert_eq!(by_digest.json()["grant_id"], ids[1].as_str());
    assert!(by_digest.json()["revocation"].is_null());

    // At this moment: the two standing grants of the user.
    let now = valet_wire::rfc3339_from_unix_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    );
    let at = get(
        server,
        &format!("/admin/v1/audit/at?time={now}&username={username}"),
        &bearer,
    )
    .await;
    let at_ids: Vec<_> = at["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["grant_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(at_ids, ids[1..].to_vec());

    let keys = get(server, "/admin/v1/keys", &bearer).await;
    let active_es256 = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["alg"] == "ES256" && k["stage"] == "active")
        .expect("an active ES256 key")["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    // A rotation publishes a successor; then the old key can be retired.
    let early = post(
        server,
        &format!("/admin/v1/keys/{active_es256}/retire"),
        &bearer,
        json!({}),
    )
    .await;
    assert_eq!(early.status, 409, "no successor yet: {}", early.describe());
    let rotated = post(
        server,
        "/admin/v1/keys/rotate",
        &bearer,
        json!({ "algorithm": "ES256" }),
    )
    .await;
    assert_eq!(rotated.status, 201, "{}", rotated.describe());
    assert_eq!(rotated.json()["stage"], "published");
    let retired = post(
        server,
        &format!("/admin/v1/keys/{active_es256}/retire"),
        &bearer,
        json!({}),
    )
    .await;
    assert_eq!(retired.status, 200, "{}", retired.describe());
    assert_eq!(retired.json()["stage"], "retired");
    let unknown = post(
        server,
        "/admin/v1/keys/01939d2e-0000-7000-8000-000000000000/retire",
        &bearer,
        json!({}),
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.describe());
    let bad = post(
        server,
        "/admin/v1/keys/rotate",
        &bearer,
        json!({ "algorithm": "none" }),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.describe());
    let actor = format!("client:{}", admin.client_id);
    let events = server.events().await;
    let by_caller: Vec<_> = events
        .iter()
        .filter(|e| e.stream_id == "signing-keys" && e.metadata["actor"] == actor.as_str())
        .map(|e| e.event_type.as_str())
        .collect();
    assert!(
        by_caller.contains(&"SigningKeyPublished") && by_caller.contains(&"SigningKeyRetired"),
        "{by_caller:?}"
    );
    fx.stop().await;
}
