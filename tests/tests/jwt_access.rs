//! JWT access tokens (RFC 9068) at a resource service: the SDK verifies them offline
//! with the keys the stream announced, and revocations still reach it over NATS. Against
//! the real server, NATS and SDK.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use valet_resource::{
    IntrospectionConfig, JwtConfig, JwtRejection, Rejection, Source, TokenInfo, Validator,
    ValidatorConfig,
};
use valet_tests::nats::{NatsProxy, TestNats};
use valet_tests::server::{ClientCreds, ClientSpec, TestServer, Tokens};

const AUDIENCE: &str = "https://designs.example";

/// The SDK of the `designs` service: JWTs for [`AUDIENCE`] from `server`, and the
/// introspection fallback (to show it is not used).
async fn sdk(server: &TestServer, nats: &TestNats, rs: &ClientCreds, jwt: JwtConfig) -> Validator {
    let introspection = IntrospectionConfig::new(
        format!("{}/introspect", server.base_url()),
        &rs.client_id,
        rs.client_secret.as_deref().expect("a confidential client"),
    );
    let sdk = Validator::connect(
        ValidatorConfig::new(nats.url())
            .with_introspection(introspection)
            .with_jwt(jwt),
    )
    .await
    .expect("the SDK starts");
    sdk.wait_ready(Some(Duration::from_secs(15)))
        .await
        .expect("ready");
    sdk
}

/// `valet serve` on `nats_url`, JWT access tokens for [`AUDIENCE`].
async fn jwt_server(nats_url: &str, extra: &[(&str, &str)]) -> TestServer {
    let mut env = vec![
        ("VALET_NATS_URL", nats_url),
        ("VALET_ACCESS_TOKEN_AUDIENCE", AUDIENCE),
    ];
    env.extend_from_slice(extra);
    TestServer::start_with(&env).await
}

/// A client_credentials client (scope `designs:read`) with JWT access tokens signed `alg`.
async fn printer(server: &TestServer, alg: &str) -> ClientCreds {
    server
        .create_client(
            &ClientSpec::confidential("printer")
                .grant("client_credentials")
                .scopes("designs:read")
                .jwt_access_tokens(alg),
        )
        .await
}

/// Waits until the first start's six key messages are on the stream (which appears once
/// the relay leads).
async fn until_keys_on_stream(nats: &TestNats) {
    let start = Instant::now();
    while nats
        .stream_state(valet_wire::STREAM)
        .await
        .is_none_or(|(messages, _)| messages < 6)
    {
        assert!(start.elapsed() < Duration::from_secs(10), "no key events");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn jwt_config(server: &TestServer) -> JwtConfig {
    JwtConfig::new(server.base_url(), AUDIENCE)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rs_client(server: &TestServer) -> ClientCreds {
    server
        .create_client(
            &ClientSpec::confidential("designs")
                .grant("client_credentials")
                .scopes("introspect"),
        )
        .await
}

/// A JWT issued while the SDK was offline (and before its `token.issued` reached the
/// stream: the server's relay is cut off from NATS) is accepted by the SDK as soon as it
/// is ready, with no introspection call; once revoked, the revocation reaches the SDK
/// and the token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_issued_while_the_sdk_was_offline_is_accepted_at_once_and_refused_once_revoked() {
    let nats = TestNats::start().await;
    let proxy = NatsProxy::start(&nats).await;
    let server = jwt_server(&proxy.url(), &[]).await;
    let rs = rs_client(&server).await;
    let printer = printer(&server, "ES256").await;
    until_keys_on_stream(&nats).await;
    proxy.cut();
    let jwt = Tokens::from_resp(&server.client_credentials(&printer, None).await).access_token;

    let sdk = sdk(&server, &nats, &rs, jwt_config(&server)).await;
    let info = sdk.authenticate(&jwt).await.expect("accepted offline");
    assert_eq!(info.source, Source::Jwt);
    assert_eq!(info.sub.as_deref(), Some(printer.client_id.as_str()));
    assert!(info.has_scope("designs:read"));
    assert_eq!(sdk.status().introspection_calls, 0, "no introspection");

    // The relay catches up: the stream's knowledge takes over, and so does a revocation.
    proxy.restore();
    until("the token.issued reaches the SDK", || {
        sdk.check(&jwt)
            .is_ok_and(|i: TokenInfo| i.source == Source::Local)
    })
    .await;
    let resp = server.revoke(&printer.basic(), &jwt, None).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    until("the revocation reaches the SDK", || {
        sdk.check(&jwt) == Err(Rejection::Revoked)
    })
    .await;
    assert_eq!(sdk.authenticate(&jwt).await, Err(Rejection::Revoked));
    assert_eq!(sdk.status().introspection_calls, 0);
    server.stop().await;
}

/// A refresh token presented twice on a grant of JWT access tokens revokes the grant,
/// and with it every JWT it issued, at the SDK too (though each verified and was
/// cached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_reuse_on_a_jwt_grant_revokes_every_jwt_of_the_grant_at_the_sdk() {
    let nats = TestNats::start().await;
    let server = jwt_server(&nats.url(), &[]).await;
    let rs = rs_client(&server).await;
    let app = server
        .create_client(
            &ClientSpec::confidential("Printshop")
                .redirect(valet_tests::server::APP_CB)
                .scopes("designs:read")
                .jwt_access_tokens("EdDSA"),
        )
        .await;
    let user = server.create_user("alice", "a long passphrase").await;
    let sdk = sdk(&server, &nats, &rs, jwt_config(&server)).await;
    let mut browser = server.browser();
    let first = server
        .user_tokens(&mut browser, &user, &app, Some("designs:read"))
        .await;
    let old_refresh = first.refresh_token.clone().expect("a refresh token");
    let second = Tokens::from_resp(&server.refresh(&app, &old_refresh, None).await);
    let jwts = [&first.access_token, &second.access_token];
    for jwt in jwts {
        let info = sdk.check(jwt).expect("verifies");
        assert_eq!(info.client_id, app.client_id);
    }

    let reuse = server.refresh(&app, &old_refresh, None).await;
    assert_eq!(reuse.status, 400, "{}", reuse.describe());
    until("every JWT of the grant refused", || {
        jwts.iter()
            .all(|jwt| sdk.check(jwt) == Err(Rejection::Revoked))
    })
    .await;
    server.stop().await;
}

/// `header.payload.signature` with the header replaced and the signature kept.
fn with_header(token: &str, header: &Value) -> String {
    let rest = token.split_once('.').expect("a JWS").1;
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()))
}

fn header_of(token: &str) -> Value {
    let header = token.split('.').next().expect("a header");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url")).expect("JSON")
}

/// Refused by the SDK: a JWT naming an unknown `kid`, with `alg` changed to `none` or to
/// HS256 (signed with the public key as the secret), meant for another audience or
/// issuer, or expired. (A key used after its retirement: the SDK's unit tests, as only
/// Valet holds its keys.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_and_expired_jwts_are_refused() {
    let nats = TestNats::start().await;
    let server = jwt_server(&nats.url(), &[("VALET_ACCESS_TOKEN_TTL", "2")]).await;
    let rs = rs_client(&server).await;
    let printer = printer(&server, "RS256").await;
    let mut strict = jwt_config(&server);
    strict.leeway = Duration::ZERO;
    let sdk = sdk(&server, &nats, &rs, strict.clone()).await;
    let jwt = Tokens::from_resp(&server.client_credentials(&printer, None).await).access_token;
    sdk.check(&jwt).expect("the genuine token verifies");

    let header = header_of(&jwt);
    let mut unknown_kid = header.clone();
    unknown_kid["kid"] = json!("00000000-0000-0000-0000-000000000000");
    let mut none = header.clone();
    none["alg"] = json!("none");
    let alg_none = format!(
        "{}.",
        with_header(&jwt, &none).rsplit_once('.').expect("parts").0
    );
    let kid = header["kid"].as_str().expect("kid");
    let jwks = server.get("/jwks.json").await.json();
    let public = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("the key")
        .to_string();
    let hs256 = {
        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(jwt.split('.').nth(1).expect("claims"))
                .expect("base64url"),
        )
        .expect("JSON");
        let mut forged = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        forged.typ = Some("at+jwt".into());
        forged.kid = Some(kid.to_owned());
        let secret = jsonwebtoken::EncodingKey::from_secret(public.as_bytes());
        jsonwebtoken::encode(&forged, &claims, &secret).expect("signed")
    };
    let cases = [
        (
            "an unknown kid",
            with_header(&jwt, &unknown_kid),
            JwtRejection::UnknownKey(unknown_kid["kid"].as_str().map(str::to_owned)),
        ),
        ("alg none", alg_none, JwtRejection::Malformed),
        (
            "alg HS256",
            hs256,
            JwtRejection::WrongAlgorithm("HS256".into()),
        ),
    ];
    for (what, token, rejection) in cases {
        assert_eq!(
            sdk.check(&token),
            Err(Rejection::InvalidJwt(rejection)),
            "{what}"
        );
        assert_eq!(
            sdk.authenticate(&token).await,
            sdk.check(&token),
            "{what}: no introspection rescues it"
        );
    }

    // Services configured for another audience, or another issuer.
    let mut other_audience = strict.clone();
    other_audience.audience = "https://billing.example".into();
    other_audience.jwks_uri = None;
    let billing = sdk_with(&nats, other_audience).await;
    assert_eq!(
        billing.check(&jwt),
        Err(Rejection::InvalidJwt(JwtRejection::WrongAudience))
    );
    let mut other_issuer = strict;
    other_issuer.issuer = "https://valet.other.example".into();
    other_issuer.jwks_uri = None;
    let foreign = sdk_with(&nats, other_issuer).await;
    assert_eq!(
        foreign.check(&jwt),
        Err(Rejection::InvalidJwt(JwtRejection::WrongIssuer))
    );

    // Expired: refused locally, signature or not.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        matches!(
            sdk.check(&jwt),
            Err(Rejection::Expired | Rejection::InvalidJwt(JwtRejection::Expired))
        ),
        "{:?}",
        sdk.check(&jwt)
    );
    assert_eq!(sdk.status().introspection_calls, 0);
    server.stop().await;
}

/// An SDK without the introspection fallback.
async fn sdk_with(nats: &TestNats, jwt: JwtConfig) -> Validator {
    let sdk = Validator::connect(ValidatorConfig::new(nats.url()).with_jwt(jwt))
        .await
        .expect("the SDK starts");
    sdk.wait_ready(Some(Duration::from_secs(15)))
        .await
        .expect("ready");
    sdk
}

/// Keys announced longer ago than the stream keeps messages are not in it: an SDK given
/// `jwks_uri` reads them there at start; one without cannot verify the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_gone_from_the_stream_are_read_from_jwks_uri_at_start() {
    let nats = TestNats::start().await;
    let server = jwt_server(&nats.url(), &[]).await;
    let printer = printer(&server, "EdDSA").await;
    until_keys_on_stream(&nats).await;
    // The key messages expire from the stream (purged here).
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    js.get_stream(valet_wire::STREAM)
        .await
        .expect("the stream")
        .purge()
        .filter("valet.v1.key.>")
        .await
        .expect("purged");
    let jwt = Tokens::from_resp(&server.client_credentials(&printer, None).await).access_token;

    let mut stream_only = jwt_config(&server);
    stream_only.jwks_uri = None;
    let without = sdk_with(&nats, stream_only).await;
    until("the token.issued reaches the SDK", || {
        without.check(&jwt) != Err(Rejection::Unknown)
    })
    .await;
    assert!(without.signing_keys().is_empty(), "no key on the stream");
    assert!(
        matches!(
            without.check(&jwt),
            Err(Rejection::InvalidJwt(JwtRejection::UnknownKey(_)))
        ),
        "{:?}",
        without.check(&jwt)
    );

    // The default: the issuer's /jwks.json.
    let with = sdk_with(&nats, jwt_config(&server)).await;
    until("the JWKS read", || with.check(&jwt).is_ok()).await;
    assert_eq!(with.signing_keys().len(), 3, "{:?}", with.signing_keys());
    server.stop().await;
}
