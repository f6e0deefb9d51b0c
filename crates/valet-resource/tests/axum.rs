//! The axum extractor over a real validator: RFC 6750 statuses, challenges and bodies.

mod common;

use std::collections::HashMap;

use axum::extract::FromRef;
use axum::routing::get;
use axum::{Json, Router};
use common::*;
use valet_resource::{Bearer, BearerRejection, Validator, ValidatorConfig};

#[derive(Clone)]
struct AppState {
    validator: Validator,
}

impl FromRef<AppState> for Validator {
    fn from_ref(state: &AppState) -> Validator {
        state.validator.clone()
    }
}

async fn designs(auth: Bearer) -> Result<Json<serde_json::Value>, BearerRejection> {
    auth.require_scope("designs:read")?;
    Ok(Json(serde_json::json!({
        "owner": auth.subject(),
        "sub": auth.sub(),
        "client_id": auth.client_id(),
    })))
}

async fn whoami(auth: Option<Bearer>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "subject": auth.as_ref().and_then(|a| a.subject()) }))
}

async fn serve(validator: Validator) -> String {
    let app = Router::new()
        .route("/designs", get(designs))
        .route("/whoami", get(whoami))
        .with_state(AppState { validator });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

struct Answer {
    status: u16,
    challenge: Option<String>,
    body: serde_json::Value,
}

async fn get_with(url: &str, authorization: Option<&str>) -> Answer {
    let client = reqwest::Client::new();
    let mut request = client.get(url);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.bytes().await.unwrap();
    assert!(bytes.len() < 256, "small bodies");
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let body = serde_json::from_slice(&bytes).unwrap();
    Answer {
        status,
        challenge,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extractor_answers_rfc_6750() {
    let nats = TestNats::start().await;
    let js = nats.with_stream().await;
    let exp = unix_now() + 3600;
    publish(
        &js,
        &issued(1, "reader", "grant-1", "designs:read profile", exp),
    )
    .await;
    publish(&js, &issued(2, "profile-only", "grant-2", "profile", exp)).await;
    publish(&js, &issued(3, "revoked", "grant-3", "designs:read", exp)).await;
    publish(&js, &revoked(4, "revoked", "grant-3")).await;
    let stub = Introspection::start(HashMap::new()).await;
    let validator = Validator::connect(config(&nats, &stub)).await.unwrap();
    validator.wait_ready(Some(WAIT)).await.unwrap();
    let base = serve(validator).await;
    let designs = format!("{base}/designs");

    let ok = get_with(&designs, Some("Bearer reader")).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body["owner"], "alice");
    assert_eq!(ok.body["sub"], "0192f4d2-0000-7000-8000-0000000a11ce");
    assert_eq!(ok.body["client_id"], "printer");

    let realm_only = Some("Bearer realm=\"valet\"".to_owned());
    for authorization in [None, Some("Basic dXNlcjpwYXNz")] {
        let missing = get_with(&designs, authorization).await;
        assert_eq!(missing.status, 401, "{authorization:?}");
        assert_eq!(
            missing.challenge, realm_only,
            "no error code without credentials"
        );
    }

    let invalid = Some("Bearer realm=\"valet\", error=\"invalid_token\"".to_owned());
    for token in ["revoked", "never-issued"] {
        let answer = get_with(&designs, Some(&format!("Bearer {token}"))).await;
        assert_eq!(answer.status, 401, "{token}");
        assert_eq!(answer.challenge, invalid, "{token}");
        assert_eq!(answer.body["error"], "invalid_token");
    }
    assert_eq!(
        stub.calls(),
        1,
        "only the never-issued token was introspected"
    );

    let scope = get_with(&designs, Some("Bearer profile-only")).await;
    assert_eq!(scope.status, 403);
    assert_eq!(
        scope.challenge.as_deref(),
        Some("Bearer realm=\"valet\", error=\"insufficient_scope\", scope=\"designs:read\"")
    );
    assert_eq!(scope.body["error"], "insufficient_scope");
    assert_eq!(scope.body["scope"], "designs:read");

    let malformed = get_with(&designs, Some("Bearer ")).await;
    assert_eq!(malformed.status, 400);
    assert_eq!(
        malformed.challenge.as_deref(),
        Some("Bearer realm=\"valet\", error=\"invalid_request\"")
    );

    // Option<Bearer>: absent is fine, a bad token is still refused.
    let anonymous = get_with(&format!("{base}/whoami"), None).await;
    assert_eq!(
        (anonymous.status, anonymous.body["subject"].clone()),
        (200, serde_json::Value::Null)
    );
    let known = get_with(&format!("{base}/whoami"), Some("Bearer profile-only")).await;
    assert_eq!(
        (known.status, known.body["subject"].clone()),
        (200, "alice".into())
    );
    assert_eq!(
        get_with(&format!("{base}/whoami"), Some("Bearer revoked"))
            .await
            .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_validator_answers_503() {
    let nats = TestNats::start().await;
    let js = nats.with_stream().await;
    publish(
        &js,
        &issued(1, "reader", "grant-1", "designs:read", unix_now() + 3600),
    )
    .await;
    send(
        &js,
        "valet.v1.token.revoked.printer".into(),
        br#"{"schema_version":99}"#.to_vec(),
        "x",
    )
    .await
    .await
    .unwrap();
    let validator = Validator::connect(ValidatorConfig::new(nats.url()))
        .await
        .unwrap();
    assert!(validator.wait_ready(Some(WAIT)).await.is_err());
    let base = serve(validator).await;
    for authorization in ["Bearer reader", "Bearer anything"] {
        let answer = get_with(&format!("{base}/designs"), Some(authorization)).await;
        assert_eq!(answer.status, 503, "{authorization}");
        assert_eq!(answer.body["error"], "temporarily_unavailable");
    }
}
