//! SECURITY.md 32–34: secrets (entropy, only digests at rest, nothing in logs) and the
//! RFC 8414 metadata.

use std::collections::HashSet;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use valet_tests::server::{
    random_b64, sha256_hex, Auth, AuthRequest, ClientSpec, Fixture, TestServer, Tokens, APP_CB,
};

/// `prefix` + 43 base64url characters encoding exactly 32 bytes; returns the bytes.
fn decode_secret(value: &str, prefix: &str) -> Vec<u8> {
    let body = value
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{value:?} does not start with {prefix}"));
    assert_eq!(
        body.len(),
        43,
        "{value:?}: expected 43 characters after {prefix}"
    );
    assert!(
        body.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{value:?}: not base64url"
    );
    let bytes = URL_SAFE_NO_PAD
        .decode(body)
        .unwrap_or_else(|e| panic!("{value:?}: not canonical base64url ({e})"));
    assert_eq!(bytes.len(), 32, "{value:?}: not 256 bits");
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s32_secrets_are_256_random_bits_with_their_prefixes() {
    let mut fx = Fixture::new().await;
    let mut samples: Vec<(&str, String)> = vec![
        ("valet_cs_", fx.client.secret().to_owned()),
        ("valet_cs_", fx.rs.secret().to_owned()),
    ];
    for i in 0..4 {
        let c = fx
            .server
            .create_client(
                &ClientSpec::confidential(&format!("Entropy {i}"))
                    .grant("client_credentials")
                    .scopes("e"),
            )
            .await;
        samples.push(("valet_cs_", c.secret().to_owned()));
    }
    for _ in 0..4 {
        let (code, pkce) = fx.code(Some("read")).await;
        samples.push(("valet_ac_", code.clone()));
        let t = Tokens::from_resp(
            &fx.server
                .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
                .await,
        );
        samples.push(("valet_at_", t.access_token.clone()));
        samples.push(("valet_rt_", t.refresh().to_owned()));
        let r = Tokens::from_resp(&fx.server.refresh(&fx.client, t.refresh(), None).await);
        samples.push(("valet_at_", r.access_token.clone()));
        samples.push(("valet_rt_", r.refresh().to_owned()));
    }
    for _ in 0..12 {
        let t = Tokens::from_resp(&fx.server.client_credentials(&fx.rs, None).await);
        samples.push(("valet_at_", t.access_token));
    }

    let mut seen = HashSet::new();
    let mut prefixes = HashSet::new();
    let mut ones = 0u64;
    let mut bits = 0u64;
    let mut by_kind: std::collections::BTreeMap<&str, Vec<Vec<u8>>> = Default::default();
    for (prefix, value) in &samples {
        let bytes = decode_secret(value, prefix);
        assert!(seen.insert(bytes.clone()), "{value:?} was issued twice");
        assert!(
            prefixes.insert(bytes[..6].to_vec()),
            "two secrets share their first 48 bits: not random"
        );
        ones += bytes.iter().map(|b| u64::from(b.count_ones())).sum::<u64>();
        bits += 256;
        by_kind.entry(prefix).or_default().push(bytes);
    }
    // ~14,000 bits: a CSPRNG gives 50 % ones within a fraction of a percent.
    let share = ones as f64 / bits as f64;
    assert!(
        (0.46..0.54).contains(&share),
        "share of one bits is {share:.3}"
    );
    // No byte position is fixed (counters, timestamps, zero padding) in any kind.
    for (kind, values) in &by_kind {
        for pos in 0..32 {
            let distinct: HashSet<u8> = values.iter().map(|v| v[pos]).collect();
            assert!(
                distinct.len() > 1 || values.len() < 4,
                "{kind}: byte {pos} is the same in all {} samples",
                values.len()
            );
        }
    }
    fx.stop().await;
}

/// `pg_dump` of the test database as text.
async fn pg_dump(db_url: &str) -> String {
    let out = tokio::process::Command::new("pg_dump")
        .args(["--no-owner", "--no-privileges", "--dbname", db_url])
        .output()
        .await
        .expect("run pg_dump (installed with PostgreSQL)");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s33_only_digests_are_stored_and_nothing_raw_is_logged() {
    // Debug logging: a secret must not leak at any level.
    let mut fx = Fixture::with_env(&[("VALET_LOG", "debug")]).await;
    let mut secrets: Vec<(&str, String)> = vec![
        ("client secret", fx.client.secret().to_owned()),
        ("resource server secret", fx.rs.secret().to_owned()),
        ("user password", fx.user.password.clone()),
    ];
    let (code, pkce) = fx.code(Some("read write")).await;
    let s = &fx.server;
    let t = Tokens::from_resp(
        &s.redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
            .await,
    );
    let r = Tokens::from_resp(&s.refresh(&fx.client, t.refresh(), None).await);
    let cc = Tokens::from_resp(&s.client_credentials(&fx.rs, None).await);
    secrets.extend([
        ("code", code.clone()),
        ("PKCE verifier", pkce.verifier.clone()),
        ("access token", t.access_token.clone()),
        ("refresh token", t.refresh().to_owned()),
        ("rotated access token", r.access_token.clone()),
        ("rotated refresh token", r.refresh().to_owned()),
        ("client_credentials token", cc.access_token.clone()),
    ]);
    // Failure paths log too: a replayed code, a reused refresh token, a wrong secret,
    // a wrong password, revocation and introspection.
    assert_eq!(
        s.redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
            .await
            .status,
        400
    );
    let wrong_secret = format!("valet_cs_{}", random_b64(32));
    assert_eq!(
        s.token(
            &Auth::Basic(fx.rs.client_id.clone(), wrong_secret.clone()),
            &[("grant_type", "client_credentials")]
        )
        .await
        .status,
        401
    );
    secrets.push(("wrong client secret", wrong_secret));
    assert_eq!(
        s.introspect(&fx.rs.basic(), &cc.access_token).await.status,
        200
    );
    assert_eq!(
        s.revoke(&fx.rs.basic(), &cc.access_token, None)
            .await
            .status,
        200
    );
    let wrong_password = format!("wrong-password-{}", random_b64(12));
    let mut browser = s.browser();
    let req = AuthRequest::new(&fx.client.client_id, APP_CB).scope("read");
    let bad_login = browser
        .login(
            &s.url(&req.path()),
            &valet_tests::server::TestUser {
                username: fx.user.username.clone(),
                password: wrong_password.clone(),
            },
        )
        .await;
    assert!(
        bad_login.location().is_none_or(|l| !l.contains("code=")),
        "wrong password yielded a code"
    );
    secrets.push(("wrong password", wrong_password));
    let t2 = fx.tokens(Some("read")).await;
    let s = &fx.server;
    let t3 = Tokens::from_resp(&s.refresh(&fx.client, t2.refresh(), None).await);
    assert_eq!(s.refresh(&fx.client, t2.refresh(), None).await.status, 400);
    secrets.extend([
        ("reused refresh token", t2.refresh().to_owned()),
        ("refresh token revoked by reuse", t3.refresh().to_owned()),
    ]);

    // Let asynchronous writers (projections, logs) catch up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dump = pg_dump(s.db_url()).await;
    let events = s.events_dump().await;
    let log = s.log();
    assert!(
        dump.contains("CREATE TABLE public.events"),
        "pg_dump output looks wrong"
    );
    assert!(!events.is_empty(), "no events recorded");
    assert!(
        !log.is_empty(),
        "empty server log at {}",
        s.log_path().display()
    );
    // The grep would find stored values: the digests are there.
    let digest = sha256_hex(&t.access_token);
    assert!(
        dump.contains(&digest) && events.contains(&digest),
        "the access token's SHA-256 is not stored (dump/events)"
    );
    for (what, secret) in &secrets {
        // The whole value, and the random part alone (a stored value without prefix).
        let mut needles = vec![secret.clone()];
        if let Some((_, random)) = secret
            .split_once("valet_")
            .and_then(|(_, r)| r.split_once('_'))
        {
            needles.push(random.to_owned());
        }
        for needle in needles {
            for (place, haystack) in [
                ("pg_dump", &dump),
                ("events", &events),
                ("server log", &log),
            ] {
                assert!(
                    !haystack.contains(&needle),
                    "the raw {what} appears in the {place} ({})",
                    s.log_path().display()
                );
            }
        }
    }
    // NATS: asserted by the relay tests (issue 4)
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s34_metadata_is_exact_s256_only_and_no_implicit_or_password() {
    let fx = Fixture::new().await;
    let s = &fx.server;
    let check = |meta: &Value, issuer: &str| {
        assert_eq!(meta["issuer"], issuer, "issuer: {meta}");
        assert_eq!(
            meta["code_challenge_methods_supported"],
            serde_json::json!(["S256"]),
            "{meta}"
        );
        assert_eq!(
            meta["response_types_supported"],
            serde_json::json!(["code"]),
            "{meta}"
        );
        let grants: Vec<&str> = meta["grant_types_supported"]
            .as_array()
            .unwrap_or_else(|| panic!("no grant_types_supported: {meta}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for g in ["authorization_code", "refresh_token", "client_credentials"] {
            assert!(grants.contains(&g), "{g} not advertised: {grants:?}");
        }
        for g in ["implicit", "password", "token"] {
            assert!(!grants.contains(&g), "{g} advertised: {grants:?}");
        }
        let auth: Vec<&str> = meta["token_endpoint_auth_methods_supported"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for m in ["client_secret_basic", "client_secret_post"] {
            assert!(auth.contains(&m), "{m} not advertised: {auth:?}");
        }
        for (field, path) in [
            ("authorization_endpoint", "/authorize"),
            ("token_endpoint", "/token"),
            ("revocation_endpoint", "/revoke"),
            ("introspection_endpoint", "/introspect"),
        ] {
            assert_eq!(meta[field], format!("{issuer}{path}"), "{field}: {meta}");
        }
        let text = meta.to_string();
        assert!(!text.contains("\"plain\""), "plain PKCE advertised: {text}");
    };

    let resp = s.get("/.well-known/oauth-authorization-server").await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    check(&resp.json(), s.base_url());
    // The issuer in tokens is the same string.
    let t = Tokens::from_resp(&s.client_credentials(&fx.rs, None).await);
    assert_eq!(
        s.introspection(&fx.rs, &t.access_token).await["iss"],
        s.base_url()
    );

    // A configured issuer is echoed exactly (no trailing slash added, no rewriting).
    let issuer = "https://auth.example.test/tenant-1";
    // An https issuer over plain HTTP: TLS ends at a proxy in front.
    let custom = TestServer::start_with(&[
        ("VALET_ISSUER", issuer),
        ("VALET_BEHIND_PROXY", "true"),
        ("VALET_TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let resp = custom.get("/.well-known/oauth-authorization-server").await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    check(&resp.json(), issuer);
    let rs = custom
        .create_client(
            &ClientSpec::confidential("RS")
                .grant("client_credentials")
                .scopes("x"),
        )
        .await;
    let t = Tokens::from_resp(&custom.client_credentials(&rs, None).await);
    assert_eq!(
        custom.introspection(&rs, &t.access_token).await["iss"],
        issuer
    );
    custom.stop().await;
    fx.stop().await;
}
