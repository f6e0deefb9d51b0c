//! SECURITY.md 20–22: client authentication at /token, /introspect and /revoke.
//!
//! The server limits failed authentications per source address (10 a minute, then
//! 429). s20 and s21 fail more often than that on purpose, so their servers allow more
//! (`VALET_FAILED_AUTH_PER_MINUTE`); s22 tests the default limit.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use valet_tests::server::{
    assert_invalid_client, assert_token_error, basic_header, form_encode, nonce,
    percent_encode_all, random_b64, Auth, ClientCreds, ClientSpec, Fixture, Resp, Tokens,
};

const CC: [(&str, &str); 1] = [("grant_type", "client_credentials")];

/// Enough failed authentications per minute for the tests that make many on purpose.
const MANY_FAILURES: (&str, &str) = ("VALET_FAILED_AUTH_PER_MINUTE", "1000");

fn fake_secret() -> String {
    format!("valet_cs_{}", random_b64(32))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s20_bad_basic_credentials_are_401_invalid_client_with_a_challenge() {
    let fx = Fixture::with_env(&[MANY_FAILURES]).await;
    let s = &fx.server;
    let rs = &fx.rs;
    let app = &fx.client;

    let ok = s.token(&rs.basic(), &CC).await;
    assert_eq!(ok.status, 200, "control: {}", ok.describe());

    let enc = |raw: &[u8]| format!("Basic {}", STANDARD.encode(raw));
    let cases: Vec<(&str, Auth)> = vec![
        (
            "wrong secret",
            Auth::Basic(rs.client_id.clone(), fake_secret()),
        ),
        (
            "unknown client",
            Auth::Basic(format!("ghost-{}", nonce()), fake_secret()),
        ),
        (
            "another client's secret",
            Auth::Basic(rs.client_id.clone(), app.secret().to_owned()),
        ),
        (
            "empty secret",
            Auth::Basic(app.client_id.clone(), String::new()),
        ),
        ("empty id and secret", Auth::Header(enc(b":"))),
        (
            "not base64",
            Auth::Header("Basic !!!not*base64!!!".to_owned()),
        ),
        ("no colon", Auth::Header(enc(app.client_id.as_bytes()))),
        ("nothing after Basic", Auth::Header("Basic ".to_owned())),
        ("bare Basic", Auth::Header("Basic".to_owned())),
        (
            "non-UTF-8 credentials",
            Auth::Header(enc(b"\xff\xfe:\xc3\x28")),
        ),
        (
            "secret truncated by one character",
            Auth::Basic(
                app.client_id.clone(),
                app.secret()[..app.secret().len() - 1].to_owned(),
            ),
        ),
        (
            "secret with an extra character",
            Auth::Basic(app.client_id.clone(), format!("{}A", app.secret())),
        ),
        (
            "secret in another case",
            Auth::Basic(app.client_id.clone(), app.secret().to_uppercase()),
        ),
        (
            "id and secret swapped",
            Auth::Header(enc(format!("{}:{}", app.secret(), app.client_id).as_bytes())),
        ),
    ];
    for (what, auth) in &cases {
        let resp = s.token(auth, &CC).await;
        assert_invalid_client(&resp, &format!("/token, {what}"));
        assert!(resp.json().get("access_token").is_none());
    }
    // Post authentication with a wrong secret is invalid_client too.
    let resp = s
        .token(&Auth::Post(rs.client_id.clone(), fake_secret()), &CC)
        .await;
    assert_invalid_client(&resp, "/token, client_secret_post with a wrong secret");
    // A confidential client sending no secret at all cannot authenticate.
    let resp = s.token(&Auth::Public(rs.client_id.clone()), &CC).await;
    assert_invalid_client(&resp, "/token, confidential client without a secret");

    // The same at the introspection and revocation endpoints.
    let tokens = Tokens::from_resp(&ok);
    for path in ["/introspect", "/revoke"] {
        for (what, auth) in [
            (
                "wrong secret",
                Auth::Basic(app.client_id.clone(), fake_secret()),
            ),
            (
                "unknown client",
                Auth::Basic(format!("ghost-{}", nonce()), fake_secret()),
            ),
            ("not base64", Auth::Header("Basic %%%".to_owned())),
        ] {
            let resp = s
                .post_form(path, &auth, &[("token", &tokens.access_token)])
                .await;
            assert_invalid_client(&resp, &format!("{path}, {what}"));
            assert!(
                !resp.text().contains("\"active\""),
                "{path}, {what}: {}",
                resp.describe()
            );
        }
    }
    // The token was not revoked by any of the refused calls.
    assert!(fx.is_active(&tokens.access_token).await);
    fx.stop().await;
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s21_unknown_client_and_wrong_secret_are_indistinguishable() {
    let fx = Fixture::with_env(&[MANY_FAILURES]).await;
    let s = &fx.server;
    // Wrong secrets are spread over five clients, as an attacker's would be.
    let mut known: Vec<ClientCreds> = Vec::new();
    for i in 0..5 {
        known.push(
            s.create_client(
                &ClientSpec::confidential(&format!("Timing {i}"))
                    .grant("client_credentials")
                    .scopes("t"),
            )
            .await,
        );
    }
    let unknown_auth = || Auth::Basic(format!("ghost-{}", nonce()), fake_secret());
    let wrong_auth =
        |i: usize| Auth::Basic(known[i % known.len()].client_id.clone(), fake_secret());

    // Warm-up (connections, caches), not measured: one wrong secret per client.
    for i in 0..known.len() {
        s.token(&unknown_auth(), &CC).await;
        s.token(&wrong_auth(i), &CC).await;
    }
    const ROUNDS: usize = 30;
    let mut unknown: Vec<Resp> = Vec::new();
    let mut wrong: Vec<Resp> = Vec::new();
    for i in 0..ROUNDS {
        // Interleaved, alternating which goes first.
        if i % 2 == 0 {
            unknown.push(s.token(&unknown_auth(), &CC).await);
            wrong.push(s.token(&wrong_auth(i), &CC).await);
        } else {
            wrong.push(s.token(&wrong_auth(i), &CC).await);
            unknown.push(s.token(&unknown_auth(), &CC).await);
        }
    }
    let reference = &unknown[0];
    assert_invalid_client(reference, "unknown client");
    for (what, resp) in unknown
        .iter()
        .map(|r| ("unknown client", r))
        .chain(wrong.iter().map(|r| ("wrong secret", r)))
    {
        assert_eq!(resp.status, reference.status, "{what}: {}", resp.describe());
        assert_eq!(
            resp.body,
            reference.body,
            "{what}: body differs: {}",
            resp.describe()
        );
        for header in ["www-authenticate", "content-type", "cache-control"] {
            assert_eq!(
                resp.header(header),
                reference.header(header),
                "{what}: {header} differs"
            );
        }
    }
    // With client_secret_post too.
    let post_unknown = s
        .token(
            &Auth::Post(format!("ghost-{}", nonce()), fake_secret()),
            &CC,
        )
        .await;
    let post_wrong = s
        .token(&Auth::Post(fx.rs.client_id.clone(), fake_secret()), &CC)
        .await;
    assert_eq!(
        (post_unknown.status, &post_unknown.body),
        (post_wrong.status, &post_wrong.body),
        "client_secret_post: unknown {} vs wrong {}",
        post_unknown.describe(),
        post_wrong.describe()
    );
    assert_invalid_client(&post_wrong, "client_secret_post, wrong secret");

    // Timing: medians of interleaved samples, with generous slack.
    let mu = median(unknown.iter().map(|r| r.elapsed).collect());
    let mw = median(wrong.iter().map(|r| r.elapsed).collect());
    let delta = mu.abs_diff(mw);
    eprintln!("median unknown client {mu:?}, median wrong secret {mw:?}");
    let ratio = mu.max(mw).as_secs_f64() / mu.min(mw).as_secs_f64().max(1e-6);
    assert!(
        delta < Duration::from_millis(5) || ratio < 1.5,
        "timing tells unknown clients ({mu:?}) from wrong secrets ({mw:?})"
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s22_basic_is_form_urldecoded_single_method_and_rate_limited() {
    // The test client is a trusted proxy, so the limit can be shown for an address of
    // its own (the failures above it come from 127.0.0.1).
    let fx = Fixture::with_env(&[("VALET_TRUSTED_PROXIES", "127.0.0.1")]).await;
    let s = &fx.server;
    let rs = &fx.rs;
    let (id, secret) = (rs.client_id.as_str(), rs.secret());

    // The CLI-printed secret works with Basic (form-urlencoded) and in the body.
    for (what, auth) in [
        ("Basic", Auth::Basic(id.into(), secret.into())),
        ("post", Auth::Post(id.into(), secret.into())),
        // Generated secrets are base64url, so encoding is the identity on them; what
        // matters is that the server DEcodes: every character percent-encoded.
        (
            "Basic, every character percent-encoded",
            Auth::Header(format!(
                "Basic {}",
                STANDARD.encode(format!(
                    "{}:{}",
                    percent_encode_all(id),
                    percent_encode_all(secret)
                ))
            )),
        ),
        (
            "Basic, only the secret percent-encoded",
            Auth::Header(format!(
                "Basic {}",
                STANDARD.encode(format!("{}:{}", id, percent_encode_all(secret)))
            )),
        ),
        (
            "Basic, lowercase percent-encoding",
            Auth::Header(format!(
                "Basic {}",
                STANDARD.encode(format!(
                    "{}:{}",
                    percent_encode_all(id).to_lowercase(),
                    percent_encode_all(secret).to_lowercase()
                ))
            )),
        ),
    ] {
        let resp = s.token(&auth, &CC).await;
        assert_eq!(resp.status, 200, "{what}: {}", resp.describe());
    }
    assert_eq!(
        basic_header(id, secret),
        format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
    );
    // A secret with `: % +` must be sent encoded; sent raw, it is a different secret.
    let (aid, asecret) = (fx.client.client_id.as_str(), fx.client.secret());
    for (what, raw) in [
        ("raw colon inside the secret", format!("{aid}:{asecret}:x")),
        ("raw percent sign", format!("{aid}:{asecret}%")),
        ("plus (a space once decoded)", format!("{aid}:{asecret}+")),
        ("encoded colon appended", format!("{aid}:{asecret}%3A")),
        ("malformed percent-encoding", format!("{aid}:%ZZ{asecret}")),
    ] {
        let resp = s
            .token(
                &Auth::Header(format!("Basic {}", STANDARD.encode(raw))),
                &CC,
            )
            .await;
        assert_invalid_client(&resp, what);
    }
    assert_eq!(
        form_encode(": % +"),
        "%3A+%25+%2B",
        "form encoding used by the tests"
    );

    // Two authentication methods in one request.
    for (what, extra) in [
        (
            "Basic + client_id/client_secret",
            vec![("client_id", id), ("client_secret", secret)],
        ),
        ("Basic + client_secret", vec![("client_secret", secret)]),
    ] {
        let mut pairs = CC.to_vec();
        pairs.extend(extra);
        let resp = s.token(&rs.basic(), &pairs).await;
        assert_token_error(&resp, 400, "invalid_request", what);
        for path in ["/introspect", "/revoke"] {
            let mut pairs = vec![("token", "valet_at_x")];
            pairs.extend(if what.contains("client_id") {
                vec![("client_id", id), ("client_secret", secret)]
            } else {
                vec![("client_secret", secret)]
            });
            let resp = s.post_form(path, &rs.basic(), &pairs).await;
            assert_eq!(resp.status, 400, "{path}, {what}: {}", resp.describe());
            assert_eq!(
                resp.error().as_deref(),
                Some("invalid_request"),
                "{path}, {what}"
            );
        }
    }

    // Rate limit: 10 failures from one address within 60 s, then 429 for the failures
    // that follow. The right secret is still served: what is limited is the failing
    // source, not the client it names.
    let limited = s
        .create_client(
            &ClientSpec::confidential("Limited")
                .grant("client_credentials")
                .scopes("x"),
        )
        .await;
    let from = |addr: &'static str| [("x-forwarded-for", addr)];
    let attacker = from("198.51.100.22");
    let wrong = || Auth::Basic(limited.client_id.clone(), fake_secret());
    for n in 1..=10 {
        let resp = s.post_form_with("/token", &wrong(), &CC, &attacker).await;
        assert_invalid_client(&resp, &format!("failure #{n}"));
    }
    for n in 11..=12 {
        let resp = s.post_form_with("/token", &wrong(), &CC, &attacker).await;
        assert_eq!(resp.status, 429, "failure #{n}: {}", resp.describe());
        let retry = resp.header("retry-after").unwrap_or_default();
        let secs: u64 = retry
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("failure #{n}: Retry-After {retry:?} is not delay-seconds"));
        assert!((1..=60).contains(&secs), "failure #{n}: Retry-After {secs}");
        assert!(resp.json().get("access_token").is_none());
        assert_eq!(
            resp.error().as_deref(),
            Some("invalid_client"),
            "failure #{n}"
        );
    }
    // Unknown clients from that address are refused alike (nothing to tell them apart).
    let resp = s
        .post_form_with(
            "/token",
            &Auth::Basic(format!("ghost-{}", nonce()), fake_secret()),
            &CC,
            &attacker,
        )
        .await;
    assert_eq!(resp.status, 429, "unknown client: {}", resp.describe());
    for (what, auth) in [
        ("the right secret", limited.basic()),
        ("the right secret in the body", limited.post()),
    ] {
        let resp = s.post_form_with("/token", &auth, &CC, &attacker).await;
        assert_eq!(
            resp.status,
            200,
            "{what} from the limited address: {}",
            resp.describe()
        );
        assert!(resp.json().get("access_token").is_some(), "{what}");
    }
    // Other addresses and other clients are not affected.
    let resp = s
        .post_form_with("/token", &wrong(), &CC, &from("198.51.100.23"))
        .await;
    assert_invalid_client(&resp, "a failure from another address");
    let resp = s.token(&rs.basic(), &CC).await;
    assert_eq!(
        resp.status,
        200,
        "another client after the limit: {}",
        resp.describe()
    );
    let resp = s.introspect(&rs.basic(), "valet_at_x").await;
    assert_eq!(
        resp.status,
        200,
        "another client's introspection: {}",
        resp.describe()
    );
    fx.stop().await;
}
