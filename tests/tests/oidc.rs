//! OpenID Connect and JWT behaviours of ../shared/OIDC.md against the real server, one
//! test per item, named after it (o01…).

use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::Value;
use valet_domain::signing_key::KeyId;
use valet_resource::valet_wire::{EventType, Message, TokenEvent, STREAM};
use valet_resource::{KeyStage, SigningKey, Validator, ValidatorConfig};
use valet_tests::nats::TestNats;
use valet_tests::server::{
    assert_r, run_valet, AuthRequest, Browser, ClientCreds, ClientSpec, FlowEnd, Pkce, TestServer,
    TestUser, APP_CB, TEST_KEK,
};

/// The stream's token events once it holds at least `count`.
async fn until_stream_holds(nats: &TestNats, count: usize) -> Vec<TokenEvent> {
    let start = Instant::now();
    loop {
        let events: Vec<TokenEvent> = nats
            .stream_messages(STREAM)
            .await
            .iter()
            .filter_map(|m| {
                Message::from_json(&m.payload)
                    .expect("a stream message")
                    .into_token()
            })
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

/// A server with an OpenID Connect client (scopes `openid read`) and a user.
struct Oidc {
    server: TestServer,
    client: ClientCreds,
    rs: ClientCreds,
    user: TestUser,
    browser: Browser,
}

impl Oidc {
    async fn start(env: &[(&str, &str)]) -> Oidc {
        let server = TestServer::start_with(env).await;
        let client = server
            .create_client(
                &ClientSpec::confidential("Printshop")
                    .redirect(APP_CB)
                    .scopes("openid profile email read"),
            )
            .await;
        let rs = server
            .create_client(
                &ClientSpec::confidential("designs")
                    .grant("client_credentials")
                    .scopes("introspect"),
            )
            .await;
        let user = server.create_user("alice", "a long passphrase").await;
        let browser = server.browser();
        Oidc {
            server,
            client,
            rs,
            user,
            browser,
        }
    }

    /// The authorization flow for `scope` (PKCE), with extra request parameters; the
    /// redirect back to the client.
    async fn authorize(&mut self, scope: &str, extra: &[(&str, &str)]) -> (FlowEnd, Pkce) {
        let pkce = Pkce::new();
        let mut req = AuthRequest::new(&self.client.client_id, APP_CB)
            .pkce(&pkce)
            .scope(scope);
        for (k, v) in extra {
            req = req.set(k, v);
        }
        let end = self
            .server
            .authorize(&mut self.browser, &self.user, &req)
            .await;
        (end, pkce)
    }

    /// The token response of a fresh grant for `scope`.
    async fn tokens(&mut self, scope: &str, extra: &[(&str, &str)]) -> Value {
        let (end, pkce) = self.authorize(scope, extra).await;
        let resp = self
            .server
            .redeem(&self.client, &end.code(), APP_CB, Some(&pkce.verifier))
            .await;
        assert_eq!(resp.status, 200, "{}", resp.describe());
        resp.json()
    }

    fn issuer(&self) -> String {
        self.server.base_url().to_owned()
    }
}

/// Verifies an id_token as a relying party would: the key named by `kid` from the
/// JWKS, RS256 pinned, `iss` and `aud` checked; its claims.
async fn verified_claims(server: &TestServer, id_token: &str, audience: &str) -> Value {
    verified_claims_with(server, id_token, audience, jsonwebtoken::Algorithm::RS256).await
}

/// As [`verified_claims`], with the algorithm pinned to `alg`.
async fn verified_claims_with(
    server: &TestServer,
    id_token: &str,
    audience: &str,
    alg: jsonwebtoken::Algorithm,
) -> Value {
    let header = jsonwebtoken::decode_header(id_token).expect("a JWS header");
    assert_eq!(header.alg, alg);
    let kid = header.kid.expect("a kid");
    let keys = jwks(server).await;
    let key = keys
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} is not in the JWKS"));
    let member = |name: &str| {
        key[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} in {key}"))
    };
    let decoding = match alg {
        jsonwebtoken::Algorithm::ES256 => {
            jsonwebtoken::DecodingKey::from_ec_components(member("x"), member("y"))
        }
        jsonwebtoken::Algorithm::EdDSA => {
            jsonwebtoken::DecodingKey::from_ed_components(member("x"))
        }
        _ => jsonwebtoken::DecodingKey::from_rsa_components(member("n"), member("e")),
    }
    .expect("a key from the JWKS");
    assert_eq!(key["alg"], format!("{alg:?}"), "the key's own algorithm");
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[server.base_url()]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(id_token, &decoding, &validation)
        .unwrap_or_else(|e| panic!("the id_token does not verify: {e}"))
        .claims
}

/// Waits until `done` holds for the SDK.
async fn until(sdk: &Validator, what: &str, done: impl Fn(&Validator) -> bool) {
    let start = Instant::now();
    while !done(sdk) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the SDK never saw {what}: {:?}",
            sdk.signing_keys()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resource services learn signing keys from the stream, not by polling: each step of a
/// key's life is a message on `valet.v1.key.<step>` carrying the public JWK exactly as
/// the JWKS shows it, and the SDK holds every key by `kid`, a new one before it signs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_events_reach_resource_services_over_nats_with_public_keys_only() {
    let nats = TestNats::start().await;
    let server = TestServer::start_with(&[
        ("VALET_NATS_URL", &nats.url()),
        ("VALET_KEY_PUBLISH_LEAD", "2"),
    ])
    .await;
    let sdk = Validator::connect(ValidatorConfig::new(nats.url()))
        .await
        .expect("the SDK starts");
    // The keys of the first start, as the JWKS shows them.
    until(&sdk, "the first keys", |sdk| {
        let keys = sdk.signing_keys();
        keys.len() == 3 && keys.iter().all(|k| k.stage == KeyStage::Active)
    })
    .await;
    let as_jwks = |keys: &[SigningKey]| -> Vec<Value> {
        keys.iter()
            .map(|k| serde_json::to_value(&k.jwk).expect("JSON"))
            .collect()
    };
    let mut published = jwks(&server).await;
    let mut heard = as_jwks(&sdk.signing_keys());
    let by_kid = |a: &Value, b: &Value| a["kid"].as_str().cmp(&b["kid"].as_str());
    published.sort_by(by_kid);
    heard.sort_by(by_kid);
    assert_eq!(heard, published);
    let old = sdk
        .signing_keys()
        .into_iter()
        .find(|k| k.alg == "ES256")
        .expect("an ES256 key");

    // A new key is heard of while it is only published, then when it signs.
    let out = server
        .cli(&["keys", "rotate", "--algorithm", "ES256", "--json"], None)
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let new_kid = rotated["kid"].as_str().expect("kid").to_owned();
    let kid = new_kid.clone();
    until(&sdk, "the new key published", |sdk| {
        sdk.signing_key(&kid).is_some()
    })
    .await;
    let new = sdk.signing_key(&new_kid).expect("heard of");
    assert_eq!(new.stage, KeyStage::Published, "heard of before it signs");
    assert_eq!(new.alg, "ES256");
    // The stream can be first: each replica refreshes its JWKS every second.
    let start = Instant::now();
    let in_jwks = loop {
        if let Some(key) = jwks(&server)
            .await
            .into_iter()
            .find(|k| k["kid"] == new_kid.as_str())
        {
            break key;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "not in the JWKS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(serde_json::to_value(&new.jwk).expect("JSON"), in_jwks);
    let kid = new_kid.clone();
    let old_kid = old.kid.clone();
    until(&sdk, "the new key signing and the old one retired", |sdk| {
        sdk.signing_key(&kid).map(|k| k.stage) == Some(KeyStage::Active)
            && sdk.signing_key(&old_kid).map(|k| k.stage) == Some(KeyStage::Retired)
    })
    .await;
    let retired = sdk.signing_key(&old.kid).expect("known");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(
        retired.published_until.is_some_and(|until| until > now),
        "what the retired key signed stays verifiable for a while: {retired:?}"
    );

    // On the wire: one message per step, on its subject, public members only.
    let mut per_key: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for message in nats.stream_messages(STREAM).await {
        let Message::Key(key) = Message::from_json(&message.payload).expect("a stream message")
        else {
            continue;
        };
        assert_eq!(message.subject.as_str(), key.subject());
        assert_eq!(
            message.subject.as_str(),
            format!("valet.v1.{}", key.event_type.as_str())
        );
        let members: Vec<&str> = key.jwk.keys().map(String::as_str).collect();
        assert!(
            members
                .iter()
                .all(|m| ["kty", "crv", "x", "y", "n", "e", "kid", "alg", "use"].contains(m)),
            "not a public member in {members:?}"
        );
        per_key
            .entry(key.kid.clone())
            .or_default()
            .push(key.event_type.as_str().to_owned());
    }
    assert_eq!(per_key[&new_kid], ["key.published", "key.activated"]);
    assert_eq!(
        per_key[&old.kid],
        ["key.published", "key.activated", "key.retired"]
    );
    assert_eq!(sdk.status().signing_keys, 4);
}

/// o04: a scope without `openid` is plain OAuth 2.0 (no id_token); with `openid` the
/// token response carries one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o04_an_id_token_exactly_when_openid_is_in_the_scope() {
    let mut oidc = Oidc::start(&[]).await;
    let plain = oidc.tokens("read", &[]).await;
    assert!(plain.get("id_token").is_none(), "{plain}");
    assert!(plain["access_token"].as_str().is_some());
    let openid = oidc.tokens("openid read", &[]).await;
    let id_token = openid["id_token"].as_str().expect("an id_token");
    assert_eq!(id_token.split('.').count(), 3, "a compact JWS");
    let claims = verified_claims(&oidc.server, id_token, &oidc.client.client_id).await;
    assert_eq!(claims["aud"], oidc.client.client_id.as_str());
    oidc.server.stop().await;
}

/// o05: `nonce` is copied into the id_token byte for byte; with no `nonce` sent there is
/// none in the token; a malformed one is refused with a redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o05_the_nonce_is_copied_byte_exact_and_only_when_sent() {
    let mut oidc = Oidc::start(&[]).await;
    let nonce = "n-0S6_WzA2Mj ~!*'()%20;:@&=+$,/?#[]\"";
    let with = oidc.tokens("openid", &[("nonce", nonce)]).await;
    let claims = oidc.id_token_claims(&with).await;
    assert_eq!(claims["nonce"].as_str(), Some(nonce));
    let without = oidc.tokens("openid", &[]).await;
    let claims = oidc.id_token_claims(&without).await;
    assert!(claims.get("nonce").is_none(), "{claims}");
    let (end, _) = oidc.authorize("openid", &[("nonce", "tab\there")]).await;
    assert_r(
        &end.response,
        APP_CB,
        "invalid_request",
        end.param("state").as_deref(),
        "a nonce with a tab",
    );
    oidc.server.stop().await;
}

/// o09: every authorization response, success or error, carries `iss` (RFC 9207), and
/// the metadata says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o09_every_authorization_response_carries_iss() {
    let mut oidc = Oidc::start(&[]).await;
    let issuer = oidc.issuer();
    let (success, _) = oidc.authorize("openid", &[]).await;
    assert!(success.param("code").is_some());
    assert_eq!(success.param("iss").as_deref(), Some(issuer.as_str()));
    // An error the request causes (a scope the client may not have)...
    let (refused, _) = oidc.authorize("admin", &[]).await;
    assert_r(
        &refused.response,
        APP_CB,
        "invalid_scope",
        refused.param("state").as_deref(),
        "scope",
    );
    assert_eq!(refused.param("iss").as_deref(), Some(issuer.as_str()));
    // ...and one the user causes.
    let req = AuthRequest::new(&oidc.client.client_id, APP_CB)
        .pkce(&Pkce::new())
        .scope("read");
    let denied = oidc
        .server
        .authorize_deciding(&mut oidc.browser, &oidc.user, &req, "deny")
        .await;
    assert_eq!(denied.param("error").as_deref(), Some("access_denied"));
    assert_eq!(denied.param("iss").as_deref(), Some(issuer.as_str()));
    for document in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let metadata = oidc.server.get(document).await.json();
        assert_eq!(
            metadata["authorization_response_iss_parameter_supported"], true,
            "{document}"
        );
    }
    oidc.server.stop().await;
}

/// o10: the id_token's claims: `iss` exact, `sub` the user's id (at most 255 ASCII
/// characters, the same for every client), `aud` the client (one audience, so no `azp`),
/// `exp` after `iat`, `auth_time` the sign-in, and `sid` the sign-in session (the same
/// for every grant of one session, another after signing in again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o10_an_id_token_names_the_issuer_user_client_sign_in_and_session() {
    let mut oidc = Oidc::start(&[]).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let tokens = oidc.tokens("openid read", &[]).await;
    let id_token = tokens["id_token"].as_str().expect("id_token");
    let claims = verified_claims(&oidc.server, id_token, &oidc.client.client_id).await;
    assert_eq!(claims["iss"], oidc.issuer().as_str());
    let introspected = oidc
        .server
        .introspection(
            &oidc.rs,
            tokens["access_token"].as_str().expect("access_token"),
        )
        .await;
    assert_eq!(
        claims["sub"], introspected["sub"],
        "one subject for the user"
    );
    let sub = claims["sub"].as_str().expect("sub");
    assert!(!sub.is_empty() && sub.len() <= 255 && sub.is_ascii());
    let (iat, exp) = (
        claims["iat"].as_i64().expect("iat"),
        claims["exp"].as_i64().expect("exp"),
    );
    assert!(exp > iat && iat >= before - 1, "{claims}");
    let auth_time = claims["auth_time"].as_i64().expect("auth_time");
    assert!(auth_time <= iat && auth_time >= before - 1, "{claims}");
    // The same user through a second grant: the same sub, an earlier-or-equal sign-in.
    let again = oidc.tokens("openid", &[]).await;
    let claims2 = oidc.id_token_claims(&again).await;
    assert_eq!(claims2["sub"], claims["sub"]);
    assert_eq!(
        claims2["auth_time"], claims["auth_time"],
        "the same sign-in session"
    );
    let sid = claims["sid"].as_str().expect("sid");
    assert!(!sid.is_empty());
    assert_eq!(claims2["sid"], claims["sid"], "one session, one sid");
    assert!(claims.get("azp").is_none(), "one audience needs no azp");
    assert!(claims["aud"].is_string(), "{claims}");
    // Another client, the same session: the same sub and sid.
    let other = oidc
        .server
        .create_client(
            &ClientSpec::confidential("Other")
                .redirect(APP_CB)
                .scopes("openid"),
        )
        .await;
    let first_client = std::mem::replace(&mut oidc.client, other);
    let theirs = oidc.tokens("openid", &[]).await;
    let claims3 = oidc.id_token_claims(&theirs).await;
    assert_eq!(
        claims3["sub"], claims["sub"],
        "sub is the same for every client"
    );
    assert_eq!(claims3["sid"], claims["sid"]);
    assert_ne!(claims3["aud"], claims["aud"]);
    // Signing in again starts another session.
    oidc.client = first_client;
    let again = oidc.tokens("openid", &[("prompt", "login")]).await;
    let claims4 = oidc.id_token_claims(&again).await;
    assert_ne!(claims4["sid"], claims["sid"], "a new sign-in, a new sid");
    oidc.server.stop().await;
}

/// o01: the discovery document: `issuer` byte-equal to the configured one and to the
/// RFC 8414 document's; the authorization, token, userinfo, jwks and end_session
/// endpoints; `code` only; `public` subjects; RS256 and never `none`; `openid`;
/// `claims_supported`; S256; `iss` in authorization responses. Nothing unimplemented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o01_the_openid_configuration_matches_the_rfc8414_metadata() {
    let server = TestServer::start().await;
    let oidc = server.get("/.well-known/openid-configuration").await;
    assert_eq!(oidc.status, 200, "{}", oidc.describe());
    let oidc = oidc.json();
    let oauth = server
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(oidc["issuer"], oauth["issuer"]);
    assert_eq!(oidc["issuer"].as_str(), Some(server.base_url()));
    for field in ["authorization_endpoint", "token_endpoint", "jwks_uri"] {
        assert_eq!(oidc[field], oauth[field], "{field}");
    }
    assert_eq!(
        oidc["response_types_supported"],
        serde_json::json!(["code"])
    );
    assert_eq!(
        oidc["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    let has = |field: &str, value: &str| {
        oidc[field]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == value))
    };
    assert!(has("subject_types_supported", "public"));
    assert!(has("id_token_signing_alg_values_supported", "RS256"));
    assert!(!has("id_token_signing_alg_values_supported", "none"));
    assert!(has("scopes_supported", "openid"));
    assert!(has("claims_supported", "sub") && has("claims_supported", "nonce"));
    assert_eq!(
        oidc["userinfo_endpoint"].as_str(),
        Some(format!("{}/userinfo", server.base_url()).as_str())
    );
    assert!(has("scopes_supported", "profile") && has("scopes_supported", "email"));
    assert_eq!(
        oidc["end_session_endpoint"].as_str(),
        Some(format!("{}/logout", server.base_url()).as_str())
    );
    assert_eq!(oidc["authorization_response_iss_parameter_supported"], true);
    // Every advertised endpoint answers (not 404).
    for field in ["userinfo_endpoint", "end_session_endpoint", "jwks_uri"] {
        let url = oidc[field].as_str().expect(field);
        let path = url.strip_prefix(server.base_url()).expect("on this server");
        assert_ne!(server.get(path).await.status, 404, "{field}");
    }
    // Nothing is advertised that is not served.
    for field in ["registration_endpoint", "check_session_iframe"] {
        assert!(
            oidc.get(field).is_none(),
            "{field} advertised before it exists"
        );
    }
    server.stop().await;
}

/// One code flow with a remembered consent (the session in `cookie`): the id_token, or
/// what went wrong.
async fn flow_with_cookie(
    http: &reqwest::Client,
    base: &str,
    client: &ClientCreds,
    cookie: &str,
) -> Result<String, String> {
    let pkce = Pkce::new();
    let path = AuthRequest::new(&client.client_id, APP_CB)
        .pkce(&pkce)
        .scope("openid")
        .path();
    let resp = http
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let location = resp
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .ok_or_else(|| format!("no redirect: {}", resp.status()))?
        .to_owned();
    let code = url::Url::parse(&location)
        .map_err(|e| e.to_string())?
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| format!("no code in {location}"))?;
    let resp = http
        .post(format!("{base}/token"))
        .basic_auth(&client.client_id, client.client_secret.as_deref())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", APP_CB),
            ("code_verifier", pkce.verifier.as_str()),
        ])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    let body: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    match body["id_token"].as_str() {
        Some(id_token) if status == 200 => Ok(id_token.to_owned()),
        _ => Err(format!("{status}: {body}")),
    }
}

/// Key rotation under load: while four connections run code flows without pause, the
/// RS256 key is rotated. No flow fails; id_tokens are signed by the old key, then the
/// new one, never another; every one of them verifies from the JWKS afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_a_key_rotation_fails_no_flow_and_every_id_token_keeps_verifying() {
    let mut oidc = Oidc::start(&[("VALET_KEY_PUBLISH_LEAD", "2")]).await;
    let first = oidc.tokens("openid", &[]).await;
    let first = first["id_token"].as_str().expect("id_token").to_owned();
    let old_kid = jsonwebtoken::decode_header(&first)
        .expect("header")
        .kid
        .expect("kid");
    let cookie = oidc.browser.cookie_header().expect("a session");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, cookie, client) = (stop.clone(), cookie.clone(), oidc.client.clone());
            let base = oidc.server.base_url().to_owned();
            tokio::spawn(async move {
                let http = valet_tests::server::http_client();
                let mut id_tokens = Vec::new();
                let mut failures = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match flow_with_cookie(&http, &base, &client, &cookie).await {
                        Ok(id_token) => id_tokens.push(id_token),
                        Err(e) => failures.push(e),
                    }
                }
                (id_tokens, failures)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = oidc
        .server
        .cli(&["keys", "rotate", "--algorithm", "RS256", "--json"], None)
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let new_kid = rotated["kid"].as_str().expect("kid").to_owned();
    // Until the new key has signed for a while.
    let start = Instant::now();
    loop {
        let listed = keys_list(&oidc.server).await;
        if listed
            .iter()
            .any(|k| k["kid"] == new_kid.as_str() && k["stage"] == "active")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the new key never signed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut id_tokens = vec![first];
    let mut failures = Vec::new();
    for task in load {
        let (tokens, failed) = task.await.expect("a load task");
        id_tokens.extend(tokens);
        failures.extend(failed);
    }
    assert!(
        failures.is_empty(),
        "{} flows failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let kids: std::collections::BTreeMap<String, usize> =
        id_tokens.iter().fold(Default::default(), |mut counts, t| {
            let kid = jsonwebtoken::decode_header(t)
                .expect("header")
                .kid
                .expect("kid");
            *counts.entry(kid).or_default() += 1;
            counts
        });
    assert_eq!(kids.len(), 2, "the old key, then the new one: {kids:?}");
    assert!(
        kids.contains_key(&old_kid) && kids.contains_key(&new_kid),
        "{kids:?}"
    );
    // Every kid was checked above; the signatures of a sample (the first, every 20th,
    // the last) are checked here.
    for id_token in id_tokens.iter().step_by(20).chain(id_tokens.last()) {
        verified_claims(&oidc.server, id_token, &oidc.client.client_id).await;
    }
    eprintln!("{} flows during the rotation: {kids:?}", id_tokens.len());
    oidc.server.stop().await;
}

async fn userinfo_get(server: &TestServer, token: Option<&str>) -> valet_tests::server::Resp {
    let mut req = server.http().get(server.url("/userinfo"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let started = Instant::now();
    valet_tests::server::Resp::read(req.send().await.expect("GET /userinfo"), started).await
}

async fn userinfo_post(server: &TestServer, token: &str) -> valet_tests::server::Resp {
    let started = Instant::now();
    let resp = server
        .http()
        .post(server.url("/userinfo"))
        .bearer_auth(token)
        .send()
        .await
        .expect("POST /userinfo");
    valet_tests::server::Resp::read(resp, started).await
}

#[track_caller]
fn assert_invalid_token(resp: &valet_tests::server::Resp, what: &str) {
    assert_eq!(resp.status, 401, "{what}: {}", resp.describe());
    let challenge = resp.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer") && challenge.contains("error=\"invalid_token\""),
        "{what}: {challenge}"
    );
}

/// o13: GET and POST /userinfo with a bearer token: `sub` equal to the id_token's, and
/// only the claims the granted scopes allow; `Cache-Control: no-store`. The profile is
/// set with the CLI and recorded as an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o13_userinfo_serves_the_claims_the_scopes_allow() {
    let mut oidc = Oidc::start(&[]).await;
    let out = oidc
        .server
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(oidc.server.events_of("UserProfileChanged").await.len(), 1);

    let all = oidc.tokens("openid profile email", &[]).await;
    let claims = oidc.id_token_claims(&all).await;
    let token = all["access_token"].as_str().expect("access_token");
    for resp in [
        userinfo_get(&oidc.server, Some(token)).await,
        userinfo_post(&oidc.server, token).await,
    ] {
        assert_eq!(resp.status, 200, "{}", resp.describe());
        assert!(resp.no_store(), "{}", resp.describe());
        let info = resp.json();
        assert_eq!(info["sub"], claims["sub"]);
        assert_eq!(info["name"], "Alice Liddell");
        assert_eq!(info["preferred_username"], "alice");
        assert_eq!(info["email"], "alice@example.com");
        assert_eq!(info["email_verified"], true);
    }

    let only_openid = oidc.tokens("openid", &[]).await;
    let info = userinfo_get(&oidc.server, only_openid["access_token"].as_str())
        .await
        .json();
    assert_eq!(
        info.as_object().map(|o| o.len()),
        Some(1),
        "sub only: {info}"
    );
    let profile = oidc.tokens("openid profile", &[]).await;
    let info = userinfo_get(&oidc.server, profile["access_token"].as_str())
        .await
        .json();
    assert_eq!(info["name"], "Alice Liddell");
    assert!(info.get("email").is_none(), "{info}");
    let email = oidc.tokens("openid email", &[]).await;
    let info = userinfo_get(&oidc.server, email["access_token"].as_str())
        .await
        .json();
    assert_eq!(info["email"], "alice@example.com");
    assert!(info.get("name").is_none(), "{info}");
    oidc.server.stop().await;
}

/// o14: no `openid` in the token's scope → 403 insufficient_scope; a missing, invalid,
/// expired or revoked token → 401 `Bearer error="invalid_token"`; a token in the query
/// string is not honoured; a disabled user's claims are never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o14_userinfo_refuses_tokens_without_openid_or_validity() {
    let mut oidc = Oidc::start(&[("VALET_ACCESS_TOKEN_TTL", "3")]).await;
    let plain = oidc.tokens("read", &[]).await;
    let resp = userinfo_get(&oidc.server, plain["access_token"].as_str()).await;
    assert_eq!(resp.status, 403, "{}", resp.describe());
    assert!(resp
        .header("www-authenticate")
        .is_some_and(|c| c.contains("error=\"insufficient_scope\"")));

    assert_invalid_token(&userinfo_get(&oidc.server, None).await, "no token");
    assert_invalid_token(
        &userinfo_get(&oidc.server, Some("valet_at_not-a-token")).await,
        "an unknown token",
    );
    let revoked = oidc.tokens("openid", &[]).await;
    let revoked = revoked["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let resp = oidc
        .server
        .revoke(&oidc.client.auth(), &revoked, None)
        .await;
    assert_eq!(resp.status, 200);
    assert_invalid_token(
        &userinfo_get(&oidc.server, Some(&revoked)).await,
        "a revoked token",
    );

    let good = oidc.tokens("openid", &[]).await;
    let good = good["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let in_query = oidc
        .server
        .get(&format!("/userinfo?access_token={good}"))
        .await;
    assert_invalid_token(&in_query, "a token in the query string");
    assert_eq!(userinfo_get(&oidc.server, Some(&good)).await.status, 200);

    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_invalid_token(
        &userinfo_get(&oidc.server, Some(&good)).await,
        "an expired token",
    );

    let fresh = oidc.tokens("openid", &[]).await;
    let fresh = fresh["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    assert_eq!(userinfo_get(&oidc.server, Some(&fresh)).await.status, 200);
    oidc.server.disable_user("alice").await;
    assert_invalid_token(
        &userinfo_get(&oidc.server, Some(&fresh)).await,
        "a disabled user",
    );
    oidc.server.stop().await;
}

impl Oidc {
    /// GET /authorize with this browser (its session, if any) for `scope` and `extra`.
    async fn get_authorize(
        &mut self,
        scope: &str,
        extra: &[(&str, &str)],
    ) -> valet_tests::server::Resp {
        let mut req = AuthRequest::new(&self.client.client_id, APP_CB)
            .pkce(&Pkce::new())
            .scope(scope);
        for (k, v) in extra {
            req = req.set(k, v);
        }
        let url = self.server.url(&req.path());
        self.browser.get(&url).await
    }

    async fn id_token_claims(&self, tokens: &Value) -> Value {
        verified_claims(
            &self.server,
            tokens["id_token"].as_str().expect("id_token"),
            &self.client.client_id,
        )
        .await
    }
}

fn shows(
    resp: &valet_tests::server::Resp,
    pred: impl Fn(&valet_tests::html::Form) -> bool,
) -> bool {
    resp.status == 200 && valet_tests::html::find_form(&resp.text(), pred).is_some()
}

/// An authorization answered by redirect with `login_required` (and `state`).
#[track_caller]
fn assert_login_required(resp: &valet_tests::server::Resp, what: &str) {
    let state = FlowEnd::new(resp.clone()).param("state");
    assert_r(resp, APP_CB, "login_required", state.as_deref(), what);
}

/// An authorization answered by redirect with a code.
#[track_caller]
fn assert_code(resp: &valet_tests::server::Resp) {
    assert!(
        FlowEnd::new(resp.clone()).param("code").is_some(),
        "{}",
        resp.describe()
    );
}

/// `valet user sessions alice --json [extra]`.
async fn user_sessions(oidc: &Oidc, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["user", "sessions", "alice", "--json"];
    args.extend_from_slice(extra);
    let out = oidc.server.cli(&args, None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("sessions as JSON");
    list.as_array().expect("an array").clone()
}

/// `prompt=none` for `openid` as `client`.
async fn silent_as(oidc: &mut Oidc, client: &ClientCreds) -> valet_tests::server::Resp {
    oidc.client = client.clone();
    oidc.get_authorize("openid", &[("prompt", "none")]).await
}

/// Signing a user out everywhere (`valet user logout NAME`) ends every sign-in session
/// begun until then: the next `prompt=none` from any client gets `login_required`. Grants
/// stay (refresh still works); signing in again starts a session that stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_a_user_out_everywhere_ends_every_session() {
    let mut oidc = Oidc::start(&[]).await;
    let first = oidc.tokens("openid", &[]).await;
    let other = oidc
        .server
        .create_client(
            &ClientSpec::confidential("Other app")
                .redirect(APP_CB)
                .scopes("openid"),
        )
        .await;
    let primary = std::mem::replace(&mut oidc.client, other);
    oidc.tokens("openid", &[]).await;
    let other = std::mem::replace(&mut oidc.client, primary);
    let mut clients = [oidc.client.clone(), other];
    for client in &clients {
        let resp = silent_as(&mut oidc, client).await;
        assert_code(&resp);
    }
    // One browser, one session: both apps signed in through it.
    let sessions = user_sessions(&oidc, &[]).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["status"], "active");
    let joined: Vec<&str> = sessions[0]["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert_eq!(
        joined,
        [clients[0].client_id.as_str(), clients[1].client_id.as_str()]
    );

    let out = oidc.server.cli(&["user", "logout", "alice"], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "signed user alice out everywhere; ended 1 session(s)"
    );
    let sessions = user_sessions(&oidc, &[]).await;
    assert_eq!(sessions[0]["status"], "ended (admin)");
    assert_eq!(sessions[0]["end_reason"], "admin");
    assert!(user_sessions(&oidc, &["--active"]).await.is_empty());
    for client in &clients {
        let resp = silent_as(&mut oidc, client).await;
        assert_login_required(&resp, "signed out everywhere");
    }
    oidc.client = clients[0].clone();
    let refreshed = oidc
        .server
        .refresh(
            &oidc.client,
            first["refresh_token"].as_str().expect("refresh_token"),
            None,
        )
        .await;
    assert_eq!(
        refreshed.status,
        200,
        "grants stay: {}",
        refreshed.describe()
    );

    // Sessions are dated to the second: sign in again in the next one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    oidc.tokens("openid", &[]).await;
    clients.reverse();
    let resp = silent_as(&mut oidc, &clients[1]).await;
    assert_code(&resp);
    assert_eq!(
        oidc.server.events_of("UserSignedOutEverywhere").await.len(),
        1
    );
    let out = oidc.server.cli(&["user", "logout", "nobody"], None).await;
    assert!(!out.status.success());
    oidc.server.stop().await;
}

/// `valet user password NAME --password-stdin`: the new password works and the old one
/// no longer does, every session ends, and the user's grants are revoked (kept with
/// `--keep-grants`). The log records the change, never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_ends_the_sessions_and_revokes_the_grants() {
    let mut oidc = Oidc::start(&[]).await;
    let first = oidc.tokens("openid", &[]).await;
    let access = first["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let client = oidc.client.clone();
    let change = |keep: bool| {
        let mut args = vec!["user", "password", "alice", "--password-stdin"];
        if keep {
            args.push("--keep-grants");
        }
        args
    };
    let out = oidc
        .server
        .cli(&change(true), Some("an even longer passphrase\n"))
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp = silent_as(&mut oidc, &client).await;
    assert_login_required(&resp, "the session ended with the password change");
    let info = oidc.server.introspection(&oidc.rs, &access).await;
    assert_eq!(info["active"], true, "--keep-grants: {info}");

    let out = oidc
        .server
        .cli(&change(false), Some("the newest passphrase of all\n"))
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoked 1 grant(s)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let info = oidc.server.introspection(&oidc.rs, &access).await;
    assert_eq!(info["active"], false, "{info}");

    // The old password is refused at the sign-in page; the new one signs in.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let request = AuthRequest::new(&client.client_id, APP_CB)
        .pkce(&Pkce::new())
        .scope("openid");
    let old = TestUser {
        username: "alice".into(),
        password: "a long passphrase".into(),
    };
    let refused = oidc
        .browser
        .login(&oidc.server.url(&request.path()), &old)
        .await;
    assert!(
        !matches!(refused.status, 302 | 303),
        "the old password signed in: {}",
        refused.describe()
    );
    oidc.user.password = "the newest passphrase of all".into();
    oidc.tokens("openid", &[]).await;
    let resp = silent_as(&mut oidc, &client).await;
    assert_code(&resp);

    let changes = oidc.server.events_of("UserPasswordChanged").await;
    assert_eq!(changes.len(), 2);
    let log: String = changes.iter().map(|e| e.payload.to_string()).collect();
    assert!(!log.contains("passphrase"), "{log}");
    oidc.server.stop().await;
}

/// `--session-lifetime` bounds a sign-in: within it `prompt=none` gets a code, after it
/// `login_required`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_lasts_the_configured_session_lifetime() {
    let mut oidc = Oidc::start(&[("VALET_SESSION_LIFETIME", "2")]).await;
    oidc.tokens("openid", &[]).await;
    let client = oidc.client.clone();
    let resp = silent_as(&mut oidc, &client).await;
    assert_code(&resp);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resp = silent_as(&mut oidc, &client).await;
    assert_login_required(&resp, "the session expired");
    oidc.server.stop().await;
}

/// A session ends in the log, not only in the browser: its cookie, kept from before a
/// logout and sent again, signs no one in. Sessions are recorded as started, used by each
/// client and ended with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cookie_kept_after_logout_no_longer_signs_in() {
    let mut oidc = Oidc::start(&[]).await;
    let tokens = oidc.tokens("openid", &[]).await;
    let kept = oidc.browser.cookies.clone();
    let sid = oidc.id_token_claims(&tokens).await["sid"]
        .as_str()
        .expect("sid")
        .to_owned();
    let hint = tokens["id_token"].as_str().expect("id_token");
    let url = format!(
        "/logout?{}",
        valet_tests::server::form_body(&[("id_token_hint", hint)])
    );
    let resp = oidc.browser.get(&oidc.server.url(&url)).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    oidc.browser.cookies = kept;
    let replayed = oidc.get_authorize("openid", &[("prompt", "none")]).await;
    assert_login_required(&replayed, "the cookie of a session that ended");

    let stream = format!("session-{sid}");
    let types: Vec<(String, Value)> = oidc
        .server
        .pg()
        .await
        .query(
            "SELECT event_type, payload FROM events WHERE stream_id = $1 ORDER BY position",
            &[&stream],
        )
        .await
        .expect("session events")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<&str> = types.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, ["SessionStarted", "SessionUsed", "SessionEnded"]);
    assert_eq!(types[1].1["client_id"], oidc.client.client_id.as_str());
    assert_eq!(types[2].1["reason"], "logout");
    oidc.server.stop().await;
}

/// `--session-idle-timeout`: a session unused for longer ends (recorded as `expired`);
/// one used in time lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_session_ends_after_the_idle_timeout() {
    let mut oidc = Oidc::start(&[("VALET_SESSION_IDLE_TIMEOUT", "2")]).await;
    oidc.tokens("openid", &[]).await;
    let client = oidc.client.clone();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_code(&silent_as(&mut oidc, &client).await);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resp = silent_as(&mut oidc, &client).await;
    assert_login_required(&resp, "the session idled out");
    let ended = oidc.server.events_of("SessionEnded").await;
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].payload["reason"], "expired");
    oidc.server.stop().await;
}

/// o06: `prompt=none` never shows a page (`login_required` without a session,
/// `consent_required` when consent is needed); `prompt=login` signs in again (a new
/// `auth_time`); `prompt=consent` asks again though consent was given; `none` with
/// another value is `invalid_request`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o06_prompt_none_login_and_consent() {
    let mut oidc = Oidc::start(&[]).await;
    let none = oidc.get_authorize("openid", &[("prompt", "none")]).await;
    assert_login_required(&none, "no session");

    let first = oidc.tokens("openid", &[]).await;
    let first_auth_time = oidc.id_token_claims(&first).await["auth_time"].clone();
    // A session and consent: a code with no page.
    let silent = oidc.get_authorize("openid", &[("prompt", "none")]).await;
    assert_eq!(silent.status, 302, "{}", silent.describe());
    assert!(FlowEnd::new(silent).param("code").is_some());
    // A session, but consent needed for more scope.
    let more = oidc
        .get_authorize("openid read", &[("prompt", "none")])
        .await;
    assert_r(
        &more,
        APP_CB,
        "consent_required",
        FlowEnd::new(more.clone()).param("state").as_deref(),
        "consent needed",
    );

    let again = oidc.get_authorize("openid", &[("prompt", "consent")]).await;
    assert!(
        shows(&again, valet_tests::html::Form::is_consent),
        "{}",
        again.describe()
    );

    let login = oidc.get_authorize("openid", &[("prompt", "login")]).await;
    assert!(
        shows(&login, valet_tests::html::Form::is_login),
        "{}",
        login.describe()
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let relogged = oidc.tokens("openid", &[("prompt", "login")]).await;
    let claims = oidc.id_token_claims(&relogged).await;
    assert!(
        claims["auth_time"].as_i64() > first_auth_time.as_i64(),
        "a new sign-in: {claims} after {first_auth_time}"
    );

    let mixed = oidc
        .get_authorize("openid", &[("prompt", "none login")])
        .await;
    assert_r(
        &mixed,
        APP_CB,
        "invalid_request",
        FlowEnd::new(mixed.clone()).param("state").as_deref(),
        "none with login",
    );
    oidc.server.stop().await;
}

/// o07: a session older than `max_age` signs in again; `auth_time` is in the id_token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o07_max_age_signs_in_again_when_the_session_is_older() {
    let mut oidc = Oidc::start(&[]).await;
    let first = oidc.tokens("openid", &[]).await;
    assert!(oidc.id_token_claims(&first).await["auth_time"].is_i64());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let recent_enough = oidc.get_authorize("openid", &[("max_age", "60")]).await;
    assert_eq!(recent_enough.status, 302, "{}", recent_enough.describe());
    assert!(FlowEnd::new(recent_enough).param("code").is_some());
    let too_old = oidc.get_authorize("openid", &[("max_age", "1")]).await;
    assert!(
        shows(&too_old, valet_tests::html::Form::is_login),
        "{}",
        too_old.describe()
    );
    let tokens = oidc.tokens("openid", &[("max_age", "1")]).await;
    let claims = oidc.id_token_claims(&tokens).await;
    let (auth_time, iat) = (claims["auth_time"].as_i64(), claims["iat"].as_i64());
    assert!(
        auth_time.is_some()
            && auth_time <= iat
            && iat.zip(auth_time).is_some_and(|(i, a)| i - a <= 1),
        "{claims}"
    );
    let bad = oidc.get_authorize("openid", &[("max_age", "soon")]).await;
    assert_r(
        &bad,
        APP_CB,
        "invalid_request",
        FlowEnd::new(bad.clone()).param("state").as_deref(),
        "max_age=soon",
    );
    oidc.server.stop().await;
}

/// o08: a `response_type` other than `code` → unsupported_response_type; `request` and
/// `request_uri` → request_not_supported / request_uri_not_supported; an unknown
/// `response_mode` → invalid_request (all redirected, with `state`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o08_unsupported_request_forms_are_refused_by_redirect() {
    let mut oidc = Oidc::start(&[]).await;
    for (extra, error) in [
        (("response_type", "id_token"), "unsupported_response_type"),
        (
            ("response_type", "code id_token"),
            "unsupported_response_type",
        ),
        (
            ("request", "eyJhbGciOiJub25lIn0.e30."),
            "request_not_supported",
        ),
        (
            ("request_uri", "https://app.example/request.jwt"),
            "request_uri_not_supported",
        ),
        (("response_mode", "fragment"), "invalid_request"),
        (("response_mode", "form_post"), "invalid_request"),
    ] {
        let resp = oidc.get_authorize("openid", &[extra]).await;
        let state = FlowEnd::new(resp.clone()).param("state");
        assert!(state.is_some(), "{extra:?}: state echoed");
        assert_r(
            &resp,
            APP_CB,
            error,
            state.as_deref(),
            &format!("{extra:?}"),
        );
    }
    let query = oidc
        .authorize("openid", &[("response_mode", "query")])
        .await
        .0;
    assert!(
        query.param("code").is_some(),
        "response_mode=query is the default"
    );
    oidc.server.stop().await;
}

/// o12: a refresh of a grant with `openid` returns a new id_token with the same `iss`,
/// `sub`, `aud` and `auth_time`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o12_a_refresh_returns_a_new_id_token_for_the_same_sign_in() {
    let mut oidc = Oidc::start(&[]).await;
    let first = oidc.tokens("openid read", &[("nonce", "n1")]).await;
    let claims = oidc.id_token_claims(&first).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = oidc
        .server
        .refresh(
            &oidc.client,
            first["refresh_token"].as_str().expect("refresh_token"),
            None,
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let refreshed = resp.json();
    let new_token = refreshed["id_token"].as_str().expect("a new id_token");
    assert_ne!(Some(new_token), first["id_token"].as_str());
    let again = oidc.id_token_claims(&refreshed).await;
    for claim in ["iss", "sub", "aud", "auth_time"] {
        assert_eq!(again[claim], claims[claim], "{claim}");
    }
    assert!(again["iat"].as_i64() > claims["iat"].as_i64());
    // A grant without openid refreshes without one.
    let plain = oidc.tokens("read", &[]).await;
    let resp = oidc
        .server
        .refresh(
            &oidc.client,
            plain["refresh_token"].as_str().expect("refresh_token"),
            None,
        )
        .await;
    assert!(resp.json().get("id_token").is_none());
    oidc.server.stop().await;
}

/// o11: id_tokens are signed with the client's registered
/// `id_token_signed_response_alg` (RS256 by default; ES256 and EdDSA on request), the
/// header's `kid` names a key of the JWKS, `none` is never produced, and the signature
/// verifies from `jwks_uri` alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o11_id_tokens_are_signed_with_the_clients_algorithm() {
    let mut oidc = Oidc::start(&[]).await;
    let rs256 = oidc.tokens("openid", &[]).await;
    oidc.id_token_claims(&rs256).await;
    for (alg, pinned) in [
        ("ES256", jsonwebtoken::Algorithm::ES256),
        ("EdDSA", jsonwebtoken::Algorithm::EdDSA),
    ] {
        oidc.client = oidc
            .server
            .create_client(
                &ClientSpec::confidential(alg)
                    .redirect(APP_CB)
                    .scopes("openid")
                    .id_token_alg(alg),
            )
            .await;
        let tokens = oidc.tokens("openid", &[]).await;
        let id_token = tokens["id_token"].as_str().expect("id_token");
        let claims =
            verified_claims_with(&oidc.server, id_token, &oidc.client.client_id, pinned).await;
        assert_eq!(claims["aud"], oidc.client.client_id.as_str());
        let header = jsonwebtoken::decode_header(id_token).expect("header");
        assert_ne!(format!("{:?}", header.alg), "none");
    }
    let refused = oidc
        .server
        .try_create_client(
            &ClientSpec::confidential("none")
                .redirect(APP_CB)
                .scopes("openid")
                .id_token_alg("none"),
        )
        .await;
    assert!(refused.is_err(), "alg none is refused at registration");
    oidc.server.stop().await;
}

/// A JWT access token's header and verified claims (`aud` as given), asserting the
/// header says `at+jwt` and names a key of the JWKS of algorithm `alg`.
async fn verified_access_token(
    server: &TestServer,
    token: &str,
    audience: &str,
    alg: jsonwebtoken::Algorithm,
) -> Value {
    let header = jsonwebtoken::decode_header(token).expect("a JWS header");
    assert_eq!(header.typ.as_deref(), Some("at+jwt"), "RFC 9068 §2.1");
    let claims = verified_claims_with(server, token, audience, alg).await;
    for claim in [
        "iss",
        "exp",
        "aud",
        "sub",
        "client_id",
        "iat",
        "jti",
        "scope",
    ] {
        assert!(claims.get(claim).is_some(), "{claim} missing from {claims}");
    }
    claims
}

/// o18: a client registered for JWT access tokens gets RFC 9068 tokens: `typ: at+jwt`;
/// `iss`, `exp`, `aud` (the configured audience), `sub`, `client_id`, `iat`, `jti`,
/// `scope`; signed by a key of the JWKS with the client's algorithm. Refresh rotates
/// them (a new `jti`), and a revoked one answers `active: false` at introspection
/// although its signature still verifies. (o17's `sub` = client id holds for them too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o18_jwt_access_tokens_follow_rfc_9068_and_a_revoked_one_is_inactive() {
    const AUDIENCE: &str = "https://designs.example";
    let mut oidc = Oidc::start(&[("VALET_ACCESS_TOKEN_AUDIENCE", AUDIENCE)]).await;
    oidc.client = oidc
        .server
        .create_client(
            &ClientSpec::confidential("Printshop JWT")
                .redirect(APP_CB)
                .scopes("openid profile read")
                .jwt_access_tokens("ES256"),
        )
        .await;
    let tokens = oidc.tokens("openid read", &[]).await;
    let access = tokens["access_token"].as_str().expect("access_token");
    let es256 = jsonwebtoken::Algorithm::ES256;
    let claims = verified_access_token(&oidc.server, access, AUDIENCE, es256).await;
    let id_token = tokens["id_token"].as_str().expect("id_token");
    let user = verified_claims(&oidc.server, id_token, &oidc.client.client_id).await;
    assert_eq!(claims["sub"], user["sub"], "the user, as in the id_token");
    assert_eq!(claims["client_id"], oidc.client.client_id.as_str());
    assert_eq!(claims["scope"], "openid read");
    assert_eq!(claims["iss"], oidc.server.base_url());
    let lifetime = claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat");
    assert_eq!(lifetime, tokens["expires_in"].as_i64().expect("expires_in"));
    // The id_token is no access token: its header says so.
    let header = jsonwebtoken::decode_header(id_token).expect("header");
    assert_ne!(header.typ.as_deref(), Some("at+jwt"));

    let info = oidc.server.introspection(&oidc.rs, access).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["sub"], claims["sub"], "{info}");

    // A refresh with a narrower scope: a new JWT with its own jti and that scope.
    let refreshed = oidc
        .server
        .refresh(
            &oidc.client,
            tokens["refresh_token"].as_str().expect("refresh_token"),
            Some("read"),
        )
        .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.describe());
    let refreshed = refreshed.json();
    let second = refreshed["access_token"].as_str().expect("access_token");
    let second_claims = verified_access_token(&oidc.server, second, AUDIENCE, es256).await;
    assert_ne!(second_claims["jti"], claims["jti"]);
    assert_eq!(second_claims["scope"], "read");
    assert_eq!(refreshed["scope"], "read");

    // Revoked: still a valid signature, but inactive.
    let resp = oidc.server.revoke(&oidc.client.basic(), second, None).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    verified_access_token(&oidc.server, second, AUDIENCE, es256).await;
    let info = oidc.server.introspection(&oidc.rs, second).await;
    assert_eq!(info, serde_json::json!({ "active": false }));

    // client_credentials: `sub` is the client itself (o17); RS256 by default.
    let service = oidc
        .server
        .create_client(
            &ClientSpec::confidential("printer")
                .grant("client_credentials")
                .scopes("read")
                .jwt_access_tokens("RS256"),
        )
        .await;
    let resp = oidc.server.client_credentials(&service, None).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let body = resp.json();
    let token = body["access_token"].as_str().expect("access_token");
    let rs256 = jsonwebtoken::Algorithm::RS256;
    let claims = verified_access_token(&oidc.server, token, AUDIENCE, rs256).await;
    assert_eq!(claims["sub"], service.client_id.as_str());
    assert_eq!(claims["client_id"], service.client_id.as_str());
    let info = oidc.server.introspection(&oidc.rs, token).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["sub"], service.client_id.as_str(), "{info}");

    // The log names JWT access tokens by jti (and digest), never in full.
    let jti = claims["jti"].as_str().expect("jti");
    let recorded: i64 = oidc
        .server
        .pg()
        .await
        .query_one(
            "SELECT count(*) FROM events WHERE payload::text LIKE '%' || $1 || '%'",
            &[&jti],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(recorded, 1, "the issuance names the token's jti");
    // The audit trail finds a JWT like any token, and names it by its jti.
    let out = oidc.server.cli(&["audit", "token", second], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lineage = String::from_utf8_lossy(&out.stdout);
    let second_jti = second_claims["jti"].as_str().expect("jti");
    assert!(lineage.contains(&format!("jti {second_jti}")), "{lineage}");
    assert!(lineage.contains("revoked"), "{lineage}");
    assert!(!lineage.contains(second), "never the JWT itself: {lineage}");
    oidc.server.stop().await;
}

/// o19: id_tokens and JWT access tokens never appear in the server's log, in NATS
/// messages or in the database (the whole log and every table), nor do their signatures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o19_id_tokens_and_jwt_access_tokens_stay_out_of_logs_nats_and_the_database() {
    let nats = TestNats::start().await;
    let mut oidc = Oidc::start(&[("VALET_NATS_URL", &nats.url()), ("VALET_LOG", "debug")]).await;
    oidc.client = oidc
        .server
        .create_client(
            &ClientSpec::confidential("Printshop JWT")
                .redirect(APP_CB)
                .scopes("openid profile")
                .jwt_access_tokens("EdDSA"),
        )
        .await;
    let first = oidc.tokens("openid profile", &[("nonce", "n-19")]).await;
    let refreshed = oidc
        .server
        .refresh(
            &oidc.client,
            first["refresh_token"].as_str().expect("refresh_token"),
            None,
        )
        .await
        .json();
    let id_tokens: Vec<String> = [&first, &refreshed]
        .iter()
        .flat_map(|t| [&t["id_token"], &t["access_token"]])
        .map(|t| t.as_str().expect("a JWT").to_owned())
        .collect();
    assert!(
        id_tokens.iter().all(|t| t.split('.').count() == 3),
        "{id_tokens:?}"
    );
    // Everything the stream holds (issued and refreshed tokens' events).
    let messages = until_stream_holds(&nats, 2).await;
    let stream_text: String = messages
        .iter()
        .map(|e| String::from_utf8_lossy(&e.to_json()).into_owned())
        .collect();
    // Every table, as text.
    let pg = oidc.server.pg().await;
    let tables: Vec<String> = pg
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut database = String::new();
    for table in &tables {
        for row in pg
            .query(&format!("SELECT t::text FROM \"{table}\" t"), &[])
            .await
            .expect("rows")
        {
            database.push_str(row.get::<_, &str>(0));
        }
    }
    let log = oidc.server.log();
    for id_token in &id_tokens {
        let signature = id_token.rsplit('.').next().expect("a signature");
        for (place, text) in [
            ("the server log", &log),
            ("NATS", &stream_text),
            ("the database", &database),
        ] {
            assert!(!text.contains(id_token.as_str()), "a JWT in {place}");
            assert!(!text.contains(signature), "a JWT's signature in {place}");
        }
    }
    assert!(
        database.contains("n-19"),
        "the nonce is recorded (it is no secret): the search reached the log"
    );
    oidc.server.stop().await;
}

const SIGNED_OUT: &str = "https://app.example/signed-out";

/// o15: RP-Initiated Logout. The `end_session_endpoint` checks `id_token_hint`
/// (signature and issuer; an expired one is accepted), sends the user back only to a
/// `post_logout_redirect_uri` registered for that client, exactly, with `state`; the
/// session ends, so the next `prompt=none` gets `login_required`. Without a hint the
/// user confirms first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o15_rp_initiated_logout_ends_the_session() {
    let mut oidc = Oidc::start(&[("VALET_ACCESS_TOKEN_TTL", "2")]).await;
    oidc.client = oidc
        .server
        .create_client(
            &ClientSpec::confidential("Logout app")
                .redirect(APP_CB)
                .scopes("openid")
                .post_logout_redirect(SIGNED_OUT),
        )
        .await;
    let tokens = oidc.tokens("openid", &[]).await;
    let hint = tokens["id_token"].as_str().expect("id_token").to_owned();
    let signed_in = |resp: &valet_tests::server::Resp| {
        resp.status == 302 && FlowEnd::new(resp.clone()).param("code").is_some()
    };
    let logout =
        |params: &[(&str, &str)]| format!("/logout?{}", valet_tests::server::form_body(params));

    // A hint with a broken signature, or an unregistered return address: nothing happens.
    let mut tampered = hint.clone();
    tampered.pop();
    tampered.push(if hint.ends_with('A') { 'B' } else { 'A' });
    for (what, url) in [
        ("a tampered hint", logout(&[("id_token_hint", &tampered)])),
        (
            "an unregistered return address",
            logout(&[
                ("id_token_hint", &hint),
                ("post_logout_redirect_uri", "https://app.example/other"),
            ]),
        ),
        (
            "a return address of another spelling",
            logout(&[
                ("id_token_hint", &hint),
                (
                    "post_logout_redirect_uri",
                    "https://app.example/signed-out/",
                ),
            ]),
        ),
    ] {
        let resp = oidc.browser.get(&oidc.server.url(&url)).await;
        assert_eq!(resp.status, 400, "{what}: {}", resp.describe());
        assert!(resp.location().is_none(), "{what}: no redirect");
        let still = oidc.get_authorize("openid", &[("prompt", "none")]).await;
        assert!(
            signed_in(&still),
            "{what}: still signed in: {}",
            still.describe()
        );
    }

    // The hint has expired by now (2 s tokens): still accepted.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let url = logout(&[
        ("id_token_hint", &hint),
        ("post_logout_redirect_uri", SIGNED_OUT),
        ("state", "s-1 &x"),
    ]);
    let resp = oidc.browser.get(&oidc.server.url(&url)).await;
    assert!(matches!(resp.status, 302 | 303), "{}", resp.describe());
    let back = FlowEnd::new(resp);
    assert!(
        back.raw_location.starts_with(&format!("{SIGNED_OUT}?")),
        "{}",
        back.raw_location
    );
    assert_eq!(back.param("state").as_deref(), Some("s-1 &x"));
    let none = oidc.get_authorize("openid", &[("prompt", "none")]).await;
    assert_login_required(&none, "after logout");

    // Without a hint the user confirms on a page, then is signed out.
    oidc.tokens("openid", &[]).await;
    let page = oidc.browser.get(&oidc.server.url("/logout")).await;
    assert_eq!(page.status, 200, "{}", page.describe());
    let form = valet_tests::html::find_form(&page.text(), |f| f.action.contains("/logout"))
        .expect("a sign-out form");
    let mut fields = form.hidden();
    fields.push(("decision".to_owned(), "sign_out".to_owned()));
    let done = oidc
        .browser
        .post_form(&oidc.server.url("/logout"), &fields)
        .await;
    assert_eq!(done.status, 200, "{}", done.describe());
    assert!(done.text().contains("signed out"), "{}", done.describe());
    let none = oidc.get_authorize("openid", &[("prompt", "none")]).await;
    assert_login_required(&none, "after confirming");
    // A forged confirmation (no CSRF field) signs no one out.
    oidc.tokens("openid", &[]).await;
    let forged = oidc
        .browser
        .post_form(
            &oidc.server.url("/logout"),
            &[("decision".to_owned(), "sign_out".to_owned())],
        )
        .await;
    assert_eq!(forged.status, 200, "the confirmation page again");
    let still = oidc.get_authorize("openid", &[("prompt", "none")]).await;
    assert!(
        signed_in(&still),
        "a forged confirmation signed the user out"
    );
    oidc.server.stop().await;
}
