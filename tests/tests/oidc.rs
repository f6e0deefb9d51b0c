//! OpenID Connect and JWT behaviours of ../shared/OIDC.md against the real server, one
//! test per item, named after it (o01…).

use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::Value;
use valet_domain::signing_key::KeyId;
use valet_resource::valet_wire::{EventType, TokenEvent, STREAM};
use valet_resource::{Validator, ValidatorConfig};
use valet_tests::nats::TestNats;
use valet_tests::server::{run_valet, ClientSpec, TestServer, TEST_KEK};

/// The stream's messages once it holds at least `count`.
async fn until_stream_holds(nats: &TestNats, count: usize) -> Vec<TokenEvent> {
    let start = Instant::now();
    loop {
        let events: Vec<TokenEvent> = nats
            .stream_messages(STREAM)
            .await
            .iter()
            .map(|m| TokenEvent::from_json(&m.payload).expect("a token event"))
            .collect();
        if events.len() >= count {
            return events;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the stream holds {} messages, not {count}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// o17: client_credentials tokens carry `sub` = the client id in introspection and in
/// `token.issued` events (RFC 9068 §2.2; revocations name the token, not its subject),
/// and the grant issues no id_token. (JWT access tokens come
/// with their own issue.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o17_client_credentials_tokens_carry_the_client_id_as_sub() {
    let nats = TestNats::start().await;
    let server = TestServer::start_with(&[("VALET_NATS_URL", &nats.url())]).await;
    let service = ClientSpec::confidential("printer")
        .grant("client_credentials")
        .scopes("read");
    let printer = server.create_client(&service).await;
    let designs = server
        .create_client(
            &ClientSpec::confidential("designs")
                .grant("client_credentials")
                .scopes("read"),
        )
        .await;

    let resp = server.client_credentials(&printer, None).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let body = resp.json();
    assert!(body.get("id_token").is_none(), "{body}");
    let token = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();

    let info = server.introspection(&designs, &token).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["sub"], printer.client_id.as_str(), "{info}");
    assert!(info.get("username").is_none(), "no user: {info}");

    let resp = server.revoke(&printer.basic(), &token, None).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let events = until_stream_holds(&nats, 2).await;
    let kinds: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
    assert_eq!(kinds, [EventType::TokenIssued, EventType::TokenRevoked]);
    let issued = &events[0];
    assert_eq!(
        issued.sub.as_deref(),
        Some(printer.client_id.as_str()),
        "{issued:?}"
    );
    assert_eq!(issued.username, None, "{issued:?}");

    // The SDK reports the client as `sub`, and no user.
    let validator = Validator::connect(ValidatorConfig::new(nats.url()))
        .await
        .expect("connect");
    validator
        .wait_ready(Some(Duration::from_secs(30)))
        .await
        .expect("ready");
    let resp = server.client_credentials(&printer, None).await;
    let fresh = resp.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let start = Instant::now();
    let local = loop {
        if let Ok(info) = validator.check(&fresh) {
            break info;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "never seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(local.sub.as_deref(), Some(printer.client_id.as_str()));
    assert_eq!(local.user_id(), None);
    assert_eq!(local.subject(), None);
    server.stop().await;
}

/// Private JWK members (RFC 7518 §6.2.2, §6.3.2; RFC 8037; symmetric `k`).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

async fn jwks(server: &TestServer) -> Vec<Value> {
    let resp = server.get("/jwks.json").await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    resp.json()["keys"].as_array().expect("keys").clone()
}

async fn keys_list(server: &TestServer) -> Vec<Value> {
    let out = server.cli(&["keys", "list", "--json"], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("keys list --json prints JSON")
        .as_array()
        .expect("an array")
        .clone()
}

fn kids(keys: &[Value]) -> Vec<String> {
    keys.iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

/// o02: `jwks_uri` serves public keys only, each with `kid`, `alg` and `use = "sig"`,
/// with a `Cache-Control` max-age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o02_jwks_serves_public_keys_only_with_kid_alg_use_and_a_max_age() {
    let server = TestServer::start().await;
    let metadata = server
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    let issuer = metadata["issuer"].as_str().expect("issuer");
    assert_eq!(
        metadata["jwks_uri"].as_str(),
        Some(format!("{issuer}/jwks.json").as_str())
    );

    let resp = server.get("/jwks.json").await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let cache = resp.header("cache-control").expect("Cache-Control");
    assert!(cache.contains("max-age=300"), "{cache}");
    assert!(resp
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
    let keys = resp.json()["keys"].as_array().expect("keys").clone();
    let mut algs: Vec<&str> = keys.iter().filter_map(|k| k["alg"].as_str()).collect();
    algs.sort_unstable();
    assert_eq!(
        algs,
        ["ES256", "EdDSA", "RS256"],
        "one key per algorithm: {keys:?}"
    );
    for key in &keys {
        let members = key.as_object().expect("a JWK is an object");
        for private in PRIVATE_MEMBERS {
            assert!(!members.contains_key(private), "{private} in {key}");
        }
        assert_eq!(key["use"], "sig", "{key}");
        assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()), "{key}");
        let expected_kty = match key["alg"].as_str() {
            Some("RS256") => "RSA",
            Some("ES256") => "EC",
            _ => "OKP",
        };
        assert_eq!(key["kty"], expected_kty, "{key}");
    }
    let rsa = keys
        .iter()
        .find(|k| k["alg"] == "RS256")
        .expect("an RS256 key");
    let n = URL_SAFE_NO_PAD
        .decode(rsa["n"].as_str().expect("n"))
        .expect("n is base64url");
    assert_eq!(n.len(), 256, "a 2048-bit modulus");
    server.stop().await;
}

/// o03: signing keys have a lifecycle recorded as events (generated → published → active
/// → retired); a rotated-in key is in the JWKS before it signs and the key it replaces
/// stays there; private keys stay out of the log, sealed under the key-encryption key,
/// and a server given another key-encryption key refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o03_signing_keys_have_a_lifecycle_in_the_log_and_private_keys_stay_sealed() {
    const LEAD: &str = "3";
    let server = TestServer::start_with(&[("VALET_KEY_PUBLISH_LEAD", LEAD)]).await;
    let listed = keys_list(&server).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed.iter().all(|k| k["stage"] == "active"), "{listed:?}");
    let old_es256 = listed
        .iter()
        .find(|k| k["alg"] == "ES256")
        .expect("an ES256 key")["kid"]
        .as_str()
        .expect("kid")
        .to_owned();

    let out = server
        .cli(
            &["keys", "rotate", "--algorithm", "ES256", "--json"],
            Some(""),
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(rotated["stage"], "published", "{rotated}");
    let new_kid = rotated["kid"].as_str().expect("kid").to_owned();

    // In the JWKS while it does not sign yet.
    let start = Instant::now();
    while !kids(&jwks(&server).await).contains(&new_kid) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the new key is not published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stage_of = |keys: &[Value], kid: &str| {
        keys.iter()
            .find(|k| k["kid"] == kid)
            .map(|k| k["stage"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(
        stage_of(&keys_list(&server).await, &new_kid).as_deref(),
        Some("published"),
        "published before it signs"
    );

    // Then it signs, and the old key is retired but stays published.
    let start = Instant::now();
    let listed = loop {
        let listed = keys_list(&server).await;
        if stage_of(&listed, &new_kid).as_deref() == Some("active") {
            break listed;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the new key never signs: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stage_of(&listed, &old_es256).as_deref(), Some("retired"));
    assert!(
        kids(&jwks(&server).await).contains(&old_es256),
        "the retired key stays published"
    );

    // The active key without a published successor cannot be retired.
    let out = server.cli(&["keys", "retire", &new_kid], None).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rotate first"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // The log holds the lifecycle, with public members only.
    let rows = server
        .pg()
        .await
        .query(
            "SELECT event_type, payload::text FROM events WHERE stream_id = 'signing-keys' \
             ORDER BY position",
            &[],
        )
        .await
        .expect("events");
    let types: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    for t in [
        "SigningKeyGenerated",
        "SigningKeyPublished",
        "SigningKeyActivated",
        "SigningKeyRetired",
    ] {
        assert!(types.iter().any(|x| x == t), "{t} not in {types:?}");
    }
    for row in &rows {
        let payload: Value = serde_json::from_str(row.get::<_, &str>(1)).expect("json");
        if let Some(public) = payload.get("public") {
            for private in PRIVATE_MEMBERS {
                assert!(
                    public.get(private).is_none(),
                    "{private} in the log: {payload}"
                );
            }
        }
    }

    // Private keys: sealed rows that open with the KEK only, and whose plaintext is
    // nowhere in the log or the server's output.
    let kek = valet_app::keys::Kek::parse(TEST_KEK).expect("the test KEK");
    let sealed = server
        .pg()
        .await
        .query("SELECT key_id::text, sealed FROM signing_key_material", &[])
        .await
        .expect("sealed keys");
    assert!(sealed.len() >= 4, "{} sealed keys", sealed.len());
    let log = server.log();
    let all_payloads: String = rows.iter().map(|r| r.get::<_, String>(1)).collect();
    for row in &sealed {
        let kid = KeyId::parse(row.get::<_, &str>(0)).expect("kid");
        let bytes: Vec<u8> = row.get(1);
        let plain = kek.open(kid, &bytes).expect("opens with the KEK");
        assert_eq!(plain[0], 0x30, "a DER private key");
        assert!(
            !bytes.windows(32).any(|w| w == &plain[plain.len() - 32..]),
            "stored in the clear"
        );
        for text in [
            URL_SAFE_NO_PAD.encode(&plain),
            STANDARD.encode(&plain),
            hex::encode(&plain),
        ] {
            let probe = &text[text.len() / 2..text.len() / 2 + 24];
            assert!(
                !log.contains(probe),
                "private key material in the server log"
            );
            assert!(
                !all_payloads.contains(probe),
                "private key material in the log"
            );
        }
    }
    // The RS256 key's private half matches its published modulus.
    let rsa_kid = listed
        .iter()
        .find(|k| k["alg"] == "RS256")
        .and_then(|k| k["kid"].as_str())
        .expect("RS256 kid");
    let rsa_row = sealed
        .iter()
        .find(|r| r.get::<_, &str>(0) == rsa_kid)
        .expect("the RS256 key's sealed row");
    let plain = kek
        .open(
            KeyId::parse(rsa_kid).expect("kid"),
            &rsa_row.get::<_, Vec<u8>>(1),
        )
        .expect("opens");
    let pair = ring::rsa::KeyPair::from_der(&plain).expect("a PKCS#1 RSA key");
    let published = jwks(&server).await;
    let n = published
        .iter()
        .find(|k| k["kid"] == rsa_kid)
        .expect("published")["n"]
        .as_str()
        .expect("n")
        .to_owned();
    use ring::signature::KeyPair as _;
    let modulus = pair.public_key().modulus_len();
    assert_eq!(URL_SAFE_NO_PAD.decode(&n).expect("n").len(), modulus);

    // Another KEK does not open the ring: that server refuses to start, in one line.
    let other = "00".repeat(32);
    let out = run_valet(
        server.db_url(),
        &[("VALET_KEY_ENCRYPTION_KEY", other.as_str())],
        &["serve"],
        Duration::from_secs(30),
    )
    .await
    .expect("valet serve exits");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error:") && last.contains("key-encryption key"),
        "{stderr}"
    );
    server.stop().await;
}
